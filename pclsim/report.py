"""`pclsim report`: a sweep's results folder -> one offline HTML page, PNG figures and the paper's Table 1.

Reads only the interface.md results schema (matrices.parquet, summary.parquet, scenario.yaml,
optional gallery/*.npz). Everything is computed with grouped pandas operations so a full
720-order study renders in seconds. Figures use matplotlib's Agg canvas directly (no pyplot
state), so importing this module never changes the caller's backend.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PclsimError

__all__ = ["build_report", "report_command", "MATRIX_COLUMNS", "SUMMARY_COLUMNS", "TABLE1_ROWS",
           "column_label"]

_LEGACY_COLUMNS = {"trial_id": "run_id"}  # 0.1.0's names (results.LEGACY_COLUMNS)
MATRIX_COLUMNS = ["run_id", "strategy", "memory_size", "seed", "order", "step", "train_task",
                  "eval_task", "metric", "value"]
SUMMARY_COLUMNS = ["run_id", "strategy", "memory_size", "seed", "order", "metric", "final_mean",
                   "avg_forgetting_pct", "bwt", "fwt", "relative_gap", "bank_mb", "arch_mb"]
TABLE1_METRICS = ["image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_pr", "pixel_aupro"]
TABLE1_ROWS = TABLE1_METRICS + ["bank_mb", "relative_gap", "avg_forgetting_pct"]
_ROW_NAMES = {"image_auroc": "image AUROC", "image_f1": "image F1", "pixel_auroc": "pixel AUROC",
              "pixel_f1": "pixel F1", "pixel_pr": "pixel PR", "pixel_aupro": "pixel AU-PRO",
              "bank_mb": "bank MB", "relative_gap": "relative gap", "avg_forgetting_pct": "avg forgetting %"}
_STRATEGY_NAMES = {"multi_model": "Multi-Model", "joint": "Joint", "finetune": "Fine-Tuning", "patchcore_cl": "CL"}
# Okabe-Ito: distinguishable under the common colour-vision deficiencies
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_DPI = 110
_GALLERY_MAX = 24
_SEP = " > "


def column_label(strategy: str, memory_size: int) -> str:
    """Table 1 column name, e.g. 'CL M=1000', 'Joint M=3000'."""
    return f"{_STRATEGY_NAMES.get(strategy, strategy)} M={int(memory_size)}"


def report_command(results_dir: str, metric: str = "image_f1") -> None:
    """CLI hook: build the report and print the index.html path."""
    print(build_report(results_dir, metric=metric))


# ----------------------------------------------------------------------------- reading

def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _dataset(path: Path):
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not path.exists():
        raise PclsimError(f"{path}: not found")
    try:
        # a file or a folder of part files; files starting with '.' or '_' (atomic-write temporaries) are skipped
        d = ds.dataset(str(path), format="parquet")
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PclsimError(f"{path}: cannot read as Parquet: {_first_line(e)}") from None
    if not d.files:
        raise PclsimError(f"{path}: holds no Parquet files")
    return d


def _read(path: Path, columns: list[str], optional: tuple[str, ...] = (), metric: str | None = None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.dataset as ds

    d = _dataset(path)
    names = set(d.schema.names)
    # a 0.1.0 folder names the run column trial_id: read it under its new name
    legacy = {new: old for old, new in _LEGACY_COLUMNS.items() if new not in names and old in names}
    missing = [c for c in columns if c not in names and c not in legacy]
    if missing:
        raise PclsimError(f"{path}: missing column(s) {', '.join(missing)}")
    cols = [legacy.get(c, c) for c in columns] + [c for c in optional if c in names]
    try:
        table = d.to_table(columns=cols, filter=None if metric is None else ds.field("metric") == metric)
        df = table.to_pandas(strings_to_categorical=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PclsimError(f"{path}: cannot read as Parquet: {_first_line(e)}") from None
    df = df.rename(columns={old: new for new, old in legacy.items()})
    for c in cols:
        if c in ("memory_size", "seed", "step", "value", "final_mean", "avg_forgetting_pct", "bwt", "fwt",
                 "relative_gap", "bank_mb", "arch_mb") and not pd.api.types.is_numeric_dtype(df[c]):
            raise PclsimError(f"{path}: column {c} is not numeric")
    return df


def _available_metrics(path: Path) -> list[str]:
    try:
        return sorted(set(_dataset(path).to_table(columns=["metric"]).column("metric").to_pylist()) - {None})
    except Exception:  # only used to word an error message
        return []


def _read_scenario(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}
    try:
        sc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise PclsimError(f"{path}: cannot read: {_first_line(e)}") from None
    return sc if isinstance(sc, dict) else {}


def _scenario_first_order(sc: dict) -> tuple[str, ...] | None:
    try:
        from .scenario import _orders

        return tuple(_orders(sc)[0])
    except Exception:  # an older or hand-written scenario.yaml: fall back to the data
        return None


# ----------------------------------------------------------------------------- preparing

class _Data:
    """The tables a report needs, with positions and the study's shape worked out once."""

    def __init__(self, root: Path, metric: str):
        self.root = root
        self.metric = metric
        self.scenario = _read_scenario(root / "scenario.yaml")
        summ_path, mat_path = root / "summary.parquet", root / "matrices.parquet"
        self.summary = _read(summ_path, SUMMARY_COLUMNS, optional=("avg_forgetting_paper_pct", "max_forgetting"))
        if self.summary.empty:
            raise PclsimError(f"{summ_path}: has no rows")
        mat = _read(mat_path, MATRIX_COLUMNS, metric=metric)
        if mat.empty:
            avail = _available_metrics(mat_path)
            raise PclsimError(f"{mat_path}: no rows for metric '{metric}'"
                              + (f" (available: {', '.join(avail)})" if avail else ""))
        self.summ_m = self.summary[self.summary["metric"] == metric]
        if self.summ_m.empty:
            raise PclsimError(f"{summ_path}: no rows for metric '{metric}'")

        orders = list(mat["order"].cat.categories)
        tasks_cat = list(mat["eval_task"].cat.categories)
        tix = {t: i for i, t in enumerate(tasks_cat)}
        lut = np.full((len(orders), len(tasks_cat)), -1, np.int64)
        n_tasks = np.zeros(len(orders), np.int64)
        for k, o in enumerate(orders):
            names = o.split(_SEP)
            n_tasks[k] = len(names)
            for p, t in enumerate(names):
                if t in tix:
                    lut[k, tix[t]] = p
        oc = mat["order"].cat.codes.to_numpy()
        pos = lut[oc, mat["eval_task"].cat.codes.to_numpy()]
        if (pos < 0).any():
            bad = mat.iloc[int(np.flatnonzero(pos < 0)[0])]
            raise PclsimError(f"{mat_path}: eval_task {bad['eval_task']!r} is not in its order {bad['order']!r}")
        mat["pos"] = pos
        mat["is_final"] = mat["step"].to_numpy() == n_tasks[oc] - 1
        self.mat = mat

        self.combos = self._combos()
        self.strategies = list(dict.fromkeys(s for s, _ in self.combos))
        self.memory_sizes = sorted({m for _, m in self.combos})
        # figures show the (strategy, memory size) pairs that have the chosen metric (task_id_acc: CL only)
        have = set(map(tuple, mat[["strategy", "memory_size"]].drop_duplicates().itertuples(index=False)))
        have = {(str(s), int(m)) for s, m in have}
        self.fig_combos = [c for c in self.combos if c in have]
        self.fig_strategies = list(dict.fromkeys(s for s, _ in self.fig_combos))
        self.fig_memory_sizes = sorted({m for _, m in self.fig_combos})
        self.n_orders = int(self.summary["order"].nunique())
        self.n_runs = int(self.summary["run_id"].nunique())
        self.n_seeds = int(self.summary["seed"].nunique())
        self.first_order = self._first_order(orders)
        # tasks in the scenario's order where known: colours and table rows follow it
        sc_tasks = (self.scenario.get("dataset") or {}).get("tasks") or []
        seen = {t for o in orders for t in o.split(_SEP)}  # pixel metrics skip unmasked tasks: use the orders
        self.tasks = [t for t in sc_tasks if t in seen] + [t for t in self.first_order if t not in sc_tasks]
        self.tasks += sorted(seen - set(self.tasks))
        self.task_color = {t: _PALETTE[i % len(_PALETTE)] for i, t in enumerate(self.tasks)}
        self.task_marker = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(self.tasks)}

    def _combos(self) -> list[tuple[str, int]]:
        pairs = set(map(tuple, self.summary[["strategy", "memory_size"]].drop_duplicates().itertuples(index=False)))
        pairs |= set(map(tuple, self.mat[["strategy", "memory_size"]].drop_duplicates().itertuples(index=False)))
        rank = {s: i for i, s in enumerate(_STRATEGY_NAMES)}
        return sorted(((str(s), int(m)) for s, m in pairs), key=lambda p: (rank.get(p[0], 99), p[0], p[1]))

    def _first_order(self, orders: list[str]) -> tuple[str, ...]:
        want = _scenario_first_order(self.scenario)
        if want is not None and _SEP.join(want) in orders:
            return want
        # no usable scenario: the order of the data's first row
        return tuple(str(self.mat["order"].iloc[0]).split(_SEP))


# ----------------------------------------------------------------------------- tables

def _table1(d: _Data) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, std, n) frames: rows TABLE1_ROWS, columns one per (strategy, memory size)."""
    s = d.summary
    keys = ["strategy", "memory_size"]
    rows = {}
    g = s[s["metric"].isin(TABLE1_METRICS)].groupby(keys + ["metric"], observed=True)["final_mean"]
    per_metric = g.agg(["mean", "std", "count"])
    for m in TABLE1_METRICS:
        if m in per_metric.index.get_level_values("metric"):
            rows[m] = per_metric.xs(m, level="metric")
    # bank size is per run; take it from the chosen metric's rows (one per run)
    for col in ("bank_mb", "relative_gap", "avg_forgetting_pct"):
        rows[col] = d.summ_m.groupby(keys, observed=True)[col].agg(["mean", "std", "count"])
    labels = [column_label(st, m) for st, m in d.combos]
    out = {}
    for stat in ("mean", "std", "count"):
        frame = pd.DataFrame(np.nan, index=TABLE1_ROWS, columns=labels)
        for r, agg in rows.items():
            for (st, m), lab in zip(d.combos, labels):
                if (st, m) in agg.index:
                    frame.loc[r, lab] = agg.loc[(st, m), stat]
        out[stat] = frame
    out["count"] = out["count"].fillna(0).astype(int)
    out["std"] = out["std"].where(out["count"] > 1)
    return out["mean"], out["std"], out["count"]


def _per_task(d: _Data) -> pd.DataFrame:
    fin = d.mat[d.mat["is_final"]]
    g = fin.groupby(["eval_task", "strategy", "memory_size"], observed=True)["value"].mean()
    frame = pd.DataFrame(np.nan, index=d.tasks, columns=[column_label(s, m) for s, m in d.combos])
    for (t, s, m), v in g.items():
        frame.loc[str(t), column_label(str(s), int(m))] = v
    frame.index.name = "task"
    return frame


def _fmt(row: str, v: float, sd: float = float("nan")) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    nd = 2 if row in ("bank_mb", "avg_forgetting_pct") else 3
    s = f"{v:.{nd}f}"
    if sd is not None and np.isfinite(sd) and not (row == "bank_mb" and sd < 1e-9):
        s += f" ± {sd:.{nd}f}"
    return s


def _markdown(mean: pd.DataFrame, std: pd.DataFrame, metric: str) -> str:
    head = ["", *mean.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in mean.index:
        name = _row_name(r, metric)
        lines.append("| " + " | ".join([name] + [_fmt(r, mean.loc[r, c], std.loc[r, c]) for c in mean.columns]) + " |")
    return "\n".join(lines) + "\n"


def _row_name(r: str, metric: str) -> str:
    name = _ROW_NAMES.get(r, r)
    return f"{name} ({metric})" if r in ("relative_gap", "avg_forgetting_pct") else name


# ----------------------------------------------------------------------------- figures

def _figure(w: float, h: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=_DPI, facecolor="white")
    fig.clf()  # release the artists now; the figure holds no pyplot reference
    return name


def _short(t: str, n: int = 16) -> str:
    t = t[:-3] if t.endswith("_AD") else t
    return t if len(t) <= n else t[: n - 1] + "…"


def _heat(ax, a: np.ndarray, rows: list[str], cols: list[str], vmin: float, vmax: float, title: str,
          xlabel: str = "evaluated task"):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
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


def _fig_heatmaps(d: _Data, out: Path) -> list[tuple[str, str]]:
    mat = d.mat
    first = _SEP.join(d.first_order)
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

    row_labels = [f"{i + 1}: {_short(t)}" for i, t in enumerate(d.first_order)]
    col_labels = [_short(t) for t in d.first_order]
    for m in d.fig_memory_sizes:
        strats = [s for s, mm in d.fig_combos if mm == m]
        ncol = 2 if many else 1
        cell = 0.62 * T + 2.3
        fig = _figure(cell * ncol + 1.0, (0.5 * T + 1.9) * len(strats) + 0.4)
        axes = np.atleast_2d(fig.subplots(len(strats), ncol, squeeze=False))
        im = None
        for r, s in enumerate(strats):
            lab = column_label(s, m)
            im = _heat(axes[r, 0], grid(mean_first, s, m, T), row_labels, col_labels, vmin, vmax,
                       f"{lab}: first order" + (" (mean over seeds)" if d.n_seeds > 1 else ""))
            if many:
                n_o = int(d.summary.loc[(d.summary["strategy"] == s) & (d.summary["memory_size"] == m),
                                        "order"].nunique())
                _heat(axes[r, 1], grid(mean_all, s, m, T), [f"step {i + 1}" for i in range(T)],
                      [f"position {j + 1}" for j in range(T)], vmin, vmax,
                      f"{lab}: mean over {n_o} orders\n(columns: task's position in its order)",
                      xlabel="position of the evaluated task in its order")
        fig.colorbar(im, ax=axes, shrink=0.6, label=d.metric)
        fig.suptitle(f"Accuracy matrices, {d.metric}, M={m}", fontsize=11)
        name = _save(fig, out, f"heatmaps_M{m}.png")
        cap = (f"Accuracy matrices ({d.metric}) at M={m}: row = after training step, column = evaluated task. "
               f"Left: the first order of the scenario ({' > '.join(d.first_order)}). ")
        if many:
            cap += ("Right: the mean over all orders, indexed by step and by the evaluated task's position in "
                    "its order (so the diagonal is always the task just trained).")
        figs.append((name, cap))
    return figs


def _grid_axes(d: _Data, fig):
    axes = fig.subplots(len(d.fig_memory_sizes), len(d.fig_strategies), squeeze=False, sharey=True)
    have = set(d.fig_combos)
    for i, m in enumerate(d.fig_memory_sizes):
        for j, s in enumerate(d.fig_strategies):
            if (s, m) not in have:
                axes[i, j].set_axis_off()
    return axes


def _fig_curves(d: _Data, out: Path) -> tuple[str, str]:
    first = _SEP.join(d.first_order)
    T = len(d.first_order)
    sub = d.mat[d.mat["order"] == first]
    g = sub.groupby(["strategy", "memory_size", "eval_task", "step"], observed=True)["value"].mean()
    fig = _figure(3.3 * len(d.fig_strategies) + 0.6, 2.9 * len(d.fig_memory_sizes) + 1.1)
    axes = _grid_axes(d, fig)
    steps = np.arange(T)
    for i, m in enumerate(d.fig_memory_sizes):
        for j, s in enumerate(d.fig_strategies):
            ax = axes[i, j]
            if not ax.axison:
                continue
            for p, t in enumerate(d.first_order):
                try:
                    y = g.xs((s, m, t), level=("strategy", "memory_size", "eval_task")).reindex(steps).to_numpy()
                except KeyError:
                    continue
                ax.plot(steps, y, color=d.task_color[t], marker=d.task_marker[t], ms=4, lw=1.6, label=t)
                if np.isfinite(y[p]):
                    ax.plot([p], [y[p]], marker=d.task_marker[t], ms=9, mfc="none", mec=d.task_color[t], mew=1.5)
            ax.set_title(column_label(s, m), fontsize=10)
            ax.set_xticks(steps, [f"{k + 1}" for k in steps], fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(d.fig_memory_sizes) - 1:
                ax.set_xlabel("after training step", fontsize=9)
            if j == 0:
                ax.set_ylabel(d.metric, fontsize=9)
    from matplotlib.lines import Line2D

    plotted = set(sub["eval_task"].astype(str).unique())
    handles = [Line2D([], [], color=d.task_color[t], marker=d.task_marker[t],
                      label=f"{k + 1}: {t}" + ("" if t in plotted else " (no values)"))
               for k, t in enumerate(d.first_order)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8,
               title="task (number = step it is trained)", title_fontsize=8)
    fig.suptitle(f"Learning curves, {d.metric}, first order", fontsize=11)
    name = _save(fig, out, "learning_curves.png")
    return name, (f"Each task's {d.metric} after every training step of the first order "
                  f"({' > '.join(d.first_order)}); the open marker is the step the task is trained. "
                  "Before that step the value is what an untrained model scores on the task.")


def _fig_robustness(d: _Data, out: Path) -> tuple[str, str]:
    s = d.summ_m
    labels = [column_label(st, m) for st, m in d.fig_combos]
    groups = {k: v for k, v in s.groupby(["strategy", "memory_size"], observed=True)}
    fig = _figure(max(7.0, 0.9 * len(labels) * 2 + 2), 4.6)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    strat_color = {st: _PALETTE[i % len(_PALETTE)] for i, st in enumerate(d.fig_strategies)}
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
    name = _save(fig, out, "order_robustness.png")
    return name, (f"Distribution over task orders of each run's final mean {d.metric} (left) and average "
                  "forgetting (right), per strategy and memory size. Boxes: quartiles; whiskers: 1.5 IQR.")


def _fig_position(d: _Data, out: Path) -> tuple[str, str]:
    fin = d.mat[d.mat["is_final"]]
    g = fin.groupby(["strategy", "memory_size", "eval_task", "pos"], observed=True)["value"].mean()
    T = max(len(d.first_order), int(fin["pos"].max()) + 1)
    fig = _figure(3.3 * len(d.fig_strategies) + 0.6, 2.9 * len(d.fig_memory_sizes) + 1.1)
    axes = _grid_axes(d, fig)
    x = np.arange(T)
    for i, m in enumerate(d.fig_memory_sizes):
        for j, s in enumerate(d.fig_strategies):
            ax = axes[i, j]
            if not ax.axison:
                continue
            for t in d.tasks:
                try:
                    y = g.xs((s, m, t), level=("strategy", "memory_size", "eval_task")).reindex(x).to_numpy()
                except KeyError:
                    continue
                ax.plot(x, y, color=d.task_color[t], marker=d.task_marker[t], ms=5, lw=1.4, label=t)
            ax.set_title(column_label(s, m), fontsize=10)
            ax.set_xticks(x, [str(k + 1) for k in x], fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(d.fig_memory_sizes) - 1:
                ax.set_xlabel("task's position in the order", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"final {d.metric}", fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=d.task_color[t], marker=d.task_marker[t], label=t) for t in d.tasks]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8)
    fig.suptitle(f"Effect of a task's position on its final {d.metric} (mean over orders with the task there)",
                 fontsize=11)
    name = _save(fig, out, "position_effect.png")
    return name, (f"Mean final {d.metric} of each task (after the whole stream) by the position at which the task "
                  "was trained, over all orders that put it there. A flat line means the order does not matter.")


def _fig_memory(d: _Data, out: Path) -> tuple[str, str] | None:
    s = d.summ_m
    agg = s.groupby(["strategy", "memory_size"], observed=True).agg(
        mb=("bank_mb", "mean"), y=("final_mean", "mean"), sd=("final_mean", "std"), n=("final_mean", "count"))
    agg = agg[np.isfinite(agg["mb"]) & (agg["mb"] > 0) & np.isfinite(agg["y"])]
    if agg.empty:
        return None
    from matplotlib.ticker import FuncFormatter

    fig = _figure(7.5, 5.0)
    ax = fig.subplots()
    strat_color = {st: _PALETTE[i % len(_PALETTE)] for i, st in enumerate(d.fig_strategies)}
    strat_marker = {st: _MARKERS[i % len(_MARKERS)] for i, st in enumerate(d.fig_strategies)}
    seen = set()
    for (st, m), r in agg.iterrows():  # one point per (strategy, memory size): a handful
        st = str(st)
        ax.errorbar(r["mb"], r["y"], yerr=r["sd"] if r["n"] > 1 and np.isfinite(r["sd"]) else None,
                    fmt=strat_marker[st], color=strat_color[st], ms=8, capsize=3,
                    label=_STRATEGY_NAMES.get(st, st) if st not in seen else None)
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
    name = _save(fig, out, "memory_vs_accuracy.png")
    return name, ("Final mean accuracy against the size of the memory bank(s) after the whole stream, "
                  "for every strategy and memory size.")


def _load_gallery(folder: Path) -> tuple[list[dict], list[str]]:
    items, bad = [], []
    for p in sorted(folder.glob("*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                img = np.asarray(z["image"])
                amap = np.asarray(z["amap"], dtype=np.float32)
                mask = np.asarray(z["mask"], dtype=bool) if "mask" in z.files else np.zeros(amap.shape, bool)
                it = {"name": p.name, "image": img, "amap": amap, "mask": mask,
                      "task": str(z["task"]) if "task" in z.files else p.stem,
                      "score": float(z["score"]) if "score" in z.files else float("nan"),
                      "label": int(z["label"]) if "label" in z.files else -1}
            if img.ndim == 2:
                it["image"] = np.repeat(img[..., None], 3, axis=2)
            if it["image"].ndim != 3 or amap.ndim != 2 or amap.shape != it["image"].shape[:2]:
                raise ValueError("image/amap shapes disagree")
            if it["mask"].shape != amap.shape:
                it["mask"] = np.zeros(amap.shape, bool)
            items.append(it)
        except Exception as e:  # a broken gallery file must not cost the whole report
            bad.append(f"{p.name} ({_first_line(e)})")
    return items, bad


def _strip(it: dict, lo: float, hi: float, cmap) -> np.ndarray:
    """image | mask | map overlay side by side as one RGB array: one axes per sample keeps drawing cheap."""
    img = it["image"]
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    img = img[..., :3].astype(np.float32)
    h, w = img.shape[:2]
    mask = np.where(it["mask"][..., None], 255.0, 0.0) * np.ones(3, np.float32) if it["mask"].any() \
        else np.full((h, w, 3), 230.0, np.float32)
    norm = np.clip((np.nan_to_num(it["amap"], nan=lo) - lo) / (hi - lo), 0, 1)
    heat = cmap(norm)[..., :3].astype(np.float32) * 255.0
    overlay = 0.5 * img + 0.5 * heat
    gap = np.full((h, max(2, w // 40), 3), 255.0, np.float32)
    return np.concatenate([img, gap, mask, gap, overlay], axis=1).astype(np.uint8)


def _fig_gallery(d: _Data, out: Path) -> tuple[tuple[str, str] | None, list[str], int]:
    import matplotlib

    folder = d.root / "gallery"
    if not folder.is_dir():
        return None, [], 0
    items, bad = _load_gallery(folder)
    if not items:
        return None, bad, 0
    total = len(items)
    # keep every task represented when capping
    by_task: dict[str, list[dict]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    order = [t for t in d.tasks if t in by_task] + sorted(set(by_task) - set(d.tasks))
    per = max(1, _GALLERY_MAX // len(order))
    shown = [it for t in order for it in by_task[t][:per]][:_GALLERY_MAX]
    lim = {}
    for t, its in by_task.items():  # one colour scale per task: scores compare within a task
        v = np.concatenate([i["amap"].ravel() for i in its])
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        lim[t] = (lo, hi if hi > lo else lo + 1.0)
    cmap = matplotlib.colormaps["inferno"]
    pairs = 2 if len(shown) > 1 else 1
    nrow = math.ceil(len(shown) / pairs)
    fig = _figure(6.6 * pairs, 2.45 * nrow + 0.6, layout=None)
    axes = fig.subplots(nrow, pairs, squeeze=False)
    height = 2.45 * nrow + 0.6
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, wspace=0.04, hspace=0.22)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k, it in enumerate(shown):
        ax = axes.ravel()[k]
        ax.imshow(_strip(it, *lim[it["task"]], cmap), interpolation="nearest")
        lab = {1: "anomalous", 0: "normal"}.get(it["label"], "label ?")
        ax.set_title(f"{it['task']} ({lab}), score {it['score']:.3g}", fontsize=8.5)
        if not it["mask"].any():
            h, w = it["mask"].shape
            ax.text(w * 1.5 + max(2, w // 40), h / 2, "no mask", ha="center", va="center", fontsize=8)
    fig.suptitle("Anomaly maps: image | ground-truth mask | map overlay (colour scale per task)", fontsize=10,
                 y=1 - 0.2 / height)
    name = _save(fig, out, "gallery.png")
    cap = (f"Anomaly maps stored by the sweep's --gallery option: {len(shown)} of {total} shown. Each panel: "
           "the test image, its ground-truth mask (grey: none) and the anomaly map over the image; map colours "
           "are scaled per task.")
    return (name, cap), bad, total


# ----------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right;white-space:nowrap}th{background:#eef2f7}
td:first-child,th:first-child{text-align:left}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444;margin-top:.3em}.meta td{text-align:left}.note{font-size:.9em;color:#333}
code{background:#f3f3f3;padding:0 .2em}.wide{overflow-x:auto}.meta td{white-space:normal}
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _html_table(frame: pd.DataFrame, cell) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{_e(c)}</th>" for c in frame.columns) + "</tr>"
    body = []
    for r in frame.index:
        body.append("<tr><th>" + _e(cell(r, None)) + "</th>"
                    + "".join(f"<td>{_e(cell(r, c))}</td>" for c in frame.columns) + "</tr>")
    return ('<div class="wide"><table>\n<thead>' + head + "</thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table></div>")


def _page(d: _Data, mean, std, per_task, figs, gallery_note: str, order_html: str = "") -> str:
    sc = d.scenario
    ds = sc.get("dataset") or {}
    model = sc.get("model") or {}
    meta = [("results folder", str(d.root)), ("scenario", sc.get("name", "(scenario.yaml not found)")),
            ("pclsim version", sc.get("pclsim_version", "?")),
            ("data set", f"{ds.get('kind', '?')}, protocol {ds.get('protocol', '?')}, resize {ds.get('resize', 'crop')}"),
            ("pixel metrics", f"mask-less tasks: {(sc.get('evaluation') or {}).get('maskless_pixels', 'skip')}"),
            ("backbone", f"{model.get('backbone', '?')} (reweighting {model.get('reweighting', '?')})"),
            ("metric of the figures", d.metric),
            ("tasks", ", ".join(d.tasks)),
            ("orders", f"{d.n_orders} (first: {' > '.join(d.first_order)})"),
            ("strategies", ", ".join(d.strategies)),
            ("memory sizes", ", ".join(map(str, d.memory_sizes))),
            ("seeds", str(d.n_seeds)), ("runs", str(d.n_runs))]
    if sc.get("coreset"):
        meta.append(("coreset", ", ".join(f"{k}: {v}" for k, v in sc["coreset"].items())))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pclsim report: {_e(sc.get('name', d.root.name))}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>pclsim report: {_e(sc.get('name', d.root.name))}</h1>",
        f"<p>Metric shown in the figures: <b>{_e(d.metric)}</b>. Study: <b>{d.n_orders}</b> task order(s), "
        f"<b>{d.n_runs}</b> runs, {len(d.strategies)} strategies, {len(d.memory_sizes)} memory size(s), "
        f"{d.n_seeds} seed(s).</p>",
        '<table class="meta"><tbody>' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta)
        + "</tbody></table>",
        "<h2>Table 1</h2>",
        "<p class=\"note\">The layout of the paper's Table 1. Metric rows: final mean over tasks (after the whole "
        "stream) of each metric, then the mean over orders and seeds"
        + (" &plusmn; the standard deviation over runs" if (d.n_runs > len(d.combos)) else "")
        + f". Bank MB: decimal MB of float32 vectors stored after the last task. Relative gap and average "
        f"forgetting are computed on <b>{_e(d.metric)}</b>. Pixel metrics are averaged over the tasks that "
        "have masks; &ldquo;&ndash;&rdquo; marks a value that does not exist (e.g. the gap of joint to itself). "
        "Also written as <a href=\"table1.csv\">table1.csv</a> (means), <a href=\"table1_std.csv\">table1_std.csv"
        "</a> and <a href=\"table1.md\">table1.md</a>.</p>",
        _html_table(mean, lambda r, c: _row_name(r, d.metric) if c is None else _fmt(r, mean.loc[r, c],
                                                                                       std.loc[r, c])),
        f"<h2>Final {_e(d.metric)} per task</h2>",
        "<p class=\"note\">Each task's value after the whole stream, mean over orders and seeds. "
        "Also in <a href=\"per_task_final.csv\">per_task_final.csv</a>.</p>",
        _html_table(per_task, lambda r, c: r if c is None else _fmt("", per_task.loc[r, c])),
        order_html,
        "<h2>Figures</h2>",
    ]
    for name, cap in figs:
        parts.append(f'<figure><img src="{_e(name)}" alt="{_e(cap)}"><figcaption>{_e(cap)}</figcaption></figure>')
    if gallery_note:
        parts.append(f'<p class="note">{_e(gallery_note)}</p>')
    parts += [
        "<h2>Notes</h2>",
        "<p class=\"note\">Average forgetting (percent) of a run with T tasks and accuracy matrix a[t][j] "
        "(row: after training step t; column: the task trained at step j): 100/(T&minus;1) &middot; "
        "&sum;<sub>i&lt;T&minus;1</sub> (a[i][i] &minus; a[T&minus;1][i]) / a[i][i], i.e. the relative drop of each "
        "task from just after it was learned to the end of the stream. The authors' script divided by 9 "
        "whatever T; that paper-compatible value is in the summary's <code>avg_forgetting_paper_pct</code> "
        "column where the sweep wrote it. Relative gap: final mean of joint minus final mean of the method, "
        "same seed, order and memory size.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the page is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- entry point

def build_report(results_dir, metric: str = "image_f1", out_dir=None) -> Path:
    """Write index.html, PNG figures and Table 1 (csv, md) for a sweep's results folder.

    Returns the path of index.html (default RESULTS_DIR/report/index.html).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise PclsimError(f"{root}: results folder not found")
    d = _Data(root, metric)
    out = Path(out_dir) if out_dir is not None else root / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise PclsimError(f"{out}: cannot write the report: {_first_line(e)}") from None

    mean, std, _n = _table1(d)
    per_task = _per_task(d)
    mean.index.name = "row"
    std.index.name = "row"
    try:
        mean.to_csv(out / "table1.csv", float_format="%.6g")
        std.to_csv(out / "table1_std.csv", float_format="%.6g")
        per_task.to_csv(out / "per_task_final.csv", float_format="%.6g")
        _write_text(out / "table1.md", _markdown(mean, std, metric))
    except OSError as e:
        raise PclsimError(f"{out}: cannot write the report: {_first_line(e)}") from None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # means over all-NaN cells (tasks without masks)
        figs = list(_fig_heatmaps(d, out))
        figs.append(_fig_curves(d, out))
        figs.append(_fig_robustness(d, out))
        figs.append(_fig_position(d, out))
        mem = _fig_memory(d, out)
        if mem:
            figs.append(mem)
        gal, bad, total = _fig_gallery(d, out)
    if gal:
        figs.append(gal)
    note = f"Gallery files that could not be read and were skipped: {', '.join(bad)}." if bad else ""
    from .report_order import order_section

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        order_html, _ = order_section(d, out)  # "Does the order matter?" with its own figures
    index = out / "index.html"
    _write_text(index, _page(d, mean, std, per_task, figs, note, order_html))
    return index
