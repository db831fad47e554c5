"""The report's section "Does the order matter?": the order-robustness statistics in words, a table,
the routing of task-identifying strategies and three figures (order_figures).

Reads statistics.parquet where the sweep wrote it (else computes the statistics of the report's
metric with `pclsim.analysis.statistics.statistics_table`), and routing.parquet / routed.parquet where they
exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PclsimError
from ..results.schema import MATRICES, ORDER_SEPARATOR, ROUTED, ROUTING, STATISTICS, SUMMARY
from ..analysis.statistics import order_sentence, statistics_table
from .order_designs import design_section
from .order_figures import fig_distribution, fig_routing, fig_slopes
from .page import escape, figure_tag, html_table
from .reading import ReportData, read_report_table
from .style import column_label

__all__ = ["order_statistics", "order_section", "routing_confusion"]


def order_statistics(d: ReportData) -> tuple[pd.DataFrame, str]:
    """The statistics rows of the report's metric, and where they came from."""
    path = d.root / STATISTICS.file
    if path.exists():
        st = read_report_table(path, STATISTICS)
        st = st.astype({c: object for c in STATISTICS.strings})
        st["note"] = st["note"].fillna("")
        if (st["metric"] == d.metric).any():
            return st[(st["metric"] == d.metric) | (st["statistic"] == "difficulty")].reset_index(drop=True), \
                "statistics.parquet"
    summ = d.summary.astype({c: object for c in SUMMARY.strings if c in d.summary.columns})  # 0.2: no `undefined`
    mat = d.mat.drop(columns=["pos", "is_final"]).astype({c: object for c in MATRICES.strings})
    return statistics_table(summ, mat, metrics=[d.metric]), "computed by the report (no statistics.parquet)"


def routing_confusion(root: Path) -> pd.DataFrame | None:
    """Final-step routing summed over runs: strategy, memory_size, true_task, chosen_task, images, share
    (share of the true task's test images routed to the chosen bank). None without routing.parquet."""
    path = root / ROUTING.file
    if not path.exists():
        return None
    r = read_report_table(path, ROUTING)
    if r.empty:
        return None
    r = r.astype({c: object for c in ROUTING.strings})
    n_tasks = r["order"].str.count(ORDER_SEPARATOR) + 1
    r = r[r["step"] == n_tasks - 1]
    g = r.groupby(["strategy", "memory_size", "true_task", "chosen_task"])["images"].sum().reset_index()
    g["share"] = g["images"] / g.groupby(["strategy", "memory_size", "true_task"])["images"].transform("sum")
    return g


def _routed_table(d: ReportData) -> pd.DataFrame | None:
    """Mean over runs of the report's metric on correctly / wrongly routed images at the final step."""
    path = d.root / ROUTED.file
    if not path.exists():
        return None
    r = read_report_table(path, ROUTED, metric=d.metric)
    if r.empty:
        return None
    r = r.astype({c: object for c in ROUTED.strings})
    r = r[r["step"] == r["order"].str.count(ORDER_SEPARATOR)]
    return r.groupby(["strategy", "memory_size", "routed"])["value"].mean().unstack("routed")


def _cell(v, nd=3, pct=False) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{100 * v:.0f} %" if pct else f"{v:.{nd}f}"


def _p(v) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.2g}" if v >= 0.001 else "< 0.001"


def _summary_frame(d: ReportData, st: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for strat, m in d.fig_combos:
        s = st[(st.strategy == strat) & (st.memory_size == m)]

        def pick(stat, q="final_mean", task=None):
            r = s[(s.statistic == stat) & (s.quantity == q)]
            r = r[r.task.isna()] if task is None else r[r.task == task]
            return r.iloc[0] if len(r) else None
        mean, share, test = pick("mean"), pick("order_share"), pick("order_test")
        slope, ptest = pick("position_slope", "final_value"), pick("position_test", "final_value")
        best, worst, gap = pick("best_order"), pick("worst_order"), pick("best_worst_gap")
        ftest = pick("order_test", "avg_forgetting_pct")
        if mean is None:
            continue
        rows[column_label(strat, m)] = {
            "final mean [95 % CI]": f"{_cell(mean.value)} [{_cell(mean.ci_low)}, {_cell(mean.ci_high)}]",
            "order share of variance": _cell(share.value, pct=True) if share is not None else "–",
            "order test p": _p(test.p_value) if test is not None else "–",
            "test": ("Kruskal-Wallis" if test is not None and "kruskal" in test.method else
                     "permutation (R² on arrival steps)" if test is not None and "permutation" in test.method
                     else "–"),
            "effect size": _cell(test.effect_size, 2) if test is not None else "–",
            "forgetting: order test p": _p(ftest.p_value) if ftest is not None else "–",
            "position slope (points/step) [95 % CI]": (
                f"{_cell(100 * slope.value, 2)} [{_cell(100 * slope.ci_low, 2)}, {_cell(100 * slope.ci_high, 2)}]"
                if slope is not None else "–"),
            "position test p": _p(ptest.p_value) if ptest is not None else "–",
            "best order": f"{best.order} ({_cell(best.value)})" if best is not None else "–",
            "worst order": f"{worst.order} ({_cell(worst.value)})" if worst is not None else "–",
            "gap (seed std)": (f"{_cell(gap.value)}" + (f" ({gap.effect_size:.1f})" if np.isfinite(gap.effect_size)
                                                         else "")) if gap is not None else "–",
        }
    return pd.DataFrame(rows).T


def order_section(d: ReportData, out: Path) -> tuple[str, list[tuple[str, str]]]:
    """HTML of the section and the figures it shows (name, caption); writes order_statistics.csv
    (and routing_final.csv where routing exists) beside index.html."""
    st, source = order_statistics(d)
    figs = []
    for f in (fig_distribution(d, st, out), fig_slopes(d, st, out)):
        if f:
            figs.append(f)
    conf = routing_confusion(d.root)
    if conf is not None:
        f = fig_routing(d, conf, out)
        if f:
            figs.append(f)
    table = _summary_frame(d, st)
    try:
        st.to_csv(out / "order_statistics.csv", index=False, float_format="%.6g")
        if conf is not None:
            conf.to_csv(out / "routing_final.csv", index=False, float_format="%.6g")
    except OSError as e:
        raise PclsimError(f"{out}: cannot write the report: {e}") from None
    sentences = [order_sentence(st, s, m, d.metric, label=column_label(s, m)) for s, m in d.fig_combos]
    multi = d.n_seeds > 1
    parts = [
        '<h2 id="order">Does the order matter?</h2>',
        '<p class="note">' + escape(
            f"Seeds are replicates: {d.n_seeds} seed(s) per order. "
            + ("With several seeds the variance of a run's final mean splits into an order part and a seed part "
               "(one-way random-effects ANOVA); \"order has no effect\" is tested with Kruskal-Wallis across "
               "orders, the seeds of an order being its sample (rank-based: accuracies are bounded and skewed; "
               "seed noise is the noise an order effect must exceed)." if multi else
               "With one seed the order's share of the variance cannot be separated from seed noise; \"order has "
               "no effect\" is tested on the order's structure instead: a permutation test of how much of the "
               "variation of the final mean the tasks' arrival steps explain (R², orders permuted).")
            + " The position effect is the slope of a task's final value on its arrival step; the best and worst "
              f"orders are by final mean. Statistics: {source}; every test, its reason and its source are in "
              "pclsim/statistics.py and pclsim/order_tests.py.") + "</p>",
        "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in sentences) + "</ul>",
    ]
    if len(table):
        parts.append(html_table(table, lambda r, c: r if c is None else table.loc[r, c]))
    parts.append('<p class="note">All statistics (per task too) in <a href="order_statistics.csv">'
                 "order_statistics.csv</a>.</p>")
    diff = st[st.statistic == "difficulty"]
    if len(diff):
        dd = diff.sort_values("value", ascending=False)
        parts.append('<p class="note">' + escape(
            "Measured single-task difficulty (image AUROC at M=" + str(int(dd.memory_size.iloc[0])) + "), easiest "
            "first, as easy_to_hard orders the tasks: " + ", ".join(f"{t} {v:.3f}" for t, v in zip(dd.task, dd.value))
            + ".") + "</p>")
    routed = _routed_table(d)
    if routed is not None and len(routed):
        routed.index = [column_label(s, m) for s, m in routed.index]
        parts.append(f'<p class="note">Final {escape(d.metric)} on the correctly and wrongly routed test images '
                     "(mean over runs):</p>")
        parts.append(html_table(routed, lambda r, c: r if c is None else _cell(routed.loc[r, c])))
    if conf is None:
        parts.append('<p class="note">No routing.parquet in this folder: no routing confusion to show.</p>')
    parts += [figure_tag(name, cap) for name, cap in figs]
    design_html, design_figs = design_section(d, out)  # balance, sample: auto's stops, the order search
    if design_html:
        parts.append(design_html)
    return "\n".join(parts), figs + design_figs
