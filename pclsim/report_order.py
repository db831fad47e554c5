"""The report's section "Does the order matter?": the order-robustness statistics in words, a table
and three figures (distribution over orders, position effect, routing confusion).

Reads statistics.parquet where the sweep wrote it (else computes the statistics of the report's
metric with `pclsim.statistics.statistics_table`), and routing.parquet / routed.parquet where they
exist. Called by `pclsim.report.build_report`; shares its figure and HTML helpers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PclsimError
from .statistics import STATISTICS_COLUMNS, order_sentence, statistics_table

__all__ = ["order_statistics", "order_section", "routing_confusion"]

_SEP = " > "


def order_statistics(d) -> tuple[pd.DataFrame, str]:
    """The statistics rows of the report's metric, and where they came from."""
    from .report import _read

    path = d.root / "statistics.parquet"
    if path.exists():
        st = _read(path, STATISTICS_COLUMNS)
        st = st.astype({c: object for c in ("strategy", "metric", "quantity", "statistic", "task", "order",
                                            "method", "note")})
        st["note"] = st["note"].fillna("")
        if (st["metric"] == d.metric).any():
            return st[(st["metric"] == d.metric) | (st["statistic"] == "difficulty")].reset_index(drop=True), \
                "statistics.parquet"
    summ = d.summary.astype({"strategy": object, "order": object, "metric": object, "run_id": object})
    mat = d.mat.drop(columns=["pos", "is_final"]).astype({"strategy": object, "order": object, "eval_task": object,
                                                           "metric": object, "run_id": object})
    return statistics_table(summ, mat, metrics=[d.metric]), "computed by the report (no statistics.parquet)"


def routing_confusion(root: Path) -> pd.DataFrame | None:
    """Final-step routing summed over runs: strategy, memory_size, true_task, chosen_task, images, share
    (share of the true task's test images routed to the chosen bank). None without routing.parquet."""
    from .report import _read

    path = root / "routing.parquet"
    if not path.exists():
        return None
    r = _read(path, ["run_id", "strategy", "memory_size", "order", "step", "true_task", "chosen_task", "images"])
    if r.empty:
        return None
    r = r.astype({c: object for c in ("strategy", "order", "true_task", "chosen_task")})
    n_tasks = r["order"].str.count(_SEP) + 1
    r = r[r["step"] == n_tasks - 1]
    g = r.groupby(["strategy", "memory_size", "true_task", "chosen_task"])["images"].sum().reset_index()
    g["share"] = g["images"] / g.groupby(["strategy", "memory_size", "true_task"])["images"].transform("sum")
    return g


def _routed_table(d) -> pd.DataFrame | None:
    """Mean over runs of the report's metric on correctly / wrongly routed images at the final step."""
    from .report import _read

    path = d.root / "routed.parquet"
    if not path.exists():
        return None
    r = _read(path, ["strategy", "memory_size", "order", "step", "eval_task", "routed", "metric", "value"],
              metric=d.metric)
    if r.empty:
        return None
    r = r.astype({c: object for c in ("strategy", "order", "routed")})
    r = r[r["step"] == r["order"].str.count(_SEP)]
    return r.groupby(["strategy", "memory_size", "routed"])["value"].mean().unstack("routed")


# ----------------------------------------------------------------------------- figures

def _fig_distribution(d, st: pd.DataFrame, out: Path):
    from .report import _PALETTE, _figure, _save, column_label

    s = d.summ_m
    om = s.groupby(["strategy", "memory_size", "order"], observed=True)["final_mean"].mean()
    combos = [c for c in d.combos if (c[0], c[1]) in om.index.droplevel("order")]
    if not combos:
        return None
    fig = _figure(8.0, 0.55 * len(combos) + 1.6)
    ax = fig.subplots()
    colors = {st_: _PALETTE[i % len(_PALETTE)] for i, st_ in enumerate(d.strategies)}
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
    return _save(fig, out, "order_distribution.png"), (
        f"Each dot is one task order's final mean {d.metric} (averaged over seeds); the diamond and bar are the "
        "mean over orders and its 95 % bootstrap confidence interval; the triangles mark the best and the worst "
        "order. A narrow cloud means the order hardly matters.")


_SLOPE_ROWS = (("final_value", 100.0, "final value", "points per later step"),
               ("forgetting_pct", 1.0, "forgetting", "% forgetting per later step"))


def _fig_slopes(d, st: pd.DataFrame, out: Path):
    from .report import _figure, _save, _short, column_label

    sl = st[st.statistic == "position_slope"]
    rows_q = [q for q in _SLOPE_ROWS if np.isfinite(sl[sl.quantity == q[0]]["value"]).any()]
    if not rows_q:
        return None
    grid = [(m, q) for m in d.fig_memory_sizes for q in rows_q]
    fig = _figure(max(7.0, 3.3 * len(d.fig_strategies) + 0.6), (0.28 * len(d.tasks) + 1.5) * len(grid) + 0.8)
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
                color = "black" if t is None else d.task_color[t]
                if np.isfinite(v):
                    err = [[max(0.0, v - lo)], [max(0.0, hi - v)]] if np.isfinite(lo) else None
                    ax.errorbar([v], [y], xerr=err, fmt="s" if t is None else "o", color=color, ms=5, capsize=3)
                labels.append("all (within task)" if t is None else _short(t))
                y += 1
            ax.axvline(0, color="#888888", lw=1)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{column_label(strat, m)}: {name}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlabel(unit, fontsize=8)
    fig.suptitle(f"Position effect ({d.metric}): slope on the arrival step, 95 % CI", fontsize=11)
    return _save(fig, out, "position_slopes.png"), (
        f"Per task, the slope of its final {d.metric} (in points, 0.01 of the metric) and of its forgetting (%) "
        "against the step at which it arrived, with the 95 % confidence interval (scipy.stats.linregress, t "
        "quantile); the black square pools the tasks (one intercept per task). Positive final value: tasks that "
        "arrive later end higher; negative forgetting: they forget less. For PatchCoreCL a task arriving at step "
        "s of T goes through T - 1 - s re-reductions, so the slope on the number of re-reductions is the same "
        "line mirrored.")


def _fig_routing(d, conf: pd.DataFrame, out: Path):
    from .report import _figure, _heat, _save, _short, column_label

    combos = [c for c in d.combos if ((conf.strategy == c[0]) & (conf.memory_size == c[1])).any()]
    if not combos:
        return None
    ncol = min(len(combos), 2)
    nrow = math.ceil(len(combos) / ncol)
    T = len(d.tasks)
    fig = _figure((0.62 * T + 2.6) * ncol + 0.8, (0.5 * T + 2.0) * nrow + 0.4)
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
        im = _heat(ax, a.to_numpy(float), [_short(t) for t in a.index], [_short(t) for t in a.columns], 0.0, 1.0,
                   f"{column_label(strat, m)}: routing after the last task", xlabel="bank chosen (its task)")
        ax.set_ylabel("true task of the test image", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="share of the task's test images")
    return _save(fig, out, "routing_confusion.png"), (
        "Task identification after the whole stream, summed over all orders and seeds: row = the task a test "
        "image belongs to, column = the task whose bank it was routed to (lowest mean patch distance), as a "
        "share of the row's images. The diagonal is task_id_acc.")


# ----------------------------------------------------------------------------- html

def _cell(v, nd=3, pct=False) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{100 * v:.0f} %" if pct else f"{v:.{nd}f}"


def _p(v) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.2g}" if v >= 0.001 else "< 0.001"


def _summary_frame(d, st: pd.DataFrame) -> pd.DataFrame:
    from .report import column_label

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


def order_section(d, out: Path) -> tuple[str, list[tuple[str, str]]]:
    """HTML of the section and the figures it shows (name, caption); writes order_statistics.csv
    (and routing_final.csv where routing exists) beside index.html."""
    from .report import _e, _html_table, column_label

    st, source = order_statistics(d)
    figs = []
    for f in (_fig_distribution(d, st, out), _fig_slopes(d, st, out)):
        if f:
            figs.append(f)
    conf = routing_confusion(d.root)
    if conf is not None:
        f = _fig_routing(d, conf, out)
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
        '<p class="note">' + _e(
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
        "<ul>" + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>",
    ]
    if len(table):
        parts.append(_html_table(table, lambda r, c: r if c is None else table.loc[r, c]))
    parts.append('<p class="note">All statistics (per task too) in <a href="order_statistics.csv">'
                 "order_statistics.csv</a>.</p>")
    diff = st[st.statistic == "difficulty"]
    if len(diff):
        dd = diff.sort_values("value", ascending=False)
        parts.append('<p class="note">' + _e(
            "Measured single-task difficulty (image AUROC at M=" + str(int(dd.memory_size.iloc[0])) + "), easiest "
            "first, as easy_to_hard orders the tasks: " + ", ".join(f"{t} {v:.3f}" for t, v in zip(dd.task, dd.value))
            + ".") + "</p>")
    routed = _routed_table(d)
    if routed is not None and len(routed):
        routed.index = [column_label(s, m) for s, m in routed.index]
        parts.append(f'<p class="note">Final {_e(d.metric)} on the correctly and wrongly routed test images '
                     "(mean over runs):</p>")
        parts.append(_html_table(routed, lambda r, c: r if c is None else _cell(routed.loc[r, c])))
    if conf is None:
        parts.append('<p class="note">No routing.parquet in this folder: no routing confusion to show.</p>')
    for name, cap in figs:
        parts.append(f'<figure><img src="{_e(name)}" alt="{_e(cap)}"><figcaption>{_e(cap)}</figcaption></figure>')
    return "\n".join(parts), figs
