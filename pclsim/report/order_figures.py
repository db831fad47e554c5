"""The figures of the report's section "Does the order matter?": distribution over orders, position
effect (slopes with confidence intervals) and the routing confusion of task-identifying strategies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import heatmap, new_figure, save_figure
from .reading import ReportData
from .style import colors_for, column_label, short_task

__all__ = ["fig_distribution", "fig_slopes", "fig_routing"]


def fig_distribution(d: ReportData, st: pd.DataFrame, out: Path):
    """order_distribution.png: each order's final mean (dots), the mean with its bootstrap CI and the
    best / worst order, per (strategy, memory size); None without summary rows. st: statistics rows."""
    s = d.summ_m
    om = s.groupby(["strategy", "memory_size", "order"], observed=True)["final_mean"].mean()
    combos = [c for c in d.combos if (c[0], c[1]) in om.index.droplevel("order")]
    if not combos:
        return None
    fig = new_figure(8.0, 0.55 * len(combos) + 1.6)
    ax = fig.subplots()
    colors = colors_for(d.strategies)
    rng = np.random.default_rng(0)
    for k, (strat, m) in enumerate(combos):
        v = om.xs((strat, m), level=("strategy", "memory_size")).to_numpy(float)
        v = v[np.isfinite(v)]
        ax.scatter(v, k + rng.uniform(-0.18, 0.18, v.size), s=9 if v.size > 60 else 16, alpha=0.45,
                   color=colors[strat], edgecolor="none")
        row = st[(st.strategy == strat) & (st.memory_size == m) & (st.quantity == "final_mean")]
        mean = row[row.statistic == "mean"]
        if len(mean):
            r = mean.iloc[0]
            lo, hi = r.ci_low, r.ci_high
            err = [[max(0.0, r.value - lo)], [max(0.0, hi - r.value)]] if np.isfinite(lo) else None
            ax.errorbar([r.value], [k], xerr=err,
                        fmt="D", color="black", ms=5, capsize=4, zorder=4)
        for name, marker in (("best_order", "^"), ("worst_order", "v")):
            b = row[row.statistic == name]
            if len(b) and not b.iloc[0].note:
                ax.scatter([b.iloc[0].value], [k + 0.3], marker=marker, color="black", s=28, zorder=5)
    ax.set_yticks(range(len(combos)), [column_label(s_, m_) for s_, m_ in combos], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"final mean {d.metric} of an order (mean over seeds)", fontsize=9)
    ax.set_title("Distribution over orders: dots = orders, diamond = mean with its 95 % bootstrap CI,\n"
                 "triangles = best / worst order", fontsize=9)
    return save_figure(fig, out, "order_distribution.png"), (
        f"Each dot is one task order's final mean {d.metric} (averaged over seeds); the diamond and bar are the "
        "mean over orders and its 95 % bootstrap confidence interval; the triangles mark the best and the worst "
        "order. A narrow cloud means the order hardly matters.")


_SLOPE_ROWS = (("final_value", 100.0, "final value", "points per later step"),
               ("forgetting_pct", 1.0, "forgetting", "% forgetting per later step"))


def fig_slopes(d: ReportData, st: pd.DataFrame, out: Path):
    """position_slopes.png: per task and pooled, the slope of the final value and of the forgetting on
    the arrival step with 95 % CIs (pclsim.analysis.statistics); None without finite slopes."""
    sl = st[st.statistic == "position_slope"]
    task_colors = colors_for(d.tasks)
    rows_q = [q for q in _SLOPE_ROWS if np.isfinite(sl[sl.quantity == q[0]]["value"]).any()]
    if not rows_q:
        return None
    grid = [(m, q) for m in d.fig_memory_sizes for q in rows_q]
    fig = new_figure(max(7.0, 3.3 * len(d.fig_strategies) + 0.6), (0.28 * len(d.tasks) + 1.5) * len(grid) + 0.8)
    axes = fig.subplots(len(grid), len(d.fig_strategies), squeeze=False)
    have = set(d.fig_combos)
    for i, (m, (quantity, scale, name, unit)) in enumerate(grid):
        for j, strat in enumerate(d.fig_strategies):
            ax = axes[i, j]
            if (strat, m) not in have:
                ax.set_axis_off()
                continue
            rows = sl[(sl.strategy == strat) & (sl.memory_size == m) & (sl.quantity == quantity)]
            labels, y = [], 0
            for t in d.tasks + [None]:
                r = rows[rows.task.isna()] if t is None else rows[rows.task == t]
                if r.empty:
                    continue
                r = r.iloc[0]
                v, lo, hi = scale * r.value, scale * r.ci_low, scale * r.ci_high
                color = "black" if t is None else task_colors[t]
                if np.isfinite(v):
                    err = [[max(0.0, v - lo)], [max(0.0, hi - v)]] if np.isfinite(lo) else None
                    ax.errorbar([v], [y], xerr=err, fmt="s" if t is None else "o", color=color, ms=5, capsize=3)
                labels.append("all (within task)" if t is None else short_task(t))
                y += 1
            ax.axvline(0, color="#888888", lw=1)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{column_label(strat, m)}: {name}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlabel(unit, fontsize=8)
    fig.suptitle(f"Position effect ({d.metric}): slope on the arrival step, 95 % CI", fontsize=11)
    return save_figure(fig, out, "position_slopes.png"), (
        f"Per task, the slope of its final {d.metric} (in points, 0.01 of the metric) and of its forgetting (%) "
        "against the step at which it arrived, with the 95 % confidence interval (scipy.stats.linregress, t "
        "quantile); the black square pools the tasks (one intercept per task). Positive final value: tasks that "
        "arrive later end higher; negative forgetting: they forget less. For PatchCoreCL a task arriving at step "
        "s of T goes through T - 1 - s re-reductions, so the slope on the number of re-reductions is the same "
        "line mirrored.")


def fig_routing(d: ReportData, conf: pd.DataFrame, out: Path):
    """routing_confusion.png: final-step routing shares (conf: order.routing_confusion) per pair."""
    combos = [c for c in d.combos if ((conf.strategy == c[0]) & (conf.memory_size == c[1])).any()]
    if not combos:
        return None
    ncol = min(len(combos), 2)
    nrow = math.ceil(len(combos) / ncol)
    T = len(d.tasks)
    fig = new_figure((0.62 * T + 2.6) * ncol + 0.8, (0.5 * T + 2.0) * nrow + 0.4)
    axes = np.atleast_2d(fig.subplots(nrow, ncol, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    im = None
    for k, (strat, m) in enumerate(combos):
        ax = axes.ravel()[k]
        ax.set_axis_on()
        c = conf[(conf.strategy == strat) & (conf.memory_size == m)]
        a = c.pivot_table(index="true_task", columns="chosen_task", values="share", aggfunc="sum")
        a = a.reindex(index=[t for t in d.tasks if t in a.index], columns=[t for t in d.tasks if t in a.columns])
        a = a.reindex(columns=a.index.union(a.columns, sort=False)).fillna(0.0)
        im = heatmap(ax, a.to_numpy(float), [short_task(t) for t in a.index], [short_task(t) for t in a.columns],
                     0.0, 1.0, f"{column_label(strat, m)}: routing after the last task",
                     xlabel="bank chosen (its task)")
        ax.set_ylabel("true task of the test image", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="share of the task's test images")
    return save_figure(fig, out, "routing_confusion.png"), (
        "Task identification after the whole stream, summed over all orders and seeds: row = the task a test "
        "image belongs to, column = the task whose bank it was routed to (lowest mean patch distance), as a "
        "share of the row's images. The diagonal is task_id_acc.")
