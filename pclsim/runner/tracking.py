"""Experiment trackers for `pclsim sweep --track`: Ray Tune logger callbacks for MLflow and Weights & Biases.

One tracker run per Tune trial (a group of simulated runs: one strategy, memory size and seed over
a chunk of orders). Each tracker run gets the resolved scenario (flattened, e.g. `dataset.resize`)
and the group's keys as parameters, and as metrics the mean over the group's runs of every
metric's final mean and average forgetting (`image_auroc/final_mean`,
`image_auroc/avg_forgetting_pct`, ...; results.build_summary, method.md section 6), read back
from the Parquet part the trial has just written.

Specs: `mlflow` (a local file store, <results>/mlruns), `mlflow=URI` (any MLflow tracking URI:
a folder, file:/..., sqlite:///..., http://...), `wandb` (project = the scenario name; set
WANDB_MODE=offline to write only local files, under WANDB_DIR or <results>/wandb).
Install with `pip install -e ".[track]"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PclsimError

__all__ = ["TRACKERS", "parse_track", "tracker_callbacks", "group_metrics", "flat_params"]

TRACKERS = ("mlflow", "wandb")


def parse_track(specs) -> list[tuple[str, str | None]]:
    """['mlflow=URI', 'wandb'] -> [('mlflow', 'URI'), ('wandb', None)]. Raises PclsimError for an unknown tracker."""
    out = []
    for spec in specs or []:
        name, _, arg = str(spec).partition("=")
        name = name.strip().lower()
        if name not in TRACKERS:
            raise PclsimError(f"--track: unknown tracker {spec!r} (valid: mlflow, mlflow=URI, wandb)")
        if name == "wandb" and arg:
            raise PclsimError("--track: wandb takes no value (set WANDB_PROJECT / WANDB_MODE in the environment)")
        if any(n == name for n, _ in out):
            raise PclsimError(f"--track: {name} given twice")
        out.append((name, arg or None))
    return out


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """{'dataset': {'resize': 'full'}} -> {'dataset.resize': 'full'}; leaves as strings (trackers' parameters)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)
    return out


def group_metrics(out_dir: Path, group: str) -> dict[str, float]:
    """Mean over the group's runs of final_mean and avg_forgetting_pct per metric, from its Parquet parts.

    Empty when the parts are not (yet) there. NaN values (e.g. forgetting of pixel metrics when some
    tasks have no masks) are left out.
    """
    from ..analysis.summary import build_summary

    mp = Path(out_dir) / "matrices.parquet" / f"part-{group}.parquet"
    sp = Path(out_dir) / "steps.parquet" / f"part-{group}.parquet"
    if not (mp.is_file() and sp.is_file()):
        return {}
    mat, steps = pd.read_parquet(mp), pd.read_parquet(sp)
    summary = build_summary(mat, steps, {}, float("nan"))
    out = {}
    for metric, g in summary.groupby("metric"):
        for col in ("final_mean", "avg_forgetting_pct", "bwt"):
            v = g[col].to_numpy(dtype=float)
            if np.isfinite(v).any():
                out[f"{metric}/{col}"] = float(np.nanmean(v))
    bank = summary["bank_mb"].to_numpy(dtype=float)
    if np.isfinite(bank).any():
        out["bank_mb"] = float(np.nanmean(bank))
    return out


def _group_params(groups: dict, group: str) -> dict[str, str]:
    runs = groups.get(group) or []
    if not runs:
        return {"group": group}
    r = runs[0]
    return {"group": group, "strategy": r.strategy, "memory_size": str(r.memory_size), "seed": str(r.seed),
            "orders_in_group": str(len(runs))}


def _mlflow_callback(uri: str | None, out_dir: Path, scenario: dict, groups: dict):
    try:
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        import mlflow  # noqa: F401
    except ImportError as e:
        raise PclsimError(f"--track mlflow needs MLflow: pip install -e '.[track]' ({e})") from None
    if uri is None:
        uri = str(out_dir / "mlruns")
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(os.path.expanduser(uri)).resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps the plain-folder store in maintenance mode behind this switch; it is the default asked for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    class PclsimMLflowCallback(MLflowLoggerCallback):
        def log_trial_start(self, trial):
            super().log_trial_start(trial)
            params = {**flat_params(scenario), **_group_params(groups, trial.config.get("group", ""))}
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

        def log_trial_result(self, iteration, trial, result):
            extra = group_metrics(out_dir, trial.config.get("group", ""))
            super().log_trial_result(iteration, trial, {**result, **extra})

    return PclsimMLflowCallback(tracking_uri=uri, experiment_name=scenario["name"], save_artifact=False,
                                tags={"pclsim_scenario": scenario["name"]})


def _wandb_callback(out_dir: Path, scenario: dict, groups: dict):
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback
        import wandb  # noqa: F401
    except ImportError as e:
        raise PclsimError(f"--track wandb needs wandb: pip install -e '.[track]' ({e})") from None
    wandb_dir = Path(os.environ.get("WANDB_DIR") or out_dir / "wandb")
    wandb_dir.mkdir(parents=True, exist_ok=True)

    class PclsimWandbCallback(WandbLoggerCallback):
        def log_trial_start(self, trial):
            group = trial.config.get("group", "")
            self.kwargs["config"] = {**flat_params(scenario), **_group_params(groups, group)}
            super().log_trial_start(trial)

        def log_trial_result(self, iteration, trial, result):
            extra = group_metrics(out_dir, trial.config.get("group", ""))
            super().log_trial_result(iteration, trial, {**result, **extra})

    return PclsimWandbCallback(project=os.environ.get("WANDB_PROJECT") or scenario["name"], dir=str(wandb_dir))


def tracker_callbacks(specs, out_dir, scenario: dict, groups: dict) -> list:
    """Ray Tune callbacks for the `--track` specs (see the module docstring); [] when none.

    groups: Tune trial name -> its runs (scenario.group_runs). Raises PclsimError for an unknown tracker
    or a tracker whose package is missing.
    """
    out_dir = Path(out_dir)
    cbs = []
    for name, arg in parse_track(specs):
        if name == "mlflow":
            cbs.append(_mlflow_callback(arg, out_dir, scenario, groups))
        else:
            cbs.append(_wandb_callback(out_dir, scenario, groups))
    return cbs

