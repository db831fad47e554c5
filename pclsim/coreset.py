"""Stable public name of the coreset selection (interface.md): `greedy_coreset` and its projection helpers.

The code lives in `pclsim.core.coreset` (method.md section 2); this module re-exports it.
"""

from .core.coreset import *  # noqa: F401,F403
from .core.coreset import __all__  # noqa: F401
