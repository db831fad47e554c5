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
