"""The results folder: its contract (`schema`: every table's columns, units and meaning), the Parquet
writers and readers (`tables`), the per-category table (`categories`).

Imports `pclsim.core` (metric registry) and the base modules; study types for annotations only.
`pclsim.results.read_table` and the other names below are where they were before 0.3.
"""

from .tables import *  # noqa: F401,F403
from .tables import __all__  # noqa: F401
