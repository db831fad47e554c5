"""The results folder: Parquet tables with the interface.md schema, written atomically, and the summary.

Tables (one row per ...):
- matrices.parquet/ (MATRIX_SCHEMA): (run, step, eval_task, metric), the full T x T matrices.
- steps.parquet/ (STEPS_SCHEMA): (run, step): bank vectors, bank MB (decimal MB of float32), seconds.
- summary.parquet (SUMMARY_COLUMNS): (run, metric): continual metrics of the run's matrix.
- routing.parquet/ (ROUTING_SCHEMA): (run, step, true task, chosen bank's task): test images routed,
  for strategies that identify the task (method.md section 3). Per (run, step, true task) the
  counts add up to that task's test images; the diagonal share is `task_id_acc`.
- routed.parquet/ (ROUTED_SCHEMA): (run, step, eval_task, routed, metric): every image metric on the
  correctly ("correct") and wrongly ("wrong") routed test images of a task (NaN where undefined,
  e.g. AUROC over images of one class).
- statistics.parquet (STATISTICS_SCHEMA, see `pclsim.statistics`): (strategy, memory_size, metric,
  quantity, statistic[, task]): the order-robustness study.

`run_id` names one simulated run, i.e. one (strategy, memory_size, seed, order). 0.1.0 called it
`trial_id`; `read_table` accepts both (LEGACY_COLUMNS).
"""

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
from .statistics import STATISTICS_SCHEMA

__all__ = ["MATRIX_SCHEMA", "STEPS_SCHEMA", "SUMMARY_COLUMNS", "ROUTING_SCHEMA", "ROUTED_SCHEMA", "STATISTICS_SCHEMA",
           "LEGACY_COLUMNS", "atomic_write_table", "atomic_write_bytes", "rows_table", "steps_table", "routing_table",
           "routed_metrics_table", "done_groups", "read_table", "read_matrices", "build_summary", "chance_level"]

_RUN = [("run_id", pa.string()), ("strategy", pa.string()), ("memory_size", pa.int64()), ("seed", pa.int64()),
        ("order", pa.string())]
MATRIX_SCHEMA = pa.schema(_RUN + [
    ("step", pa.int64()), ("train_task", pa.string()), ("eval_task", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()),
])
STEPS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("train_task", pa.string()),
    ("bank_vectors", pa.int64()), ("bank_mb", pa.float64()), ("seconds", pa.float64()),
])
SUMMARY_COLUMNS = ["run_id", "strategy", "memory_size", "seed", "order", "metric", "final_mean",
                   "avg_forgetting_pct", "bwt", "fwt", "relative_gap", "bank_mb", "arch_mb",
                   "avg_forgetting_paper_pct", "max_forgetting"]
ROUTING_SCHEMA = pa.schema(_RUN + [
    ("step", pa.int64()), ("true_task", pa.string()), ("chosen_task", pa.string()), ("images", pa.int64()),
])
ROUTED_SCHEMA = pa.schema(_RUN + [
    ("step", pa.int64()), ("eval_task", pa.string()), ("routed", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()),
])
# statistics.parquet: one row per (strategy, memory_size, metric, quantity, statistic, task); the
# schema and what each statistic means (and which test) live in pclsim.statistics.
LEGACY_COLUMNS = {"trial_id": "run_id"}


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
    """Write a Parquet file so that readers see either nothing or the whole file (via atomic_write_bytes)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(buf.getvalue().to_pybytes(), path)


def rows_table(pairs: list[tuple[Run, OrderResult]]) -> pa.Table:
    cols = {f.name: [] for f in MATRIX_SCHEMA}
    for run, res in pairs:
        for step, train_task, eval_task, metric, value in res.rows():
            _run_columns(cols, run)
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
            cols["run_id"].append(run.run_id)
            cols["step"].append(s)
            cols["train_task"].append(run.order[s])
            cols["bank_vectors"].append(int(n))
            cols["bank_mb"].append(M.memory_mb(n, dim))
            cols["seconds"].append(float(res.seconds[s]) if res.seconds else float("nan"))
    return pa.Table.from_pydict(cols, schema=STEPS_SCHEMA)


def _run_columns(cols: dict, run: Run) -> None:
    cols["run_id"].append(run.run_id)
    cols["strategy"].append(run.strategy)
    cols["memory_size"].append(run.memory_size)
    cols["seed"].append(run.seed)
    cols["order"].append(run.order_str)


def routing_table(pairs: list[tuple[Run, OrderResult]]) -> pa.Table:
    """routing.parquet rows: per run, step, true task and chosen bank's task, the test images routed there.

    Reads `OrderResult.routing` (step, eval_task, chosen_task, n_images); runs of strategies that do
    not identify the task have none and give no rows. Raises ValueError on a negative count.
    """
    cols = {f.name: [] for f in ROUTING_SCHEMA}
    for run, res in pairs:
        for step, true_task, chosen_task, n in res.routing:
            if int(n) < 0:
                raise ValueError(f"run {run.run_id}: negative routing count {n} at step {step} for {true_task}")
            _run_columns(cols, run)
            cols["step"].append(int(step))
            cols["true_task"].append(true_task)
            cols["chosen_task"].append(chosen_task)
            cols["images"].append(int(n))
    return pa.Table.from_pydict(cols, schema=ROUTING_SCHEMA)


def routed_metrics_table(pairs: list[tuple[Run, OrderResult]]) -> pa.Table:
    """routed.parquet rows: image metrics on the correctly / wrongly routed test images of a task.

    Reads `OrderResult.routed` (step, eval_task, "correct" | "wrong", metric, value); NaN values are
    kept (a metric undefined on that subset, e.g. AUROC when it holds one class only).
    Raises ValueError on a routed label other than "correct" or "wrong".
    """
    cols = {f.name: [] for f in ROUTED_SCHEMA}
    for run, res in pairs:
        for step, eval_task, routed, metric, value in res.routed:
            if routed not in ("correct", "wrong"):
                raise ValueError(f"run {run.run_id}: routed must be 'correct' or 'wrong', got {routed!r}")
            _run_columns(cols, run)
            cols["step"].append(int(step))
            cols["eval_task"].append(eval_task)
            cols["routed"].append(routed)
            cols["metric"].append(metric)
            cols["value"].append(float(value))
    return pa.Table.from_pydict(cols, schema=ROUTED_SCHEMA)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """A results table (a Parquet file or a folder of part files) as one frame, old names renamed.

    0.1.0 folders name the run column `trial_id`; it comes back as `run_id`. `columns` may use
    the new names. Raises FileNotFoundError when the path does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if columns is not None:
        have = set(pq.ParquetDataset(path).schema.names)
        old = {v: k for k, v in LEGACY_COLUMNS.items()}
        columns = [old[c] if c not in have and old.get(c) in have else c for c in columns]
    df = pd.read_parquet(path, columns=columns)
    return df.rename(columns={k: v for k, v in LEGACY_COLUMNS.items() if k in df.columns and v not in df.columns})


def done_groups(out: Path) -> set[str]:
    d = out / "matrices.parquet"
    if not d.is_dir():
        return set()
    return {p.name[len("part-"):-len(".parquet")] for p in d.glob("part-*.parquet")
            if (out / "steps.parquet" / p.name).exists()}


def read_matrices(out: Path) -> pd.DataFrame:
    return read_table(Path(out) / "matrices.parquet")


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
    """One row per (run, metric): continual metrics of its T x T matrix; relative gap against joint.

    mat: matrices.parquet rows; steps: steps.parquet rows (either may use 0.1.0's `trial_id`).
    """
    out = []
    mat = mat.rename(columns=LEGACY_COLUMNS)
    steps = steps.rename(columns=LEGACY_COLUMNS)
    final_bank = steps.sort_values("step").groupby("run_id")["bank_mb"].last()
    keys = ["run_id", "strategy", "memory_size", "seed", "order", "metric"]
    # every row's cell (step, position of its task in the run's order), placed in one (groups, T, T)
    # array at once; the per-run loop below then only reads numpy slices
    runs = mat[["run_id", "order"]].drop_duplicates("run_id")
    pos = pd.DataFrame([(rid, t, i) for rid, o in runs.itertuples(index=False) for i, t in enumerate(o.split(" > "))],
                       columns=["run_id", "eval_task", "position"])
    cells = mat[keys + ["step", "eval_task", "value"]].merge(pos, on=["run_id", "eval_task"], how="left")
    grouped = cells.groupby(keys, sort=True)
    gid = grouped.ngroup().to_numpy()
    heads = cells.iloc[grouped.head(1).index][keys].assign(_gid=gid[grouped.head(1).index.to_numpy()]) \
        .sort_values("_gid")
    t_max = int(max(len(o.split(" > ")) for o in runs["order"]))
    cube = np.full((len(heads), t_max, t_max), np.nan)
    cube[gid, cells["step"].to_numpy(), cells["position"].to_numpy()] = cells["value"].to_numpy()
    base_of: dict = {}
    for key, a in zip(heads[keys].itertuples(index=False, name=None), cube):
        run_id, strategy, msize, seed, order, metric = key
        tasks = order.split(" > ")
        T = len(tasks)
        a = a[:T, :T]
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
        if (order, metric) not in base_of:
            base_of[(order, metric)] = np.array([baselines.get((t, metric), np.nan) for t in tasks])
        base = base_of[(order, metric)]
        row["fwt"] = M.fwt(a, base) if full and not np.isnan(base).any() else np.nan
        row["bank_mb"] = float(final_bank.get(run_id, np.nan))
        row["arch_mb"] = arch_mb
        out.append(row)
    df = pd.DataFrame(out, columns=[c for c in SUMMARY_COLUMNS if c != "relative_gap"])
    joint = df[df.strategy == "joint"].set_index(["memory_size", "seed", "order", "metric"])["final_mean"]
    idx = pd.MultiIndex.from_frame(df[["memory_size", "seed", "order", "metric"]])
    df["relative_gap"] = joint.reindex(idx).to_numpy() - df["final_mean"].to_numpy()
    df.loc[df.strategy == "joint", "relative_gap"] = np.nan
    return df[SUMMARY_COLUMNS]
