"""The seed paper's Table 1 as published, and how it lines up with a measured Table 1.

Source: M. Barusco, F. Borsatti, N. Beda, D. Dalle Pezze, G. A. Susto, "Towards Continual Visual
Anomaly Detection in the Medical Domain" (2025), Table 1 (shared/paper/continual-vad-medical.txt;
method.md section 7 reprints it). The numbers below are typed from that table as printed; nothing
here is computed or estimated. They were measured on the REAL BMAD data set (six categories, the
paper's order Brain > Liver > RESC > Chest > Histopathology > OCT2017, WideResNet50-2 at 224 px,
one run).

Which column is which (the extracted table lost its header; the evidence is the paper's text):
- Column order = the order of Section 4.2's list: Multi-Model, Joint-Train, Fine-Tuning, PatchCoreCL
  (10k, 30k; the surviving header cells "PatchCoreCL | 10k | 30k" sit over the last two columns).
- Multi-Model: Section 6 quotes its additional memory, 1105.8 MB: the first column's Add. Mem, and
  the best accuracies of the table (0.99 / 0.98), "the best performing strategy ... as expected".
- Fine-Tuning: "the worst strategy ... the lower results in terms of both image- and pixel-level":
  the third column (0.73 / 0.75 / 0.31 / 0.25 / 0.12 / 0.10) and the highest forgetting (52.32 %,
  "the Fine-Tuning solution shows the highest forgetting").
- PatchCoreCL-10k: "uses only one-third of the memory required by Joint-Train" (61.43 vs 184.3 MB),
  "a relative gap of only 0.02", "forgetting (0.80% against the 0.73% of the PatchCoreCL-30K)", "a GAP
  of 0.02 on the F1 score [image: 0.86 - 0.84] and only 0.01 on the F1 pixel-level [0.63 - 0.62]": the
  fourth column; PatchCoreCL-30k the fifth ("forgetting value less than 1%": 0.73). Joint-Train is the
  remaining second column, whose pixel metrics the 30k column "replicates" (0.93 / 0.63 / 0.69, 0.76
  vs 0.77).

Memory sizes: bank MB = vectors x 1536 x 4 bytes / 1e6 (method.md section 6). 184.3 MB =
30,000 x 1536 x 4 B, so Joint-Train and Fine-Tuning hold M = 30,000; Multi-Model's 1105.8 MB =
6 x 184.3 MB, one M = 30,000 bank per task (pclsim's multi_model at memory size 30000); 61.43 MB is
M = 10,000 (pclsim stores floor(10000/6) x 6 = 9996 vectors, 61.42 MB; 10,000 vectors are 61.44 MB:
the paper's 61.43 is neither, and its 1105.8 is six times the ROUNDED 184.3, where 6 x 30,000 vectors
are 1105.92 MB).

Which row is which pclsim Table 1 row (method.md section 6 defines each):
- "AUROC", "F1" of the image block: image_auroc, image_f1 (Section 5.1: image AUROC and F1).
- "AUROC", "F1", "PR", "AUPRO" of the pixel block: pixel_auroc, pixel_f1, pixel_pr (the trapezoid
  area under the pixel PR curve, not average precision), pixel_aupro. Section 5.1 lists the pixel
  metrics in this order.
- "Add. Mem [MB]": bank_mb (decimal MB of float32 bank vectors after the last task). Same unit.
- "Rel. Gap": relative_gap on image F1. Section 5.2's text says the gap is taken on pixel F1, but the
  published gaps are Joint-Train's IMAGE F1 minus the method's, in points: 0.86 - 0.75 = 0.11,
  0.86 - 0.84 = 0.02, 0.86 - 0.85 = 0.01 (pixel F1 would give 0.38, 0.01, 0.00; relative, 0.13);
  method.md: "the paper uses image F1". pclsim's relative_gap is the same difference (joint minus the
  method, same seed and order), so the published gap is set beside the cell only when the report's
  metric is image_f1.
- "Avg. Forget. [%]": avg_forgetting_pct, percent in both. The paper's own script divided the sum of
  relative drops by 9 whatever T (method.md section 6); pclsim's Table 1 divides by T - 1. With the same
  runs the two differ by the factor (T - 1) / 9 exactly, so the comparison's measured value is the cell
  times (T - 1) / 9 (5/9 for the six tasks), the summary's avg_forgetting_paper_pct. Which metric the
  paper's forgetting is on is not certain: Section 5.1 says pixel level, but says so of the gap too,
  whose numbers are image F1's; Figure 3.3's discussion of forgetting plots image F1. It is compared
  on image_f1, the report's default metric, like the gap.

Published cells without a pclsim counterpart (listed in NOT_COMPARED, never given a measured value):
- "Arch. Mem [MB]" (275.6, WideResNet50-2's parameters x 4 bytes): pclsim's Table 1 has no row for it
  (summary.parquet's arch_mb holds the backbone's MB).
- PatchCoreCL-10k's "Rel. Gap" (0.02): the paper measured it against its only Joint-Train column,
  M = 30,000; pclsim's cell is the gap to joint at the SAME memory size (10000), another quantity.
- "-" cells (Multi-Model's and Joint-Train's gap and forgetting) are not published values.

Other differences a reader should keep in mind (said on the page, not corrected for): the paper's
pixel metrics were taken after the first three (masked) tasks (Section 5.1; the authors' script
averaged them over six tasks with random masks for the unmasked ones, method.md section 5), pclsim's
after the whole stream over the tasks with masks unless `evaluation.maskless_pixels: paper`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.continual import PAPER_FORGETTING_DIVISOR
from ..data.bmad import BMAD_TASKS, SYNTHETIC_MARKER
from .style import column_label

__all__ = ["SOURCE", "PUBLISHED_LABEL", "PAPER_COLUMNS", "PAPER_ROWS", "PUBLISHED", "NOT_COMPARED", "published_value",
           "is_paper_scenario", "synthetic_data", "comparison", "not_compared_notes", "annotations",
           "paper_comparison"]

SOURCE = ("Barusco, Borsatti, Beda, Dalle Pezze, Susto: Towards Continual Visual Anomaly Detection in the "
          "Medical Domain (2025), Table 1")
PUBLISHED_LABEL = "published (seed paper, Table 1, real BMAD)"

# the paper's columns, in its order: (its name, pclsim strategy, memory size M)
PAPER_COLUMNS = (("Multi-Model", "multi_model", 30000), ("Joint-Train", "joint", 30000),
                 ("Fine-Tuning", "finetune", 30000), ("PatchCoreCL-10k", "patchcore_cl", 10000),
                 ("PatchCoreCL-30k", "patchcore_cl", 30000))
# pclsim Table 1 row (or summary column) -> (the paper's row name, unit of both)
PAPER_ROWS = {
    "image_auroc": ("image AUROC", "fraction"), "image_f1": ("image F1", "fraction"),
    "pixel_auroc": ("pixel AUROC", "fraction"), "pixel_f1": ("pixel F1", "fraction"),
    "pixel_pr": ("pixel PR", "fraction"), "pixel_aupro": ("pixel AUPRO", "fraction"),
    "arch_mb": ("Arch. Mem [MB]", "MB"), "bank_mb": ("Add. Mem [MB]", "MB"),
    "relative_gap": ("Rel. Gap", "image F1 points"), "avg_forgetting_pct": ("Avg. Forget. [%]", "%"),
}
# the table as printed, one string per column of PAPER_COLUMNS; "-": no value published
PUBLISHED = {
    "image_auroc": ("0.99", "0.82", "0.73", "0.77", "0.81"),
    "image_f1": ("0.98", "0.86", "0.75", "0.84", "0.85"),
    "pixel_auroc": ("0.94", "0.93", "0.31", "0.93", "0.93"),
    "pixel_f1": ("0.64", "0.63", "0.25", "0.62", "0.63"),
    "pixel_pr": ("0.70", "0.69", "0.12", "0.67", "0.69"),
    "pixel_aupro": ("0.78", "0.76", "0.10", "0.75", "0.77"),
    "arch_mb": ("275.6", "275.6", "275.6", "275.6", "275.6"),
    "bank_mb": ("1105.8", "184.3", "184.3", "61.43", "184.3"),
    "relative_gap": ("-", "-", "0.11", "0.02", "0.01"),
    "avg_forgetting_pct": ("-", "-", "52.32", "0.80", "0.73"),
}
# published cells with no pclsim counterpart: (row, strategy or None for all, memory size or None) -> why
NOT_COMPARED = {
    ("arch_mb", None, None): "pclsim's Table 1 has no architecture-memory row (summary.parquet arch_mb holds it)",
    ("relative_gap", "patchcore_cl", 10000): "the paper's gap of PatchCoreCL-10k is to its Joint-Train column "
                                             "(M=30000); pclsim's cell is the gap to joint at M=10000",
}
_ON_IMAGE_F1 = ("relative_gap", "avg_forgetting_pct")  # published on image F1 (see the module docstring)


def published_value(row: str, strategy: str, memory_size: int) -> tuple[str, float] | None:
    """(the paper's printed text, its value) of one cell of Table 1, or None where the paper publishes none
    (a strategy or memory size it did not run, a row it does not have, a '-')."""
    if row not in PUBLISHED:
        return None
    for k, (_, st, m) in enumerate(PAPER_COLUMNS):
        if st == strategy and m == int(memory_size):
            text = PUBLISHED[row][k]
            return None if text == "-" else (text, float(text))
    return None


def _not_compared(row: str, strategy: str, memory_size: int) -> str | None:
    for (r, st, m), why in NOT_COMPARED.items():
        if r == row and st in (None, strategy) and m in (None, int(memory_size)):
            return why
    return None


def is_paper_scenario(scenario: dict) -> bool:
    """True when the study is the paper's: dataset.kind bmad and its tasks exactly the six BMAD categories
    (any order). Read from the results folder's scenario.yaml (a dict; {} gives False)."""
    ds = (scenario or {}).get("dataset") or {}
    tasks = ds.get("tasks") or []
    return ds.get("kind") == "bmad" and len(tasks) == len(BMAD_TASKS) and set(tasks) == set(BMAD_TASKS)


def synthetic_data(root: Path, scenario: dict) -> bool:
    """True when the measured data are pclsim's synthetic stream in the BMAD layout: data.json records it
    (`synthetic`), or the scenario's data folder holds the marker `pclsim data synth` writes."""
    try:
        if json.loads((Path(root) / "data.json").read_text()).get("synthetic"):
            return True
    except (OSError, ValueError, AttributeError):
        pass
    data_root = ((scenario or {}).get("dataset") or {}).get("root")
    return bool(data_root) and (Path(str(data_root)) / SYNTHETIC_MARKER).is_file()


def comparison(mean: pd.DataFrame, combos, metric: str, n_tasks: int) -> pd.DataFrame:
    """The published cells of Table 1 against the measured ones, one row per (Table 1 row, column) that the
    paper publishes and this study has: metric (the Table 1 row), paper_row, strategy, memory_size, column
    (Table 1's column label), published (the paper's value, float), measured (float; NaN where the study has
    no value), difference (measured - published, same unit), unit, note (how `measured` was taken where it is
    not the Table 1 cell itself). Units: metrics as fractions in [0, 1], bank in decimal MB, the gap in
    image-F1 points, forgetting in percent.

    mean: tables.table1's mean frame (rows Table 1 rows, columns column_label(strategy, M)); combos: its
    (strategy, memory size) pairs; metric: the report's metric (the gap and forgetting rows are compared only
    on image_f1); n_tasks: T, for the paper's forgetting divisor. Cells in NOT_COMPARED are left out."""
    out = []
    for st, m in combos:
        col = column_label(st, m)
        for row in mean.index:
            pub = published_value(row, st, m)
            if pub is None or _not_compared(row, st, m) or (row in _ON_IMAGE_F1 and metric != "image_f1"):
                continue
            measured, note = float(mean.loc[row, col]), ""
            if row == "avg_forgetting_pct":
                measured *= (n_tasks - 1) / PAPER_FORGETTING_DIVISOR
                note = (f"measured in the paper's form: the Table 1 cell x (T-1)/{PAPER_FORGETTING_DIVISOR} "
                        f"(T={n_tasks}; the authors divided by {PAPER_FORGETTING_DIVISOR} whatever T)")
            out.append({"metric": row, "paper_row": PAPER_ROWS[row][0], "strategy": st, "memory_size": int(m),
                        "column": col, "published": pub[1], "measured": measured,
                        "difference": measured - pub[1], "unit": PAPER_ROWS[row][1], "note": note})
    cols = ["metric", "paper_row", "strategy", "memory_size", "column", "published", "measured", "difference",
            "unit", "note"]
    return pd.DataFrame(out, columns=cols)


def not_compared_notes(combos, metric: str) -> list[str]:
    """One line per reason a published cell of this study's columns is not compared: the paper's row, the
    columns with their published values, why."""
    why_of: dict[tuple[str, str], list[str]] = {}
    for st, m in combos:
        for row in PUBLISHED:
            pub = published_value(row, st, m)
            if pub is None:
                continue
            why = _not_compared(row, st, m)
            if why is None and row in _ON_IMAGE_F1 and metric != "image_f1":
                why = f"published on image F1; this report's {PAPER_ROWS[row][0]} is on {metric}"
            if why:
                why_of.setdefault((row, why), []).append(f"{column_label(st, m)} {pub[0]}")
    return [f"{PAPER_ROWS[row][0]} (paper: {', '.join(cells)}): {why}" for (row, why), cells in why_of.items()]


def annotations(cmp: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(Table 1 row, column label): 'paper 0.82, Δ −0.008'}: the text set beside each compared cell (the paper's
    value as printed, the difference in the cell's decimals); forgetting: 'paper 0.80 (÷9; ours ÷9 0.46), Δ −0.34'."""
    out = {}
    for r in cmp.itertuples(index=False):
        text = published_value(r.metric, r.strategy, r.memory_size)[0]
        nd = 3 if r.unit == "fraction" or r.unit.endswith("points") else 2
        diff = "Δ –" if not np.isfinite(r.difference) else f"Δ {r.difference:+.{nd}f}".replace("-", "−")
        if r.metric == "avg_forgetting_pct":  # compared in the paper's form, which the cell is not in
            ours = f"{r.measured:.{nd}f}" if np.isfinite(r.measured) else "–"
            text += f" (÷{PAPER_FORGETTING_DIVISOR}; ours ÷{PAPER_FORGETTING_DIVISOR} {ours})"
        out[(r.metric, r.column)] = f"paper {text}, {diff}"
    return out


def paper_comparison(d, mean: pd.DataFrame) -> dict | None:
    """Everything Table 1 shows of the paper's figures, or None when the study is not the paper's
    (is_paper_scenario). d: the report's ReportData; mean: tables.table1's mean frame.

    Returns {"table": comparison(...) (the rows of table1_published.csv), "cells": annotations(...),
    "columns": {column label: the paper's column name} for this study's columns the paper has,
    "legend": [sentences that say what the published figures are, plain text: shown before the table],
    "caption": [the details, plain text: after it], "synthetic": synthetic_data(...)}."""
    if not is_paper_scenario(d.scenario):
        return None
    cmp = comparison(mean, d.combos, d.metric, len(d.tasks))
    names = {column_label(st, m): name for name, st, m in PAPER_COLUMNS if (st, m) in d.combos}
    synthetic = synthetic_data(d.root, d.scenario)
    model = d.scenario.get("model") or {}
    maskless = (d.scenario.get("evaluation") or {}).get("maskless_pixels", "skip")
    legend = [
        f"Under each cell the paper also reports (in brown): {PUBLISHED_LABEL}, the value the seed paper "
        f"publishes for that strategy and memory size ({SOURCE}), and Δ = measured − published in the cell's "
        "unit (metrics as fractions, bank in MB, gap in image-F1 points, forgetting in %). The paper's columns: "
        "Multi-Model, Joint-Train and Fine-Tuning at M=30000 (184.3 MB = 30000 × 1536 × 4 bytes per bank), "
        "PatchCoreCL at M=10000 and M=30000; no other column has a published value."]
    caption = [
        "The paper: real BMAD, WideResNet50-2 at 224 px, one run in the order "
        f"{' > '.join(BMAD_TASKS)}. This study: backbone {model.get('backbone', '?')}, {d.n_orders} order(s), "
        f"{d.n_seeds} seed(s).",
        "Rel. gap and avg. forgetting are published on image F1; the paper's forgetting divides by "
        f"{PAPER_FORGETTING_DIVISOR} whatever T (the authors' script), so its Δ compares with this cell × "
        f"(T−1)/{PAPER_FORGETTING_DIVISOR}. Pixel metrics: the paper took them after the first three (masked) "
        f"tasks; here after the whole stream (mask-less tasks: {maskless}).",
    ]
    if not names:
        caption.append("None of this study's columns is one the paper publishes (it ran M=10000 and M=30000).")
    if synthetic:
        legend.insert(0, "The measured values come from pclsim's SYNTHETIC stream in the BMAD layout (pclsim "
                          "data synth), not from BMAD: the differences compare unlike data and say nothing "
                          "about reproducing the paper.")
    skipped = not_compared_notes(d.combos, d.metric)
    if skipped:
        caption.append("Published but not compared: " + "; ".join(skipped) + ".")
    return {"table": cmp, "cells": annotations(cmp), "columns": names, "legend": legend, "caption": caption,
            "synthetic": synthetic}
