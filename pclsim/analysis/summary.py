"""The summary table: continual metrics of every run's T x T matrices (method.md section 6), and chance levels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.metric_registry import chance_of, get_metric
from ..results.schema import ORDER_SEPARATOR, SUMMARY_COLUMNS, legacy_renames
from . import continual as metric_fns

__all__ = ["build_summary", "chance_level", "summarise", "QUANTITIES"]

# The continual quantities of one (run, metric) in summary.parquet (relative_gap is added across runs).
QUANTITIES = ("final_mean", "avg_forgetting_pct", "avg_forgetting_paper_pct", "max_forgetting", "bwt", "fwt")


def summarise(matrix: np.ndarray, baseline: np.ndarray, metric: str, tasks=None) -> dict:
    """The continual quantities of one T x T matrix (method.md section 6), total: never raises on a matrix
    the engine writes.

    matrix: (T, T) float, NaN where a task has no value (pixel metrics of mask-less tasks); baseline:
    (T,) chance levels for FWT (NaN where unknown); metric: its registry name (a quantity the registry
    marks as not meaningful for it, `Metric.not_summarised`, is null with the registry's reason).
    tasks: the task names in matrix order, to name a task without values in the reason.
    Returns {quantity: float or NaN for each of QUANTITIES, "undefined": "quantity: reason; ..." or None}.
    final_mean is the mean over the tasks with a value after the last step (null when none has one);
    the others are null, with the cell that makes them undefined, where the matrix does not define
    them (a needed NaN cell; relative forgetting from a cell that is 0).
    """
    try:
        skip = get_metric(metric).not_summarised
    except KeyError:
        skip = {}
    last = matrix[-1][np.isfinite(matrix[-1])]
    out, why = {"final_mean": float(last.mean()) if last.size else np.nan}, {}
    if not last.size:
        why["final_mean"] = "no task has a value after the last step"
    compute = {
        "avg_forgetting_pct": lambda: metric_fns.average_forgetting(matrix),
        "avg_forgetting_paper_pct": lambda: metric_fns.average_forgetting(matrix, paper_compatible=True),
        "max_forgetting": lambda: metric_fns.max_forgetting(matrix),
        "bwt": lambda: metric_fns.bwt(matrix),
        "fwt": lambda: metric_fns.fwt(matrix, baseline),
    }
    partial = None
    if not np.isfinite(matrix).all():
        empty = [j for j in range(matrix.shape[1]) if not np.isfinite(matrix[:, j]).any()]
        names = [str(tasks[j]) if tasks is not None else f"column {j}" for j in empty]
        partial = (f"no values for {', '.join(names)} (a pixel metric of a task without masks): the order-dependent "
                   "quantities need every task" if names else
                   "cells without a value: the order-dependent quantities need every cell they use")
    for q, fn in compute.items():
        if q in skip or partial:
            out[q], why[q] = np.nan, f"not defined for {metric}: {skip[q]}" if q in skip else partial
            continue
        try:
            out[q] = fn()
        except metric_fns.Undefined as e:
            out[q], why[q] = np.nan, str(e)
    out["undefined"] = "; ".join(f"{q}: {r}" for q, r in why.items()) or None
    return out


def chance_level(metric: str, labels: np.ndarray | None = None, masks: np.ndarray | None = None,
                 n_tasks: int = 1) -> float:
    """The value a scorer without information gets: the FWT baseline of a task never trained on.

    The level comes from the metric registry (`pclsim.core.metric_registry`, which gives each formula
    and its source). labels: the task's test labels (or their prevalence as a length-1 array),
    used by image metrics; masks: its masks (or the pixel prevalence), used by pixel metrics;
    n_tasks: T, used by task_id_acc. Raises KeyError for an unregistered metric and ValueError
    when the metric's level needs labels or masks that are not given.
    """
    kind = get_metric(metric).kind
    source = {"image": labels, "pixel": masks}.get(kind)
    prevalence = None if source is None else float(np.mean(source))
    return chance_of(metric, prevalence, n_tasks)


def build_summary(mat: pd.DataFrame, steps: pd.DataFrame, baselines: dict[tuple[str, str], float],
                  arch_mb: float) -> pd.DataFrame:
    """One row per (run, metric): continual metrics of its T x T matrix; relative gap against joint.

    mat: matrices.parquet rows; steps: steps.parquet rows (either may use 0.1.0's `trial_id`).
    """
    out = []
    mat = mat.rename(columns=legacy_renames(mat.columns))
    steps = steps.rename(columns=legacy_renames(steps.columns))
    final_bank = steps.sort_values("step").groupby("run_id")["bank_mb"].last()
    keys = ["run_id", "strategy", "memory_size", "seed", "order", "metric"]
    # every row's cell (step, position of its task in the run's order), placed in one (groups, T, T)
    # array at once; the per-run loop below then only reads numpy slices
    runs = mat[["run_id", "order"]].drop_duplicates("run_id")
    pos = pd.DataFrame([(rid, t, i) for rid, o in runs.itertuples(index=False)
                        for i, t in enumerate(o.split(ORDER_SEPARATOR))],
                       columns=["run_id", "eval_task", "position"])
    cells = mat[keys + ["step", "eval_task", "value"]].merge(pos, on=["run_id", "eval_task"], how="left")
    grouped = cells.groupby(keys, sort=True)
    gid = grouped.ngroup().to_numpy()
    first = grouped.head(1).index.to_numpy()  # one row per group (cells has a default range index)
    heads = cells.loc[first, keys].assign(_gid=gid[first]).sort_values("_gid")
    t_max = int(max(len(o.split(ORDER_SEPARATOR)) for o in runs["order"]))
    cube = np.full((len(heads), t_max, t_max), np.nan)
    cube[gid, cells["step"].to_numpy(), cells["position"].to_numpy()] = cells["value"].to_numpy()
    base_of: dict = {}
    for key, a in zip(heads[keys].itertuples(index=False, name=None), cube):
        run_id, strategy, msize, seed, order, metric = key
        tasks = order.split(ORDER_SEPARATOR)
        if (order, metric) not in base_of:
            base_of[(order, metric)] = np.array([baselines.get((t, metric), np.nan) for t in tasks])
        row = dict(zip(keys, key))
        row.update(summarise(a[: len(tasks), : len(tasks)], base_of[(order, metric)], metric, tasks))
        row["bank_mb"] = float(final_bank.get(run_id, np.nan))
        row["arch_mb"] = arch_mb
        out.append(row)
    df = pd.DataFrame(out, columns=[c for c in SUMMARY_COLUMNS if c != "relative_gap"])
    joint = df[df.strategy == "joint"].set_index(["memory_size", "seed", "order", "metric"])["final_mean"]
    idx = pd.MultiIndex.from_frame(df[["memory_size", "seed", "order", "metric"]])
    df["relative_gap"] = joint.reindex(idx).to_numpy() - df["final_mean"].to_numpy()
    df.loc[df.strategy == "joint", "relative_gap"] = np.nan
    gap_why = np.where(df.strategy == "joint", "relative_gap: the gap of joint to itself",
                       "relative_gap: no joint run with this memory size, seed and order (or no final mean)")
    missing = df["relative_gap"].isna().to_numpy()
    df["undefined"] = [(f"{u}; {w}" if isinstance(u, str) else w) if m else u
                       for u, w, m in zip(df["undefined"], gap_why, missing)]
    return df[SUMMARY_COLUMNS]
