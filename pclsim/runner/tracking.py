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
Install with `pip install -e ".[track]"` (MLflow 3.x and wandb from 0.19; both ends of each range are
tested: `.ci/trackers-oldest`).

`check_trackers` runs before any data is read or Ray starts: a W&B key (or offline mode), an MLflow
URI that answers, an experiment that is active or absent; otherwise one PclsimError naming the fix.
Every tracker run of one sweep carries its run group (`pclsim_run_group`, an MLflow tag and the W&B
group): a resumed sweep keeps the group, `--fresh` starts a new one, and older runs stay where they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PclsimError

__all__ = ["TRACKERS", "parse_track", "check_trackers", "mlflow_uri", "tracker_callbacks", "group_metrics", "flat_params"]

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


def mlflow_uri(arg: str | None, out_dir: Path) -> str:
    """The tracking URI of `--track mlflow[=ARG]`: <out>/mlruns by default, a plain folder as a file: URI."""
    uri = arg if arg is not None else str(Path(out_dir) / "mlruns")
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(os.path.expanduser(uri)).resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps the plain-folder store in maintenance mode behind this switch; it is the default asked for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise PclsimError(f"--track {name} needs {'MLflow' if name == 'mlflow' else 'wandb'}: "
                          f"pip install -e '.[track]' ({e})") from None


def _check_mlflow(uri: str, experiment: str) -> None:
    """The URI answers within seconds and the experiment is active or absent; PclsimError otherwise."""
    mlflow = _import("mlflow")
    if uri.startswith("file:") or uri.startswith("sqlite:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        path = Path(url2pathname(urlparse(uri).path)) if uri.startswith("file:") else Path(uri.split(":///", 1)[-1])
        folder = path if uri.startswith("file:") else path.parent
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            raise PclsimError(f"--track mlflow={uri}: {probe} is not writable: give a folder you can write to")
        if not path.exists():
            return  # a new store: nothing in it to check
    old = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as e:  # noqa: BLE001 (any failure of the store is the user's to fix, named here)
        from .control import cause_message

        name, msg = cause_message(e)
        raise PclsimError(f"--track mlflow={uri}: the tracking store does not answer ({name}: {msg}); start the "
                          "server or fix the URI, or run without --track") from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if exp is not None and exp.lifecycle_stage != "active":
        raise PclsimError(f"--track mlflow={uri}: experiment {experiment!r} was deleted: restore it "
                          f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`), remove it for good "
                          "(`mlflow gc`), or track into another URI")


def _wandb_netrc_key() -> bool:
    """Whether `wandb login` left a key for the W&B host (WANDB_BASE_URL, default api.wandb.ai) in the netrc file."""
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _check_wandb() -> None:
    """A W&B key is there (WANDB_API_KEY, `wandb login`) or WANDB_MODE is offline/disabled; PclsimError otherwise."""
    wandb = _import("wandb")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    if _wandb_netrc_key():
        return
    import contextlib
    import io

    try:  # where else this wandb keeps a key (what Ray's callback asks too); its deprecation notice is not ours
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            wandb.ensure_configured()
            key = wandb.api.api_key
    except Exception:  # noqa: BLE001 (an unreadable settings file, a wandb without this API: no key)
        key = None
    if not key:
        raise PclsimError("--track wandb: no W&B API key: run `wandb login`, set WANDB_API_KEY, or set "
                          "WANDB_MODE=offline to write local files only (sync them later with `wandb sync`)")


def check_trackers(specs, out_dir, scenario_name: str) -> None:
    """Check every `--track` spec before any work: the package, a W&B key or offline mode, an MLflow store that
    answers and an experiment (the scenario's name) that is active or absent. Raises PclsimError naming the fix."""
    for name, arg in parse_track(specs):
        if name == "mlflow":
            _check_mlflow(mlflow_uri(arg, Path(out_dir)), scenario_name)
        else:
            _check_wandb()


def _run_group(out_dir: Path) -> str:
    from ..results.record import results_record

    return str((results_record(out_dir) or {}).get("run_group", ""))


def _mlflow_callback(uri: str | None, out_dir: Path, scenario: dict, groups: dict, quiet: bool = True):
    _import("mlflow")
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = mlflow_uri(uri, out_dir)
    run_group = _run_group(out_dir)
    _say_earlier_runs(uri, scenario["name"], run_group, quiet)

    class PclsimMLflowCallback(MLflowLoggerCallback):
        def log_trial_start(self, trial):
            super().log_trial_start(trial)
            params = {**flat_params(scenario), **_group_params(groups, trial.config.get("group", ""))}
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

        def log_trial_result(self, iteration, trial, result):
            extra = group_metrics(out_dir, trial.config.get("group", ""))
            super().log_trial_result(iteration, trial, {**result, **extra})

    return PclsimMLflowCallback(tracking_uri=uri, experiment_name=scenario["name"], save_artifact=False,
                                tags={"pclsim_scenario": scenario["name"], "pclsim_run_group": run_group})


def _say_earlier_runs(uri: str, experiment: str, run_group: str, quiet: bool) -> None:
    """One line when the experiment already holds runs of other run groups (earlier sweeps, a --fresh rerun)."""
    if quiet:
        return
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return
        older = client.search_runs([exp.experiment_id], filter_string=f"tags.pclsim_run_group != '{run_group}'",
                                   max_results=1000)
    except Exception:  # noqa: BLE001 (a courtesy line; the store was checked before the work)
        return
    if older:
        print(f"mlflow: experiment {experiment!r} keeps {len(older)}{'+' if len(older) == 1000 else ''} run(s) of "
              f"earlier sweeps; this sweep's runs have the tag pclsim_run_group = '{run_group}'", file=sys.stderr)


def _wandb_callback(out_dir: Path, scenario: dict, groups: dict):
    _import("wandb")
    from ray.air.integrations.wandb import WandbLoggerCallback
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

    return PclsimWandbCallback(project=os.environ.get("WANDB_PROJECT") or scenario["name"], dir=str(wandb_dir),
                               group=_run_group(out_dir) or None)


def tracker_callbacks(specs, out_dir, scenario: dict, groups: dict, quiet: bool = True) -> list:
    """Ray Tune callbacks for the `--track` specs (see the module docstring); [] when none.

    groups: Tune trial name -> its runs (scenario.group_runs). Raises PclsimError for an unknown tracker
    or a tracker whose package is missing.
    """
    out_dir = Path(out_dir)
    cbs = []
    for name, arg in parse_track(specs):
        if name == "mlflow":
            cbs.append(_mlflow_callback(arg, out_dir, scenario, groups, quiet))
        else:
            cbs.append(_wandb_callback(out_dir, scenario, groups))
    return cbs

