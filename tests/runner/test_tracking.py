"""`pclsim sweep --track`: a real local MLflow file store and wandb in offline mode, through a real sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pclsim.errors import PclsimError
from pclsim.runner.tracking import flat_params, parse_track

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def _have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:
        return False


def test_track_specs():
    assert parse_track(["mlflow", "wandb"]) == [("mlflow", None), ("wandb", None)]
    assert parse_track(["mlflow=sqlite:///x.db"]) == [("mlflow", "sqlite:///x.db")]
    assert parse_track(None) == []
    for bad in (["tensorboard"], ["mlflow", "mlflow=x"], ["wandb=x"]):
        with pytest.raises(PclsimError, match="--track"):
            parse_track(bad)
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_bad_track_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(SMOKE), "--out", str(tmp_path / "o"),
                        "--track", "tensorboard"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2
    assert r.stderr.startswith("error: --track: unknown tracker") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    if not _have("mlflow"):
        pytest.skip("mlflow is not installed (pip install -e '.[track]')")
    d = tmp_path_factory.mktemp("track")
    cmd = [sys.executable, "-m", "pclsim.cli", "sweep", str(SMOKE), "--out", str(d / "out"), "--quiet", "--fresh",
           "--track", f"mlflow={d / 'mlruns'}"]
    if _have("wandb"):
        cmd += ["--track", "wandb"]
    env = dict(os.environ, PCLSIM_CACHE_DIR=str(d / "cache"), RAY_ADDRESS="", PYTHONPATH=str(ROOT),
               WANDB_MODE="offline", WANDB_DIR=str(d / "wandb"), WANDB_SILENT="true")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_mlflow_store_holds_one_run_per_trial_with_its_summary(tracked):
    import mlflow

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    summary = pd.read_parquet(tracked / "out" / "summary.parquet")
    mat = pd.read_parquet(tracked / "out" / "matrices.parquet")
    groups = sorted(p.name[5:-8] for p in (tracked / "out" / "matrices.parquet").glob("part-*.parquet"))
    assert len(groups) == 8  # 4 strategies x 2 memory sizes
    assert sorted(r.data.params["group"] for r in runs) == groups
    id_col = "run_id" if "run_id" in summary.columns else "trial_id"
    for r in runs:
        p = r.data.params
        assert r.info.status == "FINISHED"
        assert p["dataset.resize"] == "crop" and p["model.reweighting"] == "paper"
        assert p["evaluation.maskless_pixels"] == "skip" and p["name"] == "smoke"
        # the group's runs, found from the matrices part it wrote
        part = pd.read_parquet(tracked / "out" / "matrices.parquet" / f"part-{p['group']}.parquet")
        ids = set(part[id_col])
        s = summary[summary[id_col].isin(ids)]
        assert set(s.strategy) == {p["strategy"]} and set(s.memory_size) == {int(p["memory_size"])}
        for metric in ("image_auroc", "image_f1", "pixel_auroc"):
            want = s[s.metric == metric].final_mean.mean()
            assert r.data.metrics[f"{metric}/final_mean"] == pytest.approx(want, rel=1e-9)
        want = s[s.metric == "image_auroc"].avg_forgetting_pct.mean()
        assert r.data.metrics["image_auroc/avg_forgetting_pct"] == pytest.approx(want, rel=1e-9)
    assert len(mat) > 0


def test_wandb_offline_writes_its_files(tracked):
    if not _have("wandb"):
        pytest.skip("wandb is not installed (pip install -e '.[track]')")
    runs = sorted((tracked / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 8, list((tracked / "wandb").rglob("*"))[:20]
    for r in runs:
        files = {p.name for p in r.rglob("*") if p.is_file()}
        assert any(f.endswith(".wandb") for f in files), files
        cfg = next(r.rglob("config.yaml"), None)
        if cfg is not None:
            assert "dataset.resize" in cfg.read_text()


# ---------------------------------------------------------------- the Python API on the same folder

def test_load_results_gives_the_documented_frames(tracked):
    import pclsim

    res = pclsim.load_results(tracked / "out")
    raw = pd.read_parquet(tracked / "out" / "matrices.parquet")
    assert list(res.matrices.columns) == ["run_id", "strategy", "memory_size", "seed", "order", "step", "train_task",
                                          "eval_task", "metric", "value"]
    assert len(res.matrices) == len(raw)
    old = "trial_id" in raw.columns  # a 0.1.0-style folder is read with run_id
    np.testing.assert_array_equal(res.matrices["run_id"], raw["trial_id" if old else "run_id"])
    for col in ("run_id", "strategy", "memory_size", "seed", "order", "metric", "final_mean", "avg_forgetting_pct",
                "bwt", "fwt", "relative_gap", "bank_mb", "arch_mb"):
        assert col in res.summary.columns
    assert res.scenario["name"] == "smoke" and res.tasks is not None and res.steps is not None
    run = res.runs()[0]
    a = res.matrix(run, "image_auroc")
    order = res.matrices[res.matrices.run_id == run].order.iloc[0].split(" > ")
    assert list(a.index) == order and list(a.columns) == order and not a.isna().any().any()
    g = raw[(raw["trial_id" if old else "run_id"] == run) & (raw.metric == "image_auroc")]
    last = g[g.step == len(order) - 1].set_index("eval_task").value
    np.testing.assert_allclose(a.iloc[-1].to_numpy(), last.reindex(order).to_numpy())
    with pytest.raises(PclsimError, match="no matrices.parquet"):
        pclsim.load_results(tracked)


def test_sweep_from_python_resumes_the_finished_folder(tracked, monkeypatch):
    import yaml

    import pclsim

    monkeypatch.setenv("PCLSIM_CACHE_DIR", str(tracked / "cache"))
    before = pd.read_parquet(tracked / "out" / "summary.parquet")
    # a finished folder: nothing left to run, so no Ray; the mapping form is the same scenario (same hash)
    for sc in (SMOKE, yaml.safe_load(SMOKE.read_text())):
        res = pclsim.sweep(sc, out=tracked / "out")
        assert isinstance(res, pclsim.Results)
        assert len(res.summary) == len(before)
        np.testing.assert_array_equal(np.sort(res.summary.final_mean.to_numpy()), np.sort(before.final_mean.to_numpy()))
    with pytest.raises(PclsimError, match="different scenario"):
        pclsim.sweep(dict(yaml.safe_load(SMOKE.read_text()), memory_sizes=[40]), out=tracked / "out")


def test_readme_figures_table_from_a_results_folder(tmp_path):
    """benchmarks/readme_figures.py: the table holds the runs' means and names resize and reweighting."""
    import importlib.util
    import itertools

    import pyarrow as pa

    from toy_features import make_tasks
    from pclsim.api import load_results
    from pclsim.study.engine import simulate
    from pclsim.analysis.summary import build_summary
    from pclsim.results.tables import atomic_write_table, rows_table, steps_table
    from pclsim.study.scenario import Run

    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    tasks = make_tasks(3, seed=2)
    sc = {"name": "t", "coreset": {"projection": "jl", "projection_dim": 4, "joint": "composable",
                                   "rebalance": "truncate"},
          "model": {"reweighting": "anomalib", "backbone": "b", "weights": "bundled"},
          "evaluation": {"pixel_metrics": True, "maskless_pixels": "skip"},
          "dataset": {"kind": "synthetic", "resize": "full", "tasks": list(tasks), "image_size": 32}, "seeds": [0]}
    orders = list(itertools.permutations(tasks))[:3]
    pairs = simulate([Run(s, 45, 0, o) for s in ("patchcore_cl", "finetune") for o in orders], tasks, sc, device="cpu")
    out = tmp_path / "res"
    atomic_write_table(rows_table(pairs), out / "matrices.parquet" / "part-a.parquet")
    atomic_write_table(steps_table(pairs, 8), out / "steps.parquet" / "part-a.parquet")
    summary = build_summary(pd.read_parquet(out / "matrices.parquet"), pd.read_parquet(out / "steps.parquet"), {}, 1.0)
    atomic_write_table(pa.Table.from_pandas(summary, preserve_index=False), out / "summary.parquet")
    (out / "scenario.yaml").write_text(__import__("yaml").safe_dump(sc))
    md = rf.figures_markdown(load_results(out))
    assert "**resize `full`**" in md and "**reweighting `anomalib`**" in md and "3 orders" in md
    row = next(line for line in md.splitlines() if line.startswith("| patchcore_cl | 45 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    v = summary[(summary.strategy == "patchcore_cl") & (summary.metric == "image_auroc")].final_mean
    assert cells[2] == "3" and cells[3].split(" ± ")[0] == f"{v.mean():.3f}"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rf.BEGIN}\nold\n{rf.END}\nrest\n")
    rf.update_readme(readme, md)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text and md in text


# ---------------------------------------------------------------- trackers checked before the work

def _tiny(tmp: Path) -> Path:
    """The smoke stream, one strategy and memory size, one order: one Tune trial."""
    import yaml

    sc = yaml.safe_load(SMOKE.read_text())
    sc.update(name="tiny", strategies=["patchcore_cl"], memory_sizes=[30],
              orders=[["Brain_AD", "Liver_AD", "Chest_AD"]])
    p = tmp / "tiny.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _no_wandb_key(monkeypatch, tmp_path):
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_wandb_without_key_fails_before_the_work(tmp_path, monkeypatch):
    """No key and no offline mode: one error line in seconds, before any feature is extracted."""
    if not _have("wandb"):
        pytest.skip("wandb is not installed (pip install -e '.[track]')")
    from pclsim.runner.tracking import check_trackers

    _no_wandb_key(monkeypatch, tmp_path)
    with pytest.raises(PclsimError, match="no W&B API key.*WANDB_MODE=offline"):
        check_trackers(["wandb"], tmp_path / "out", "x")
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_trackers(["wandb"], tmp_path / "out", "x")  # offline: nothing to check
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    check_trackers(["wandb"], tmp_path / "out", "x")

    monkeypatch.delenv("WANDB_API_KEY")
    env = {k: os.environ[k] for k in ("HOME", "NETRC", "WANDB_CONFIG_DIR")}
    env.update(PCLSIM_CACHE_DIR=str(tmp_path / "cache"), RAY_ADDRESS="", PYTHONPATH=str(ROOT))
    t0 = __import__("time").perf_counter()
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(SMOKE), "--out", str(tmp_path / "o"),
                        "--track", "wandb"], capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in {**os.environ, **env}.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")})
    took = __import__("time").perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: --track wandb: no W&B API key") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()
    assert took < 30, took


def test_mlflow_store_that_does_not_answer_or_a_deleted_experiment(tmp_path):
    if not _have("mlflow"):
        pytest.skip("mlflow is not installed (pip install -e '.[track]')")
    import socket
    import time

    import mlflow

    from pclsim.runner.tracking import check_trackers, mlflow_uri

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(PclsimError, match=f"mlflow=http://127.0.0.1:{port}: the tracking store does not answer"):
        check_trackers([f"mlflow=http://127.0.0.1:{port}"], tmp_path, "x")
    assert time.perf_counter() - t0 < 30
    # a deleted experiment of the scenario's name: restore it or track elsewhere
    uri = mlflow_uri(str(tmp_path / "mlruns"), tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("smoke"))
    with pytest.raises(PclsimError, match="experiment 'smoke' was deleted: restore it"):
        check_trackers([f"mlflow={tmp_path / 'mlruns'}"], tmp_path, "smoke")
    check_trackers([f"mlflow={tmp_path / 'mlruns'}"], tmp_path, "another")  # absent: created by the sweep
    check_trackers([f"mlflow=sqlite:///{tmp_path / 'new' / 'db.sqlite'}"], tmp_path, "x")  # a new store
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(PclsimError, match="not writable"):
            check_trackers([f"mlflow={ro / 'mlruns'}"], tmp_path, "x")


def _stop(proc) -> None:
    """End `mlflow server` and every process it started (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _mlflow_server(tmp: Path):
    """`mlflow server` on loopback with a sqlite backend; returns (process, URI) once it answers."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                             "--default-artifact-root", str(tmp / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"),
                            start_new_session=True)  # its uvicorn and job-runner children go with it (killpg)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.25)
        if proc.poll() is not None:
            break
    _stop(proc)
    pytest.fail(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")


@pytest.mark.parametrize("store", ["sqlite", "http"])
def test_mlflow_sqlite_and_http_stores_and_fresh_run_groups(store, tmp_path_factory):
    """The two other kinds of tracking URI, through real sweeps (one Tune trial each): the run, its run
    group tag, parameters and metrics are in the store."""
    if not _have("mlflow"):
        pytest.skip("mlflow is not installed (pip install -e '.[track]')")
    import mlflow
    import yaml

    d = tmp_path_factory.mktemp(f"track-{store}")
    server = None
    if store == "sqlite":
        uri = f"sqlite:///{d / 'mlflow.db'}"
    else:
        server, uri = _mlflow_server(d)
    scenario = _tiny(d)
    env = dict(os.environ, PCLSIM_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "tiny-cache"), RAY_ADDRESS="",
               PYTHONPATH=str(ROOT))
    try:
        groups = []
        r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(scenario), "--out", str(d / "out"),
                            "--track", f"mlflow={uri}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        groups.append(yaml.safe_load((d / "out" / "scenario.yaml").read_text())["run_group"])
        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        assert sorted(x.data.tags["pclsim_run_group"] for x in runs) == sorted(groups)
        summary = pd.read_parquet(d / "out" / "summary.parquet")
        want = summary[summary.metric == "image_auroc"].final_mean.mean()
        for x in runs:
            assert x.info.status == "FINISHED" and x.data.params["strategy"] == "patchcore_cl"
            assert x.data.metrics["image_auroc/final_mean"] == pytest.approx(want, rel=1e-9)
    finally:
        if server is not None:
            _stop(server)


def test_fresh_starts_a_new_run_group_and_says_what_the_experiment_keeps(tmp_path, capsys):
    """A resume keeps the folder's run group, --fresh draws a new one; the tracker callback then says how many
    runs of other groups (earlier sweeps) the experiment keeps: nothing is deleted from a tracker."""
    if not _have("mlflow"):
        pytest.skip("mlflow is not installed (pip install -e '.[track]')")
    import mlflow
    import yaml

    from pclsim.runner.sweep import prepare_output
    from pclsim.runner.tracking import tracker_callbacks
    from pclsim.study.scenario import load_scenario

    sc = load_scenario(SMOKE)
    out = tmp_path / "out"
    prepare_output(sc, out, fresh=False)
    first = yaml.safe_load((out / "scenario.yaml").read_text())["run_group"]
    prepare_output(sc, out, fresh=False)
    assert yaml.safe_load((out / "scenario.yaml").read_text())["run_group"] == first
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("smoke")
    for _ in range(2):
        client.create_run(exp, tags={"pclsim_run_group": first})
    tracker_callbacks([f"mlflow={uri}"], out, sc, {}, quiet=False)
    assert "keeps" not in capsys.readouterr().err  # the runs of this very group are not "earlier sweeps"
    prepare_output(sc, out, fresh=True)
    second = yaml.safe_load((out / "scenario.yaml").read_text())["run_group"]
    assert second != first
    tracker_callbacks([f"mlflow={uri}"], out, sc, {}, quiet=False)
    assert (f"mlflow: experiment 'smoke' keeps 2 run(s) of earlier sweeps; this sweep's runs have the tag "
            f"pclsim_run_group = '{second}'") in capsys.readouterr().err
    tracker_callbacks([f"mlflow={uri}"], out, sc, {}, quiet=True)
    assert capsys.readouterr().err == ""
