"""pclsim: a simulator for continual visual anomaly detection (PatchCore / PatchCoreCL).

Python API: `pclsim.sweep(scenario, ...)` runs a study, `pclsim.load_results(folder)` reads one
(pclsim.api).
"""

from ._version import __version__

__all__ = ["__version__", "load_results", "sweep", "Results"]


def __getattr__(name):  # lazy: `import pclsim` (and the CLI's start) stays free of pandas and Ray
    if name == "sweep":  # the module pclsim.sweep is callable: pclsim.sweep(...) is pclsim.api.sweep(...)
        import importlib

        return importlib.import_module(__name__ + ".sweep")
    if name in ("load_results", "Results"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pclsim' has no attribute {name!r}")
