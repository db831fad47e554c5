"""The report's tables: the paper's Table 1 (method.md section 7) and each task's final value.

Table 1's metric rows are the registered metrics marked `table1` (pclsim.core.metric_registry), in
registration order, followed by the summary rows of style.SUMMARY_ROW_LABELS.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.metric_registry import metric_names
from .reading import ReportData
from .style import SUMMARY_ROW_LABELS, column_label, row_label

__all__ = ["table1_rows", "table1", "per_task_final", "format_cell", "table1_markdown"]

_TWO_DECIMALS = ("bank_mb", "avg_forgetting_pct")  # MB and percent; metric values get three


def table1_rows() -> list[str]:
    """Row keys of Table 1: the registered Table 1 metrics, then bank_mb, relative_gap, avg_forgetting_pct."""
    return metric_names(table1=True) + list(SUMMARY_ROW_LABELS)


def table1(d: ReportData) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, std, n) frames: rows table1_rows(), columns one per (strategy, memory size).

    Metric rows: the runs' final mean of each metric (summary.parquet), mean and standard deviation
    (ddof 1, shown only with two runs or more) over orders and seeds. Summary rows: the same over
    the report metric's rows (bank MB is per run; relative gap and forgetting are per metric)."""
    rows_of_table = table1_rows()
    metrics = metric_names(table1=True)
    s = d.summary
    keys = ["strategy", "memory_size"]
    rows = {}
    g = s[s["metric"].isin(metrics)].groupby(keys + ["metric"], observed=True)["final_mean"]
    per_metric = g.agg(["mean", "std", "count"])
    for m in metrics:
        if m in per_metric.index.get_level_values("metric"):
            rows[m] = per_metric.xs(m, level="metric")
    for col in SUMMARY_ROW_LABELS:
        rows[col] = d.summ_m.groupby(keys, observed=True)[col].agg(["mean", "std", "count"])
    labels = [column_label(st, m) for st, m in d.combos]
    out = {}
    for stat in ("mean", "std", "count"):
        frame = pd.DataFrame(np.nan, index=rows_of_table, columns=labels)
        for r, agg in rows.items():
            for (st, m), lab in zip(d.combos, labels):
                if (st, m) in agg.index:
                    frame.loc[r, lab] = agg.loc[(st, m), stat]
        out[stat] = frame
    out["count"] = out["count"].fillna(0).astype(int)
    out["std"] = out["std"].where(out["count"] > 1)
    return out["mean"], out["std"], out["count"]


def per_task_final(d: ReportData) -> pd.DataFrame:
    """Each task's value of the report's metric after the whole stream, mean over runs:
    rows the tasks (scenario order), columns one per (strategy, memory size); NaN where none."""
    fin = d.mat[d.mat["is_final"]]
    g = fin.groupby(["eval_task", "strategy", "memory_size"], observed=True)["value"].mean()
    frame = pd.DataFrame(np.nan, index=d.tasks, columns=[column_label(s, m) for s, m in d.combos])
    for (t, s, m), v in g.items():
        frame.loc[str(t), column_label(str(s), int(m))] = v
    frame.index.name = "task"
    return frame


def format_cell(row: str, v: float, sd: float = float("nan")) -> str:
    """'0.912 ± 0.004' (bank MB and forgetting %: two decimals), '–' for a missing value; the
    spread is left out where it is missing or (bank MB) zero."""
    if v is None or not np.isfinite(v):
        return "–"
    nd = 2 if row in _TWO_DECIMALS else 3
    s = f"{v:.{nd}f}"
    if sd is not None and np.isfinite(sd) and not (row == "bank_mb" and sd < 1e-9):
        s += f" ± {sd:.{nd}f}"
    return s


def undefined_cells(d: ReportData) -> dict[tuple[str, str], str]:
    """{(Table 1 row, column label): why}: the summary rows whose quantity summary.parquet leaves null in
    every run of that (strategy, memory size), with the first reason its `undefined` column gives."""
    s = d.summ_m
    if "undefined" not in s.columns:
        return {}
    out = {}
    for (st, m), g in s.groupby(["strategy", "memory_size"], observed=True):
        reasons = g["undefined"].dropna().astype(str)
        for row in SUMMARY_ROW_LABELS:
            if row in g.columns and g[row].isna().all():
                why = [r.split(f"{row}: ", 1)[1].split("; ")[0] for r in reasons if f"{row}: " in r]
                if why:
                    out[(row, column_label(str(st), int(m)))] = why[0]
    return out


def table1_cell(r: str, c: str, mean: pd.DataFrame, std: pd.DataFrame, undefined: dict) -> str:
    """format_cell, or 'undefined' where the quantity exists for no run (undefined_cells), never '0'."""
    if (r, c) in undefined and not np.isfinite(mean.loc[r, c]):
        return "undefined"
    return format_cell(r, mean.loc[r, c], std.loc[r, c])


def table1_markdown(mean: pd.DataFrame, std: pd.DataFrame, metric: str, undefined: dict | None = None,
                    paper: dict | None = None) -> str:
    """Table 1 as a Markdown table (table1.md), rows labelled as on the page; `undefined` as undefined_cells.

    paper: published.paper_comparison's dict, or None: each compared cell gets '(paper 0.82, Δ −0.008)', each
    column the paper has its name, and the legend and caption follow the table."""
    cells_of, names = (paper["cells"], paper["columns"]) if paper else ({}, {})
    head = ["", *(f"{c} (paper, real BMAD: {names[c]})" if c in names else c for c in mean.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in mean.index:
        cells = [table1_cell(r, c, mean, std, undefined or {}) + (f" ({cells_of[(r, c)]})" if (r, c) in cells_of
                                                                 else "") for c in mean.columns]
        lines.append("| " + " | ".join([row_label(r, metric)] + cells) + " |")
    if paper:
        lines += [""] + [f"{s}\n" for s in paper["legend"] + paper["caption"]] + ["Per cell: table1_published.csv."]
    return "\n".join(lines) + "\n"
