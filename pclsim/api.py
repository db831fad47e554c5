"""The Python API for notebooks: run a sweep and read a results folder as pandas frames.

```python
import pclsim
res = pclsim.sweep("scenarios/smoke.yaml", out="results/smoke")   # or a scenario mapping
res.summary.groupby(["strategy", "memory_size"]).final_mean.mean()
res = pclsim.load_results("results/orders")                         # any finished folder
res.matrix(res.runs()[0], "image_auroc")                            # one T x T matrix
```

Column names are those of interface.md ("Results folder"); a folder written by pclsim 0.1.0,
whose tables call the run `trial_id`, is read with that column renamed to `run_id`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .errors import PclsimError

__all__ = ["Results", "load_results", "sweep"]

# table attribute -> file or folder in the results folder
_TABLES = {"matrices": "matrices.parquet", "summary": "summary.parquet", "steps": "steps.parquet",
           "tasks": "tasks.parquet", "statistics": "statistics.parquet", "routing": "routing.parquet",
           "categories": "categories.parquet"}


@dataclass
class Results:
    """A results folder's tables as pandas frames (None where the folder has no such table).

    matrices: one row per (run, step, eval_task, metric): run_id, strategy, memory_size, seed, order,
        step, train_task, eval_task, metric, value.
    summary: one row per (run, metric): run_id, strategy, memory_size, seed, order, metric, final_mean,
        avg_forgetting_pct, bwt, fwt, relative_gap, bank_mb, arch_mb (+ labelled variants).
    steps: per (run, step): bank_vectors, bank_mb, seconds. tasks: per task sizes and prevalences.
    statistics, routing: see interface.md. categories: per-category values of merged tasks
        (matrices' columns plus `category`; pclsim.data.merge).
    scenario: the resolved scenario.yaml (with pclsim_version and scenario_hash).
    """

    folder: Path
    matrices: pd.DataFrame
    summary: pd.DataFrame | None = None
    steps: pd.DataFrame | None = None
    tasks: pd.DataFrame | None = None
    statistics: pd.DataFrame | None = None
    routing: pd.DataFrame | None = None
    categories: pd.DataFrame | None = None
    scenario: dict = field(default_factory=dict)

    def runs(self) -> list[str]:
        """Every run_id in the matrices, sorted."""
        return sorted(self.matrices["run_id"].unique())

    def matrix(self, run_id: str, metric: str) -> pd.DataFrame:
        """The T x T matrix a[step][task] of one run and metric: rows = train_task in the run's order
        (the step), columns = eval_task in the same order. Raises KeyError for an unknown run or metric."""
        m = self.matrices
        g = m[(m["run_id"] == run_id) & (m["metric"] == metric)]
        if g.empty:
            raise KeyError(f"no values for run {run_id!r} and metric {metric!r}")
        order = g["order"].iloc[0].split(" > ")
        a = g.pivot(index="train_task", columns="eval_task", values="value")
        return a.reindex(index=order, columns=order)


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    if "trial_id" in df.columns and "run_id" not in df.columns:  # pclsim 0.1.0 folders
        df = df.rename(columns={"trial_id": "run_id"})
    return df


def load_results(folder: str | os.PathLike) -> Results:
    """Read a sweep's results folder. Raises PclsimError when it holds no matrices.parquet."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / "matrices.parquet").exists():
        raise PclsimError(f"{folder}: no matrices.parquet here (not a pclsim results folder, or the sweep "
                          "has not finished a trial yet)")
    frames = {}
    for attr, name in _TABLES.items():
        p = folder / name
        if p.exists() and (p.is_file() or any(p.glob("*.parquet"))):
            frames[attr] = _read(p)
    scenario = {}
    if (folder / "scenario.yaml").is_file():
        scenario = yaml.safe_load((folder / "scenario.yaml").read_text()) or {}
    return Results(folder=folder, scenario=scenario, **frames)


def sweep(scenario: str | os.PathLike | dict, *, out: str | os.PathLike | None = None, data_root: str | None = None,
          address: str | None = None, fresh: bool = False, max_concurrent: int | None = None, quiet: bool = True,
          track: list[str] | None = None, cache_dir: str | None = None, accept_versions: bool = False) -> Results:
    """`pclsim sweep` from Python; returns the results folder read by `load_results`.

    scenario: a YAML file or a mapping with the same keys (relative paths in a mapping are taken from the
    current directory). The other arguments are the command's options. Raises PclsimError (and its
    ScenarioError / DataError / ModelError subclasses) for bad input, with the message the CLI prints.
    """
    from .runner.sweep import run_sweep

    if isinstance(scenario, dict):
        sc = dict(scenario)
        sc.setdefault("name", "scenario")
        ds = dict(sc.get("dataset") or {})
        if ds.get("root") and not Path(os.path.expanduser(str(ds["root"]))).is_absolute():
            ds["root"] = str(Path(str(ds["root"])).resolve())
            sc["dataset"] = ds
        m = dict(sc.get("model") or {})
        w = m.get("weights")
        if w not in (None, "bundled", "none", "pretrained") and not Path(os.path.expanduser(str(w))).is_absolute():
            m["weights"] = str(Path(str(w)).resolve())
            sc["model"] = m
        with tempfile.TemporaryDirectory(prefix="pclsim-") as tmp:
            path = Path(tmp) / f"{sc['name']}.yaml"
            path.write_text(yaml.safe_dump(sc, sort_keys=False))
            folder = run_sweep(str(path), out=str(out) if out else None, data_root=data_root, address=address,
                               fresh=fresh, max_concurrent=max_concurrent, quiet=quiet, cache_dir=cache_dir,
                               track=track, accept_versions=accept_versions)
    else:
        folder = run_sweep(str(scenario), out=str(out) if out else None, data_root=data_root, address=address,
                           fresh=fresh, max_concurrent=max_concurrent, quiet=quiet, cache_dir=cache_dir, track=track,
                           accept_versions=accept_versions)
    return load_results(folder)
