"""`pclsim plan`: a sweep's time, peak memory and disk per stage, predicted before anything runs.

`work.py` counts each stage's jobs and their work from the scenario's sizes (the jobs `plan_study`
plans, the memory formulas of `pclsim.runner.memory`); `calibration.py` reads and writes the fitted
coefficients a benchmark measured on a node (benchmarks/bench_plan.py); `predict.py` turns work into
seconds and bytes on a given node (its CPUs, GPUs, memory and disk), says what will not fit, and prints
the table; `node.py` finds this machine's resources.

Imports the study layer, the data loaders and `pclsim.runner.memory` (its formulas only: nothing here
starts Ray, loads weights or decodes an image).
"""

from .calibration import Calibration, load_calibration
from .predict import Node, Plan, make_plan

__all__ = ["Calibration", "load_calibration", "Node", "Plan", "make_plan"]
