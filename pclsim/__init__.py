"""pclsim: a simulator for continual visual anomaly detection (PatchCore / PatchCoreCL).

Python API: `pclsim.sweep(scenario, ...)` runs a study, `pclsim.load_results(folder)` reads one
(pclsim.api); `pclsim.simulate(runs, tasks, scenario)` runs a study's runs in this process, without
Ray (pclsim.study.engine). Registries: `register_strategy`, `register_metric`,
`register_dataset_kind`, `register_bank_kind`, `register_reweighting`, `register_order_design`.

The package's layers, each importing only those below it (tests/test_architecture.py):
base (errors, atomic) < data < core < store < study < results < analysis < report, runner < plan < api, cli.
"""

from ._moved import install as _install_moved
from ._version import __version__

_install_moved()

__all__ = ["__version__", "sweep", "load_results", "Results", "simulate", "register_strategy", "register_metric",
           "register_dataset_kind", "register_bank_kind", "register_reweighting", "register_order_design"]

# lazy: `import pclsim` (and the CLI's start) stays free of torch, pandas and Ray
_LAZY = {
    "sweep": ("pclsim.api", "sweep"), "load_results": ("pclsim.api", "load_results"), "Results": ("pclsim.api", "Results"),
    "simulate": ("pclsim.study.engine", "simulate"), "register_strategy": ("pclsim.study.strategies", "register"),
    "register_metric": ("pclsim.core.metric_registry", "register_metric"),
    "register_dataset_kind": ("pclsim.data.kinds", "register_dataset_kind"),
    "register_bank_kind": ("pclsim.study.banks", "register_bank_kind"),
    "register_reweighting": ("pclsim.core.reweighting", "register_reweighting"),
    "register_order_design": ("pclsim.study.orders", "register_order_design"),
}


def __getattr__(name):
    if name in ("metrics", "coreset"):  # the stable public modules (interface.md): pclsim.metrics.f1_max(...)
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pclsim' has no attribute {name!r}")
