"""The order designs in the report's section "Does the order matter?": the balance of the orders that ran (a
task x position table), the stopping history of `sample: auto` and the progress of an order search against
uniform sampling (design.parquet, pclsim.results.schema.DESIGN; pclsim.study.adaptive explains the designs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..results.schema import DESIGN, ORDER_SEPARATOR
from .figures import new_figure, save_figure
from .page import escape, figure_tag, html_table
from .reading import ReportData, read_report_table
from .style import short_task

__all__ = ["balance_table", "stopping_table", "design_section", "fig_search_progress"]


def balance_table(orders) -> pd.DataFrame:
    """Task x position counts of distinct orders (task names, 'A > B > ...' strings or tuples): rows tasks
    (first-seen order), columns positions 1..T; empty for orders of different lengths."""
    orders = [tuple(o.split(ORDER_SEPARATOR)) if isinstance(o, str) else tuple(o) for o in dict.fromkeys(orders)]
    if not orders or len({len(o) for o in orders}) != 1:
        return pd.DataFrame()
    tasks = list(dict.fromkeys(t for o in orders for t in o))
    counts = pd.DataFrame(0, index=tasks, columns=[f"step {p + 1}" for p in range(len(orders[0]))])
    for o in orders:
        for p, t in enumerate(o):
            counts.iloc[tasks.index(t), p] += 1
    return counts


def stopping_table(design: pd.DataFrame) -> pd.DataFrame:
    """sample: auto's checks, one row per round: orders so far, then per (strategy, M) the mean final metric
    with its 95 % half-width and the widest half-width of a task's position slope."""
    c = design[(design.design == "sample_auto") & (design.kind == "check")]
    if c.empty:
        return pd.DataFrame()
    rows = {}
    for (k, s, m), g in c.groupby(["round", "strategy", "memory_size"], sort=True):
        row = rows.setdefault(int(k), {"orders": int(g.n.max())})
        mean = g[g.quantity == "final_mean"].iloc[0]
        slopes = g[g.quantity == "position_slope"].ci_half_width
        row[f"{s} M={m}: mean ± 95 % half-width"] = f"{mean.value:.3f} ± {mean.ci_half_width:.4f}"
        row[f"{s} M={m}: widest slope half-width"] = f"{slopes.max():.4f}" if slopes.notna().any() else "–"
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = [f"round {k}" for k in out.index]
    return out


def fig_search_progress(design: pd.DataFrame, out: Path):
    """order_search.png: the most extreme value found after each evaluated order, search vs the uniform sample
    of the same budget (in the order it was drawn); None without a search."""
    s = design[(design.design == "search") & (design.kind == "order")]
    if s.empty:
        return None
    own, uni = s[s.role == "search"], s[s.role == "uniform"]
    res = design[(design.design == "search") & (design.kind == "result") & (design.role == "search")]
    worst = res.empty or "worst" in str(res.iloc[0].note)
    acc = np.minimum.accumulate if worst else np.maximum.accumulate
    fig = new_figure(6.4, 3.4)
    ax = fig.subplots()
    ax.step(np.arange(1, len(own) + 1), acc(own.value.to_numpy(float)), where="post", label="search", color="C3")
    if len(uni):
        ax.step(np.arange(1, len(uni) + 1), acc(uni.value.to_numpy(float)), where="post",
                label="uniform sample", color="C0", ls="--")
    for k in sorted(own["round"].unique())[1:]:
        ax.axvline((own["round"] < k).sum() + 0.5, color="grey", lw=0.5, alpha=0.5)
    r = own.iloc[0]
    ax.set_xlabel("orders evaluated")
    ax.set_ylabel(f"{'worst' if worst else 'best'} final mean {r.metric} so far", fontsize=8)
    ax.set_title(f"Order search for the {'worst' if worst else 'best'} order ({r.strategy}, M={r.memory_size}); "
                 "grey lines: rounds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "order_search.png"), (
        "The most extreme final mean found after each evaluated order: the adaptive search (rounds of Tune trials) "
        "against a uniform sample of the same budget, in the order it was drawn.")


def design_section(d: ReportData, out: Path) -> tuple[str, list[tuple[str, str]]]:
    """HTML of the order designs (balance, stopping history, search) and its figures; '' when the folder's
    orders are neither a design nor a search worth a table (fewer than 2 orders)."""
    path = d.root / DESIGN.file
    design = None
    if path.exists():
        design = read_report_table(path, DESIGN).astype({c: object for c in DESIGN.strings})
    parts, figs = ['<h3 id="order-designs">Order designs</h3>'], []
    sampled = design[(design.design == "sample_auto") & (design.kind == "order")] if design is not None else None
    orders = list(sampled.order) if sampled is not None and len(sampled) else list(d.summary["order"].astype(str))
    bal = balance_table(orders)
    if len(bal) and len(bal.columns) > 1 and len(set(orders)) > 1:
        even = bool((bal.to_numpy() == bal.to_numpy()[0, 0]).all())
        which = "sample: auto's orders" if sampled is not None and len(sampled) else "the orders of this folder"
        parts.append('<p class="note">' + escape(
            f"Balance of {which} ({len(set(orders))} orders): how often each task arrived at each step. "
            + ("Every task is equally often at every step, so a task's position slope is not confounded with "
               "which tasks it was compared with." if even else "The counts are uneven: position effects are "
               "estimated from an unbalanced set of orders.")) + "</p>")
        bal.index = [short_task(t, 40) for t in bal.index]
        parts.append(html_table(bal, lambda r, c: r if c is None else str(int(bal.loc[r, c]))))
    if design is not None:
        stop = stopping_table(design)
        if len(stop):
            note = design[(design.design == "sample_auto") & (design.kind == "stop")]
            parts.append('<p class="note">' + escape(
                "sample: auto, round by round: the 95 % half-widths (t intervals) it stops on"
                + (f"; {note.iloc[0].note}." if len(note) else "; not stopped yet.")) + "</p>")
            parts.append(html_table(stop, lambda r, c: r if c is None else str(stop.loc[r, c])))
        res = design[(design.design == "search") & (design.kind == "result")]
        if len(res):
            rows = pd.DataFrame({"order": list(res.order), "final mean": [f"{v:.3f}" for v in res.value]},
                                index=[("search: " + str(n).split(";")[0]) if r == "search" else str(n)
                                       for n, r in zip(res.note, res.role)])
            parts.append(html_table(rows, lambda r, c: r if c is None else str(rows.loc[r, c])))
        f = fig_search_progress(design, out)
        if f:
            figs.append(f)
            parts.append(figure_tag(*f))
    return ("\n".join(parts) if len(parts) > 1 else ""), figs
