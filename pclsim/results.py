"""The results folder: the writers of its Parquet tables, atomic writes, the reader and the summary.

The tables, their columns, units and meaning are defined once in `pclsim.results_schema` (the
results contract, interface.md "Results folder"); this module writes them:
- matrices.parquet/ (`rows_table`), steps.parquet/ (`steps_table`), routing.parquet/
  (`routing_table`), routed.parquet/ (`routed_metrics_table`): one part file per group of runs.
- summary.parquet (`build_summary`): continual metrics of each run's matrix (method.md section 6).
- statistics.parquet: `pclsim.statistics.statistics_table`.

`run_id` names one simulated run, i.e. one (strategy, memory_size, seed, order). 0.1.0 called it
`trial_id`; `read_table` and `build_summary` accept both (LEGACY_COLUMNS).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics as metric_fns
from .metric_registry import chance_of, get_metric
from .results_schema import (LEGACY_COLUMNS, MATRIX_SCHEMA, ORDER_SEPARATOR, ROUTED_OUTCOMES, ROUTED_SCHEMA,
                             ROUTING_SCHEMA, STATISTICS_SCHEMA, STEPS_SCHEMA, SUMMARY_COLUMNS, legacy_renames)

if TYPE_CHECKING:  # annotations only: reading and writing tables needs neither torch nor the scenario code
    from .protocol import OrderResult
    from .scenario import Run

__all__ = ["MATRIX_SCHEMA", "STEPS_SCHEMA", "SUMMARY_COLUMNS", "ROUTING_SCHEMA", "ROUTED_SCHEMA", "STATISTICS_SCHEMA",
           "LEGACY_COLUMNS", "atomic_write_table", "atomic_write_bytes", "rows_table", "steps_table", "routing_table",
           "routed_metrics_table", "done_groups", "read_table", "read_matrices", "build_summary", "chance_level"]


def atomic_write_bytes(data: bytes, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write a file so that readers see either nothing or the whole file.

    The bytes go to a hidden temporary file (".tmp-*", which Parquet dataset readers skip) in the
    same folder, are flushed and fsynced, and the file is renamed over `path` (os.replace is atomic
    on POSIX). `mode`: the file's permissions (the temporary file is created 0600; results and
    reports are meant to be shared). Creates missing parent folders; raises OSError as the file
    system does, leaving no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
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
    """matrices.parquet rows (MATRIX_SCHEMA): every cell of every metric's T x T matrix of each run.

    pairs: (Run, OrderResult) as `engine.simulate` / `protocol.run_group` return them."""
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
    """steps.parquet rows (STEPS_SCHEMA): per run and step, the bank's vectors and decimal MB of
    dim-dimensional float32 vectors (method.md section 6), and the step's seconds (NaN if unmeasured)."""
    cols = {f.name: [] for f in STEPS_SCHEMA}
    for run, res in pairs:
        for s, n in enumerate(res.bank_vectors):
            cols["run_id"].append(run.run_id)
            cols["step"].append(s)
            cols["train_task"].append(run.order[s])
            cols["bank_vectors"].append(int(n))
            cols["bank_mb"].append(metric_fns.memory_mb(n, dim))
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
            if routed not in ROUTED_OUTCOMES:
                raise ValueError(f"run {run.run_id}: routed must be one of {ROUTED_OUTCOMES}, got {routed!r}")
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
        old = {new: old for old, new in legacy_renames(pq.ParquetDataset(path).schema.names).items()}
        columns = [old.get(c, c) for c in columns]
    df = pd.read_parquet(path, columns=columns)
    return df.rename(columns=legacy_renames(df.columns))


def done_groups(out: Path) -> set[str]:
    """Groups whose matrices and steps parts are both in the folder `out` (the writer writes matrices last)."""
    d = out / "matrices.parquet"
    if not d.is_dir():
        return set()
    return {p.name[len("part-"):-len(".parquet")] for p in d.glob("part-*.parquet")
            if (out / "steps.parquet" / p.name).exists()}


def read_matrices(out: Path) -> pd.DataFrame:
    """matrices.parquet of the results folder `out` as one frame (see read_table)."""
    return read_table(Path(out) / "matrices.parquet")


def chance_level(metric: str, labels: np.ndarray | None = None, masks: np.ndarray | None = None,
                 n_tasks: int = 1) -> float:
    """The value a scorer without information gets: the FWT baseline of a task never trained on.

    The level comes from the metric registry (`pclsim.metric_registry`, which gives each formula
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
        T = len(tasks)
        a = a[:T, :T]
        row = dict(zip(keys, key))
        full = not np.isnan(a).any()
        # pixel metrics exist only for tasks with masks: their final mean is over those tasks, and
        # the order-dependent metrics (forgetting, BWT, FWT) are left null
        row["final_mean"] = metric_fns.final_mean(a) if full else float(np.nanmean(a[-1])) if np.isfinite(a[-1]).any() \
            else np.nan
        row["avg_forgetting_pct"] = metric_fns.average_forgetting(a) if full else np.nan
        row["avg_forgetting_paper_pct"] = metric_fns.average_forgetting(a, paper_compatible=True) if full else np.nan
        row["max_forgetting"] = metric_fns.max_forgetting(a) if full else np.nan
        row["bwt"] = metric_fns.bwt(a) if full else np.nan
        if (order, metric) not in base_of:
            base_of[(order, metric)] = np.array([baselines.get((t, metric), np.nan) for t in tasks])
        base = base_of[(order, metric)]
        row["fwt"] = metric_fns.fwt(a, base) if full and not np.isnan(base).any() else np.nan
        row["bank_mb"] = float(final_bank.get(run_id, np.nan))
        row["arch_mb"] = arch_mb
        out.append(row)
    df = pd.DataFrame(out, columns=[c for c in SUMMARY_COLUMNS if c != "relative_gap"])
    joint = df[df.strategy == "joint"].set_index(["memory_size", "seed", "order", "metric"])["final_mean"]
    idx = pd.MultiIndex.from_frame(df[["memory_size", "seed", "order", "metric"]])
    df["relative_gap"] = joint.reindex(idx).to_numpy() - df["final_mean"].to_numpy()
    df.loc[df.strategy == "joint", "relative_gap"] = np.nan
    return df[SUMMARY_COLUMNS]
