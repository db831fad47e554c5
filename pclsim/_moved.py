"""Import paths of 0.2 that moved in 0.3: they keep working until 0.4, with a DeprecationWarning.

`MOVED` maps each old module to its new home. Importing an old path imports the new module, warns
once naming it, and makes the old name an alias of the same module object (so monkeypatching
either path patches both).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED", "install"]

MOVED = {
    "pclsim.tensors": "pclsim.core.tensors", "pclsim.knn": "pclsim.core.knn",
    "pclsim.candidates": "pclsim.core.candidates", "pclsim.scoring": "pclsim.core.scoring",
    "pclsim.reweighting": "pclsim.core.reweighting", "pclsim.metric_registry": "pclsim.core.metric_registry",
    "pclsim.backbones": "pclsim.core.backbones", "pclsim.features": "pclsim.core.features",
    "pclsim.store_entry": "pclsim.store.entry", "pclsim.cache": "pclsim.store.cache",
    "pclsim.scenario": "pclsim.study.scenario", "pclsim.scenario_checks": "pclsim.study.scenario_checks",
    "pclsim.orders": "pclsim.study.orders", "pclsim.strategies": "pclsim.study.strategies",
    "pclsim.banks": "pclsim.study.banks", "pclsim.engine": "pclsim.study.engine",
    "pclsim.protocol": "pclsim.study.protocol", "pclsim.maskless": "pclsim.study.maskless",
    "pclsim.gallery": "pclsim.study.gallery", "pclsim.data.preflight": "pclsim.study.preflight",
    "pclsim.continual_metrics": "pclsim.analysis.continual", "pclsim.statistics": "pclsim.analysis.statistics",
    "pclsim.order_tests": "pclsim.analysis.order_tests", "pclsim.order_sentences": "pclsim.analysis.order_sentences",
    "pclsim.results_schema": "pclsim.results.schema", "pclsim.data.category_table": "pclsim.results.categories",
    "pclsim.sweep_cluster": "pclsim.runner.cluster", "pclsim.sweep_trials": "pclsim.runner.trials",
    "pclsim.sweep_finish": "pclsim.runner.finish", "pclsim.sweep_control": "pclsim.runner.control",
    "pclsim.actors": "pclsim.runner.actors", "pclsim.tracking": "pclsim.runner.tracking",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder module; exec_module swaps in the real one

    def exec_module(self, module):
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new} in pclsim 0.3; the old path goes in 0.4",
                      DeprecationWarning, stacklevel=2)
        # the import system returns whatever sys.modules holds under the name once this returns
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
