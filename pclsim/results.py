"""The results folder: Parquet tables with the interface.md schema, written atomically, and the summary."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics as M
from .protocol import OrderResult
from .scenario import Run

__all__ = ["MATRIX_SCHEMA", "SUMMARY_COLUMNS", "atomic_write_table", "atomic_write_bytes", "rows_table", "steps_table",
           "done_groups", "read_matrices", "build_summary", "chance_level"]

MATRIX_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("strategy", pa.string()), ("memory_size", pa.int64()), ("seed", pa.int64()),
    ("order", pa.string()), ("step", pa.int64()), ("train_task", pa.string()), ("eval_task", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()),
])
STEPS_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("step", pa.int64()), ("train_task", pa.string()),
    ("bank_vectors", pa.int64()), ("bank_mb", pa.float64()), ("seconds", pa.float64()),
])
SUMMARY_COLUMNS = ["trial_id", "strategy", "memory_size", "seed", "order", "metric", "final_mean",
                   "avg_forgetting_pct", "bwt", "fwt", "relative_gap", "bank_mb", "arch_mb",
                   "avg_forgetting_paper_pct", "max_forgetting"]


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write a file so that readers see either nothing or the whole file (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file so that readers see either nothing or the whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rows_table(pairs: list[tuple[Run, OrderResult]]) -> pa.Table:
    cols = {f.name: [] for f in MATRIX_SCHEMA}
    for run, res in pairs:
        for step, train_task, eval_task, metric, value in res.rows():
            cols["trial_id"].append(run.trial_id)
            cols["strategy"].append(run.strategy)
            cols["memory_size"].append(run.memory_size)
            cols["seed"].append(run.seed)
            cols["order"].append(run.order_str)
            cols["step"].append(step)
            cols["train_task"].append(train_task)
            cols["eval_task"].append(eval_task)
            cols["metric"].append(metric)
            cols["value"].append(value)
    return pa.Table.from_pydict(cols, schema=MATRIX_SCHEMA)


def steps_table(pairs: list[tuple[Run, OrderResult]], dim: int) -> pa.Table:
    cols = {f.name: [] for f in STEPS_SCHEMA}
    for run, res in pairs:
        for s, n in enumerate(res.bank_vectors):
            cols["trial_id"].append(run.trial_id)
            cols["step"].append(s)
            cols["train_task"].append(run.order[s])
            cols["bank_vectors"].append(int(n))
            cols["bank_mb"].append(M.memory_mb(n, dim))
            cols["seconds"].append(float(res.seconds[s]) if res.seconds else float("nan"))
    return pa.Table.from_pydict(cols, schema=STEPS_SCHEMA)


def done_groups(out: Path) -> set[str]:
    d = out / "matrices.parquet"
    if not d.is_dir():
        return set()
    return {p.name[len("part-"):-len(".parquet")] for p in d.glob("part-*.parquet")
            if (out / "steps.parquet" / p.name).exists()}


def read_matrices(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "matrices.parquet")


def chance_level(metric: str, labels: np.ndarray | None = None, masks: np.ndarray | None = None,
                 n_tasks: int = 1) -> float:
    """The value a scorer without information gets: the FWT baseline of a task never trained on."""
    if metric.endswith("auroc"):
        return 0.5
    if metric == "pixel_aupro":
        return 0.15  # PRO(fpr) = fpr for random maps; integral to 0.3 divided by 0.3
    if metric == "task_id_acc":
        return 1.0 / n_tasks
    p = float(np.mean(masks)) if metric.startswith("pixel") else float(np.mean(labels))
    if metric.endswith("f1"):
        return 2 * p / (1 + p)
    return p  # precision-recall areas


def build_summary(mat: pd.DataFrame, steps: pd.DataFrame, baselines: dict[tuple[str, str], float],
                  arch_mb: float) -> pd.DataFrame:
    """One row per (trial, metric): continual metrics of its T x T matrix; relative gap against joint."""
    out = []
    final_bank = steps.sort_values("step").groupby("trial_id")["bank_mb"].last()
    keys = ["trial_id", "strategy", "memory_size", "seed", "order", "metric"]
    for key, g in mat.groupby(keys, sort=True):
        trial_id, strategy, msize, seed, order, metric = key
        tasks = order.split(" > ")
        T = len(tasks)
        pos = {t: i for i, t in enumerate(tasks)}
        a = np.full((T, T), np.nan)
        a[g["step"].to_numpy(), g["eval_task"].map(pos).to_numpy()] = g["value"].to_numpy()
        row = dict(zip(keys, key))
        full = not np.isnan(a).any()
        # pixel metrics exist only for tasks with masks: their final mean is over those tasks, and
        # the order-dependent metrics (forgetting, BWT, FWT) are left null
        row["final_mean"] = M.final_mean(a) if full else float(np.nanmean(a[-1])) if np.isfinite(a[-1]).any() \
            else np.nan
        row["avg_forgetting_pct"] = M.average_forgetting(a) if full else np.nan
        row["avg_forgetting_paper_pct"] = M.average_forgetting(a, paper_compatible=True) if full else np.nan
        row["max_forgetting"] = M.max_forgetting(a) if full else np.nan
        row["bwt"] = M.bwt(a) if full else np.nan
        base = np.array([baselines.get((t, metric), np.nan) for t in tasks])
        row["fwt"] = M.fwt(a, base) if full and not np.isnan(base).any() else np.nan
        row["bank_mb"] = float(final_bank.get(trial_id, np.nan))
        row["arch_mb"] = arch_mb
        out.append(row)
    df = pd.DataFrame(out, columns=[c for c in SUMMARY_COLUMNS if c != "relative_gap"])
    joint = df[df.strategy == "joint"].set_index(["memory_size", "seed", "order", "metric"])["final_mean"]
    idx = pd.MultiIndex.from_frame(df[["memory_size", "seed", "order", "metric"]])
    df["relative_gap"] = joint.reindex(idx).to_numpy() - df["final_mean"].to_numpy()
    df.loc[df.strategy == "joint", "relative_gap"] = np.nan
    return df[SUMMARY_COLUMNS]
