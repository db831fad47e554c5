"""categories.parquet: the per-category values of multi-category steps (pclsim.data.merge) as a table."""

from __future__ import annotations

import pyarrow as pa

from .tables import MATRIX_SCHEMA, _run_columns

__all__ = ["CATEGORIES_SCHEMA", "categories_table"]

# the matrices' columns (pclsim.results.tables.MATRIX_SCHEMA) plus the category within the merged eval_task
CATEGORIES_SCHEMA = MATRIX_SCHEMA.append(pa.field("category", pa.string()))
_ROW_COLUMNS = ("step", "train_task", "eval_task", "category", "metric", "value")  # CategoryResult.rows' fields


def categories_table(items) -> pa.Table:
    """pyarrow Table (CATEGORIES_SCHEMA) of per-category values: one row per (run, step, merged eval_task,
    category, metric) with a finite value; items: (Run, OrderResult, CategoryResult) triples."""
    cols = {f.name: [] for f in CATEGORIES_SCHEMA}
    for run, _res, cres in items:
        for row in cres.rows(run.order):  # (step, train_task, eval_task, category, metric, value)
            _run_columns(cols, run)  # the run's identifying columns, as in matrices.parquet
            for name, value in zip(_ROW_COLUMNS, row):
                cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=CATEGORIES_SCHEMA)
