"""Stable public names of the metrics (interface.md): image, pixel and continual metrics in one place.

The functions live in `pclsim.core.metrics` (image and pixel metrics, method.md section 6) and
`pclsim.analysis.continual` (metrics of a T x T accuracy matrix); this module re-exports both.
"""

from .analysis.continual import *  # noqa: F401,F403
from .analysis.continual import __all__ as _continual
from .core.metrics import *  # noqa: F401,F403
from .core.metrics import __all__ as _core

__all__ = list(dict.fromkeys(_core + _continual))
