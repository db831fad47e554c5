"""The compute core: the method's math on numpy arrays and torch tensors. No Ray, no files, no scenario.

- `features` + `backbones`: the frozen backbone and PatchCore's patch features (method.md section 1);
  `task_features.TaskFeatures`, the arrays of one task.
- `coreset`: greedy k-center with the JL projection (section 2); `knn`: exact nearest neighbours
  (torch or faiss); `candidates`: the K nearest candidates of every test patch, exact for any subset bank.
- `scoring` + `reweighting`: image scores, anomaly maps, task routing (sections 3-4); a new
  reweighting registers itself with `register_reweighting`.
- `metrics`: image and pixel metrics (section 6); `metric_registry`: each metric's name, kind, label
  and chance level. A new metric: its function in `metrics.py`, one `register_metric(...)` call.

Imports only `pclsim.errors` and, for image preprocessing constants, `pclsim.data`.
"""
