"""`pclsim report`: a sweep's results folder -> one offline HTML page, PNG figures and the paper's Table 1.

Reads only the results contract (`pclsim.results.schema`: matrices.parquet, summary.parquet and,
where present, statistics.parquet, routing.parquet, routed.parquet; scenario.yaml, data.json and
gallery/*.npz). Everything is computed with grouped pandas operations, so a full 720-order study
renders in seconds.

Modules, in the order the data flows: `reading` (tables -> ReportData), `tables` (Table 1, per
task), `figures` / `gallery` / `order_figures` (PNGs), `order` (the "Does the order matter?"
section), `page` (HTML), `build` (the entry point); `style` holds the names and colours, `published` the
seed paper's published Table 1 (set beside Table 1 on the paper's scenario, table1_published.csv).

Imports `pclsim.results`, `pclsim.analysis` (the order statistics), `pclsim.core.metric_registry`,
`pclsim.data.bmad` (BMAD's task names, the synthetic marker) and the base modules; never Ray or the runner.
"""

from __future__ import annotations

from ..results.schema import MATRICES, SUMMARY_COLUMNS
from .build import build_report, report_command
from .style import column_label

__all__ = ["build_report", "report_command", "MATRIX_COLUMNS", "SUMMARY_COLUMNS", "TABLE1_ROWS", "column_label"]

MATRIX_COLUMNS = MATRICES.names


def __getattr__(name):
    if name == "TABLE1_ROWS":  # follows the metric registry: a metric registered later is a row too
        from .tables import table1_rows

        return table1_rows()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
