"""The results folder: the writers of its Parquet tables and the reader.

The tables, their columns, units and meaning are defined once in `pclsim.results.schema` (the
results contract, interface.md "Results folder"); this module writes them:
- matrices.parquet/ (`rows_table`), steps.parquet/ (`steps_table`), routing.parquet/
  (`routing_table`), routed.parquet/ (`routed_metrics_table`): one part file per group of runs.
- summary.parquet: `pclsim.analysis.summary.build_summary`; statistics.parquet:
  `pclsim.analysis.statistics.statistics_table`.

`run_id` names one simulated run, i.e. one (strategy, memory_size, seed, order). 0.1.0 called it
`trial_id`; `read_table` and the summary accept both (LEGACY_COLUMNS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_write_bytes
from ..core import metrics as metric_fns
from .schema import (LEGACY_COLUMNS, MATRIX_SCHEMA, ROUTED_OUTCOMES, ROUTED_SCHEMA,
                             ROUTING_SCHEMA, STATISTICS_SCHEMA, STEPS_SCHEMA, SUMMARY_COLUMNS, legacy_renames)

if TYPE_CHECKING:  # annotations only: reading and writing tables needs neither torch nor the scenario code
    from ..study.protocol import OrderResult
    from ..study.scenario import Run

__all__ = ["MATRIX_SCHEMA", "STEPS_SCHEMA", "SUMMARY_COLUMNS", "ROUTING_SCHEMA", "ROUTED_SCHEMA", "STATISTICS_SCHEMA",
           "LEGACY_COLUMNS", "atomic_write_table", "atomic_write_bytes", "rows_table", "steps_table", "routing_table",
           "routed_metrics_table", "done_groups", "read_table", "read_matrices", "write_table", "remove_table"]


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file so that readers see either nothing or the whole file (via atomic_write_bytes)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(buf.getvalue().to_pybytes(), path)


def write_table(data: pd.DataFrame | pa.Table, out_dir: str | os.PathLike, name: str, part: str = "part-0") -> Path:
    """Publish `data` as `<out_dir>/<table file>/<part>.parquet` with the results contract's types.

    Every table of a results folder is a folder of part files (one per group of runs for the trial
    tables, `part-0` for the others), so one glob, `<table>.parquet/*.parquet`, reads any of them with
    any reader. The columns get the contract's Arrow types whatever the data and the pandas version
    (text: string; `maskless_all_ones`: list<int64> even when every list is empty). name: a key of
    `TABLES`. Raises KeyError for a column the contract does not define; OSError as the file system.
    A 0.2 folder's single-file table of that name is replaced. The file's metadata records the versions
    that wrote it (`pclsim.results.provenance`).
    """
    from .schema import TABLES

    table = TABLES[name]
    if isinstance(data, pd.DataFrame):
        arrow = pa.Table.from_pandas(data, schema=table.schema_of(data.columns), preserve_index=False)
    else:
        arrow = data.select(table.schema_of(data.column_names).names).cast(table.schema_of(data.column_names))
    from .provenance import KEY, versions

    # the code that computed these rows (pclsim.results.provenance): read back by a resume
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), KEY: json.dumps(versions()).encode()})
    folder = Path(out_dir) / table.file
    if folder.is_file():
        folder.unlink()
    path = folder / f"{part}.parquet"
    atomic_write_table(arrow, path)
    return path


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


def remove_table(path: str | os.PathLike) -> None:
    """Remove a table (a folder of parts, or a 0.2 single file), or any file or folder, if it exists."""
    import shutil

    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
