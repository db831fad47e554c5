"""The report's figures: accuracy matrices, learning curves, order robustness, position effect and
memory against accuracy (PNG, matplotlib's Agg canvas, no pyplot state: importing or running this
never changes the caller's backend). Each fig_* function writes one PNG into `out` and returns its
(file name, caption); colours and names come from `style`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results.schema import ORDER_SEPARATOR
from .reading import ReportData
from .style import (DPI, HEATMAP_CMAP, MISSING_COLOR, STRATEGY_NAMES, colors_for, column_label, markers_for,
                    short_task)

__all__ = ["new_figure", "save_figure", "heatmap", "grid_axes", "fig_heatmaps", "fig_curves", "fig_robustness",
           "fig_position", "fig_memory"]


def new_figure(w: float, h: float, layout: str | None = "constrained"):
    """A matplotlib Figure of w x h inches at style.DPI on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out: Path, name: str) -> str:
    """Write `fig` as out/name (PNG, white background), release its artists and return `name`."""
    fig.savefig(out / name, dpi=DPI, facecolor="white")
    fig.clf()  # release the artists now; the figure holds no pyplot reference
    return name


def heatmap(ax, a: np.ndarray, rows: list[str], cols: list[str], vmin: float, vmax: float, title: str,
            xlabel: str = "evaluated task"):
    """Draw matrix `a` (rows x cols, NaN = no value, drawn grey with a dash) on `ax` with each cell's
    value written in it; colour scale [vmin, vmax]. Returns the image (for a colour bar)."""
    import matplotlib

    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=MISSING_COLOR)
    im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    T = a.shape[0]
    fs = 9 if max(a.shape) <= 6 else 7 if max(a.shape) <= 10 else 5
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            if np.isfinite(v):
                frac = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs,
                        color="black" if frac > 0.55 else "white")
            else:
                ax.text(j, i, "–", ha="center", va="center", fontsize=fs, color="#555555")
    ax.set_xticks(range(a.shape[1]), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(T), rows, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("after training step", fontsize=9)
    ax.set_title(title, fontsize=9.5)
    return im


def fig_heatmaps(d: ReportData, out: Path) -> list[tuple[str, str]]:
    """heatmaps_M<M>.png per memory size: each strategy's T x T matrix of the first order and, with
    several orders, the mean over orders indexed by the evaluated task's position."""
    mat = d.mat
    first = ORDER_SEPARATOR.join(d.first_order)
    T = len(d.first_order)
    keys = ["strategy", "memory_size", "step", "pos"]
    mean_all = mat.groupby(keys, observed=True)["value"].mean()
    mean_first = mat[mat["order"] == first].groupby(keys, observed=True)["value"].mean()
    vals = mat["value"].to_numpy()
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    if not vmax > vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    many = d.n_orders > 1
    figs = []

    def grid(series, s, m, n):
        a = np.full((n, n), np.nan)
        try:
            sub = series.xs((s, m), level=("strategy", "memory_size"))
        except KeyError:
            return a
        st, ps = sub.index.get_level_values("step").to_numpy(), sub.index.get_level_values("pos").to_numpy()
        ok = (st < n) & (ps < n)
        a[st[ok], ps[ok]] = sub.to_numpy()[ok]
        return a

    row_labels = [f"{i + 1}: {short_task(t)}" for i, t in enumerate(d.first_order)]
    col_labels = [short_task(t) for t in d.first_order]
    for m in d.fig_memory_sizes:
        strats = [s for s, mm in d.fig_combos if mm == m]
        ncol = 2 if many else 1
        cell = 0.62 * T + 2.3
        fig = new_figure(cell * ncol + 1.0, (0.5 * T + 1.9) * len(strats) + 0.4)
        axes = np.atleast_2d(fig.subplots(len(strats), ncol, squeeze=False))
        im = None
        for r, s in enumerate(strats):
            lab = column_label(s, m)
            im = heatmap(axes[r, 0], grid(mean_first, s, m, T), row_labels, col_labels, vmin, vmax,
                       f"{lab}: first order" + (" (mean over seeds)" if d.n_seeds > 1 else ""))
            if many:
                n_o = int(d.summary.loc[(d.summary["strategy"] == s) & (d.summary["memory_size"] == m),
                                        "order"].nunique())
                heatmap(axes[r, 1], grid(mean_all, s, m, T), [f"step {i + 1}" for i in range(T)],
                      [f"position {j + 1}" for j in range(T)], vmin, vmax,
                      f"{lab}: mean over {n_o} orders\n(columns: task's position in its order)",
                      xlabel="position of the evaluated task in its order")
        fig.colorbar(im, ax=axes, shrink=0.6, label=d.metric)
        fig.suptitle(f"Accuracy matrices, {d.metric}, M={m}", fontsize=11)
        name = save_figure(fig, out, f"heatmaps_M{m}.png")
        cap = (f"Accuracy matrices ({d.metric}) at M={m}: row = after training step, column = evaluated task. "
               f"Left: the first order of the scenario ({' > '.join(d.first_order)}). ")
        if many:
            cap += ("Right: the mean over all orders, indexed by step and by the evaluated task's position in "
                    "its order (so the diagonal is always the task just trained).")
        figs.append((name, cap))
    return figs


def grid_axes(d: ReportData, fig):
    """(memory sizes x strategies) axes sharing y; pairs without the metric are switched off."""
    axes = fig.subplots(len(d.fig_memory_sizes), len(d.fig_strategies), squeeze=False, sharey=True)
    have = set(d.fig_combos)
    for i, m in enumerate(d.fig_memory_sizes):
        for j, s in enumerate(d.fig_strategies):
            if (s, m) not in have:
                axes[i, j].set_axis_off()
    return axes


def _task_lines(d: ReportData, series, x: np.ndarray, tasks, xlabel: str, ylabel: str, ms: float, lw: float,
                mark_trained: bool = False):
    """A (memory sizes x strategies) grid with one line per task: series[(strategy, M, task, x)].

    mark_trained: circle each task's value at the step it is trained (its position in `tasks`)."""
    colors, markers = colors_for(d.tasks), markers_for(d.tasks)
    fig = new_figure(3.3 * len(d.fig_strategies) + 0.6, 2.9 * len(d.fig_memory_sizes) + 1.1)
    axes = grid_axes(d, fig)
    for i, m in enumerate(d.fig_memory_sizes):
        for j, s in enumerate(d.fig_strategies):
            ax = axes[i, j]
            if not ax.axison:
                continue
            for p, t in enumerate(tasks):
                try:
                    y = series.xs((s, m, t), level=("strategy", "memory_size", "eval_task")).reindex(x).to_numpy()
                except KeyError:
                    continue
                ax.plot(x, y, color=colors[t], marker=markers[t], ms=ms, lw=lw, label=t)
                if mark_trained and np.isfinite(y[p]):
                    ax.plot([p], [y[p]], marker=markers[t], ms=9, mfc="none", mec=colors[t], mew=1.5)
            ax.set_title(column_label(s, m), fontsize=10)
            ax.set_xticks(x, [f"{k + 1}" for k in x], fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(d.fig_memory_sizes) - 1:
                ax.set_xlabel(xlabel, fontsize=9)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=9)
    return fig


def fig_curves(d: ReportData, out: Path) -> tuple[str, str]:
    """learning_curves.png: each task's value after every step of the first order."""
    colors, markers = colors_for(d.tasks), markers_for(d.tasks)
    first = ORDER_SEPARATOR.join(d.first_order)
    T = len(d.first_order)
    sub = d.mat[d.mat["order"] == first]
    g = sub.groupby(["strategy", "memory_size", "eval_task", "step"], observed=True)["value"].mean()
    fig = _task_lines(d, g, np.arange(T), d.first_order, "after training step", d.metric, ms=4, lw=1.6,
                      mark_trained=True)
    from matplotlib.lines import Line2D

    plotted = set(sub["eval_task"].astype(str).unique())
    handles = [Line2D([], [], color=colors[t], marker=markers[t],
                      label=f"{k + 1}: {t}" + ("" if t in plotted else " (no values)"))
               for k, t in enumerate(d.first_order)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8,
               title="task (number = step it is trained)", title_fontsize=8)
    fig.suptitle(f"Learning curves, {d.metric}, first order", fontsize=11)
    name = save_figure(fig, out, "learning_curves.png")
    return name, (f"Each task's {d.metric} after every training step of the first order "
                  f"({' > '.join(d.first_order)}); the open marker is the step the task is trained. "
                  "Before that step the value is what an untrained model scores on the task.")


def fig_robustness(d: ReportData, out: Path) -> tuple[str, str]:
    """order_robustness.png: box plots over orders of the runs' final mean and average forgetting."""
    s = d.summ_m
    labels = [column_label(st, m) for st, m in d.fig_combos]
    groups = {k: v for k, v in s.groupby(["strategy", "memory_size"], observed=True)}
    fig = new_figure(max(7.0, 0.9 * len(labels) * 2 + 2), 4.6)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    strat_color = colors_for(d.fig_strategies)
    rng = np.random.default_rng(0)
    for ax, col, title in ((axes[0], "final_mean", f"final mean {d.metric}"),
                           (axes[1], "avg_forgetting_pct", f"average forgetting % ({d.metric})")):
        data, colors = [], []
        for st, m in d.fig_combos:
            v = groups[(st, m)][col].to_numpy(float) if (st, m) in groups else np.array([])
            data.append(v[np.isfinite(v)])
            colors.append(strat_color[st])
        pos = np.arange(1, len(data) + 1)
        keep = [k for k, v in enumerate(data) if v.size]
        if keep:
            bp = ax.boxplot([data[k] for k in keep], positions=pos[keep], widths=0.6, patch_artist=True,
                            showfliers=False, medianprops={"color": "black"})
            for patch, k in zip(bp["boxes"], keep):
                patch.set_facecolor(colors[k])
                patch.set_alpha(0.55)
            for k in keep:
                v = data[k]
                if v.size <= 60:  # points only where they stay legible
                    ax.scatter(pos[k] + rng.uniform(-0.15, 0.15, v.size), v, s=10, color=colors[k],
                               edgecolor="black", linewidths=0.3, zorder=3)
        ax.set_xticks(pos, labels, rotation=35, ha="right", fontsize=8)
        ax.set_xlim(0.4, len(data) + 0.6)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Robustness to task order: distribution over {d.n_orders} order(s)"
                 + (f" and {d.n_seeds} seeds" if d.n_seeds > 1 else ""), fontsize=11)
    name = save_figure(fig, out, "order_robustness.png")
    return name, (f"Distribution over task orders of each run's final mean {d.metric} (left) and average "
                  "forgetting (right), per strategy and memory size. Boxes: quartiles; whiskers: 1.5 IQR.")


def fig_position(d: ReportData, out: Path) -> tuple[str, str]:
    """position_effect.png: each task's final value by the position it was trained at."""
    colors, markers = colors_for(d.tasks), markers_for(d.tasks)
    fin = d.mat[d.mat["is_final"]]
    g = fin.groupby(["strategy", "memory_size", "eval_task", "pos"], observed=True)["value"].mean()
    T = max(len(d.first_order), int(fin["pos"].max()) + 1)
    fig = _task_lines(d, g, np.arange(T), d.tasks, "task's position in the order", f"final {d.metric}", ms=5, lw=1.4)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[t], marker=markers[t], label=t) for t in d.tasks]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8)
    fig.suptitle(f"Effect of a task's position on its final {d.metric} (mean over orders with the task there)",
                 fontsize=11)
    name = save_figure(fig, out, "position_effect.png")
    return name, (f"Mean final {d.metric} of each task (after the whole stream) by the position at which the task "
                  "was trained, over all orders that put it there. A flat line means the order does not matter.")


def fig_memory(d: ReportData, out: Path) -> tuple[str, str] | None:
    """memory_vs_accuracy.png: final mean against bank MB per (strategy, memory size); None without
    positive bank sizes."""
    s = d.summ_m
    agg = s.groupby(["strategy", "memory_size"], observed=True).agg(
        mb=("bank_mb", "mean"), y=("final_mean", "mean"), sd=("final_mean", "std"), n=("final_mean", "count"))
    agg = agg[np.isfinite(agg["mb"]) & (agg["mb"] > 0) & np.isfinite(agg["y"])]
    if agg.empty:
        return None
    from matplotlib.ticker import FuncFormatter

    fig = new_figure(7.5, 5.0)
    ax = fig.subplots()
    strat_color, strat_marker = colors_for(d.fig_strategies), markers_for(d.fig_strategies)
    seen = set()
    for (st, m), r in agg.iterrows():  # one point per (strategy, memory size): a handful
        st = str(st)
        ax.errorbar(r["mb"], r["y"], yerr=r["sd"] if r["n"] > 1 and np.isfinite(r["sd"]) else None,
                    fmt=strat_marker[st], color=strat_color[st], ms=8, capsize=3,
                    label=STRATEGY_NAMES.get(st, st) if st not in seen else None)
        seen.add(st)
        ax.annotate(f"M={int(m)}", (r["mb"], r["y"]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("bank memory (MB, float32, log scale)", fontsize=9)
    ax.set_ylabel(f"final mean {d.metric}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"Memory vs accuracy ({d.metric}; mean over orders and seeds, bars: std)", fontsize=10)
    name = save_figure(fig, out, "memory_vs_accuracy.png")
    return name, ("Final mean accuracy against the size of the memory bank(s) after the whole stream, "
                  "for every strategy and memory size.")
