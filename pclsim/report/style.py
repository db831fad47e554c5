"""The report's names and colours: strategy and row labels, palettes, markers, resolution.

Metric labels come from the metric registry (`pclsim.core.metric_registry`); the rows of Table 1 that
are not metrics (summary columns) are labelled here. Colours follow a list of tasks or strategies
given by the caller, so one task keeps its colour in every figure of a report.
"""

from __future__ import annotations

from ..core.metric_registry import metric_label

__all__ = ["STRATEGY_NAMES", "PALETTE", "MARKERS", "DPI", "HEATMAP_CMAP", "MAP_CMAP", "MISSING_COLOR",
           "SUMMARY_ROW_LABELS", "PER_METRIC_ROWS", "column_label", "row_label", "short_task", "colors_for",
           "markers_for"]

# the paper's names and its Table 1 column order (method.md section 7)
STRATEGY_NAMES = {"multi_model": "Multi-Model", "joint": "Joint", "finetune": "Fine-Tuning", "patchcore_cl": "CL"}
# Okabe-Ito: distinguishable under the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 110
HEATMAP_CMAP = "viridis"  # accuracy matrices and routing shares
MAP_CMAP = "inferno"      # anomaly maps of the gallery
MISSING_COLOR = "#d9d9d9"  # a matrix cell without a value
SUMMARY_ROW_LABELS = {"bank_mb": "bank MB", "relative_gap": "relative gap", "avg_forgetting_pct": "avg forgetting %"}
PER_METRIC_ROWS = ("relative_gap", "avg_forgetting_pct")  # computed on the report's metric: its name is shown


def column_label(strategy: str, memory_size: int) -> str:
    """Table 1 column name, e.g. 'CL M=1000', 'Joint M=3000' (M: the memory budget)."""
    return f"{STRATEGY_NAMES.get(strategy, strategy)} M={int(memory_size)}"


def row_label(row: str, metric: str) -> str:
    """Label of a Table 1 row: a registered metric's label, or a summary column's, with the report's
    metric named where the row is computed on it (e.g. 'relative gap (image_f1)')."""
    name = SUMMARY_ROW_LABELS.get(row) or metric_label(row)
    return f"{name} ({metric})" if row in PER_METRIC_ROWS else name


def short_task(task: str, n: int = 16) -> str:
    """A task name for axis ticks: BMAD's '_AD' suffix dropped, cut to n characters with an ellipsis."""
    task = task[:-3] if task.endswith("_AD") else task
    return task if len(task) <= n else task[: n - 1] + "…"


def colors_for(names) -> dict[str, str]:
    """{name: colour}: PALETTE in the order of `names`, repeating after eight."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def markers_for(names) -> dict[str, str]:
    """{name: matplotlib marker}: MARKERS in the order of `names`, repeating after eight."""
    return {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(names)}
