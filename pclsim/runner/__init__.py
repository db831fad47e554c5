"""The Ray layer: places the study's jobs on machines and writes the results folder.

- `sweep`: the driver behind `pclsim sweep` (`run_sweep`); `cluster`: Ray start, feature extraction,
  bank sources; `trials`: the Tune trials; `finish`: summary and statistics; `control`: Ctrl-C,
  worker errors (memory kills), progress lines, waiting vs recovering lost objects;
  `memory`: memory requests of actors and jobs, the extractor pool's size; `actors`: extractor,
  bank-manager and writer actors, Ray tasks; `tracking`: MLflow / W&B callbacks.

Holds no math: imports everything below it (study, store, core, results, analysis, data).
"""
