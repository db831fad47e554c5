"""Reading a results folder for the report: the contract's tables (pclsim.results.schema) as frames,
with one-line PclsimErrors that name the file, and the study's shape worked out once (ReportData).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PclsimError
from ..results.schema import MATRICES, ORDER_SEPARATOR, SUMMARY, Table, legacy_renames
from .style import STRATEGY_NAMES

__all__ = ["ReportData", "read_report_table", "first_line"]


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
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
        raise PclsimError(f"{path}: cannot read as Parquet: {first_line(e)}") from None
    if not d.files:
        raise PclsimError(f"{path}: holds no Parquet files")
    return d


def read_report_table(path: Path, table: Table, metric: str | None = None) -> pd.DataFrame:
    """The contract table `table` at `path` (a file or a folder of parts) as one frame.

    Reads the table's required columns and whichever of its optional ones the files hold; strings
    come back as pandas categoricals; a 0.1.0 `trial_id` column comes back as `run_id`. metric:
    keep only the rows of that metric. Raises PclsimError (one line, naming the file) when the path
    is missing, is not Parquet, lacks a required column or holds text in a numeric column.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    d = _dataset(path)
    names = set(d.schema.names)
    legacy = {new: old for old, new in legacy_renames(names).items()}
    missing = [c for c in table.required if c not in names and c not in legacy]
    if missing:
        raise PclsimError(f"{path}: missing column(s) {', '.join(missing)}")
    columns = table.required + [c for c in table.optional if c in names]
    try:
        arrow = d.to_table(columns=[legacy.get(c, c) for c in columns],
                           filter=None if metric is None else ds.field("metric") == metric)
        df = arrow.to_pandas(strings_to_categorical=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PclsimError(f"{path}: cannot read as Parquet: {first_line(e)}") from None
    df = df.rename(columns={old: new for new, old in legacy.items()})
    for c in columns:
        if table.is_numeric(c) and not pd.api.types.is_numeric_dtype(df[c]):
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
        raise PclsimError(f"{path}: cannot read: {first_line(e)}") from None
    return sc if isinstance(sc, dict) else {}


def _scenario_first_order(sc: dict) -> tuple[str, ...] | None:
    try:
        from ..study.scenario import _orders

        return tuple(_orders(sc)[0])
    except Exception:  # an older or hand-written scenario.yaml: fall back to the data
        return None


class ReportData:
    """The tables a report needs, with positions and the study's shape worked out once.

    root: the results folder; metric: the metric of the figures. Attributes: scenario (dict, {}
    without scenario.yaml), summary (all metrics) and summ_m (the metric's rows), mat (the metric's
    matrices rows plus `pos`, the evaluated task's 0-based position in its order, and `is_final`,
    the last step), combos ((strategy, memory size) pairs in the paper's order), fig_combos (those
    with the metric), tasks (scenario order), first_order, n_orders, n_runs, n_seeds.
    Raises PclsimError when a table is missing, unreadable or has no rows for the metric.
    """

    def __init__(self, root: Path, metric: str):
        self.root = root
        self.metric = metric
        self.scenario = _read_scenario(root / "scenario.yaml")
        summ_path, mat_path = root / SUMMARY.file, root / MATRICES.file
        self.summary = read_report_table(summ_path, SUMMARY)
        if self.summary.empty:
            raise PclsimError(f"{summ_path}: has no rows")
        mat = read_report_table(mat_path, MATRICES, metric=metric)
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
            names = o.split(ORDER_SEPARATOR)
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
        seen = {t for o in orders for t in o.split(ORDER_SEPARATOR)}  # pixel metrics skip unmasked tasks
        self.tasks = [t for t in sc_tasks if t in seen] + [t for t in self.first_order if t not in sc_tasks]
        self.tasks += sorted(seen - set(self.tasks))

    def _combos(self) -> list[tuple[str, int]]:
        pairs = set(map(tuple, self.summary[["strategy", "memory_size"]].drop_duplicates().itertuples(index=False)))
        pairs |= set(map(tuple, self.mat[["strategy", "memory_size"]].drop_duplicates().itertuples(index=False)))
        rank = {s: i for i, s in enumerate(STRATEGY_NAMES)}
        return sorted(((str(s), int(m)) for s, m in pairs), key=lambda p: (rank.get(p[0], 99), p[0], p[1]))

    def _first_order(self, orders: list[str]) -> tuple[str, ...]:
        want = _scenario_first_order(self.scenario)
        if want is not None and ORDER_SEPARATOR.join(want) in orders:
            return want
        # no usable scenario: the order of the data's first row
        return tuple(str(self.mat["order"].iloc[0]).split(ORDER_SEPARATOR))
