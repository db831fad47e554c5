"""Issue 24 end to end: a Ray sweep with label-free thresholds writes their metrics, protocol.json and the
report's sections; the calibration images are held out of the banks."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pclsim.results.protocol_card import protocol_card
from pclsim.study.scenario import resolve
from pclsim_cli import cli

SCENARIO = {
    "name": "thr", "dataset": {"kind": "synthetic", "tasks": ["Brain_AD", "Liver_AD"], "image_size": 64,
                               "synthetic": {"train": 10, "test": 8}, "calibration": 0.2},
    "orders": "all", "strategies": ["patchcore_cl", "joint"], "memory_sizes": [60],
    "evaluation": {"thresholds": [{"fpr": 0.05}, {"sigma": 3}]},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("thr")
    (d / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    r = cli("sweep", d / "s.yaml", "--out", d / "out", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "out"


def test_sweep_writes_threshold_metrics_and_holds_calibration_images_out(swept):
    mat = pd.read_parquet(swept / "matrices.parquet")
    for m in ("image_f1@fpr0.05", "image_fpr@sigma3", "threshold@fpr0.05"):
        assert (mat.metric == m).sum() == 4 * 4          # 4 runs x (2 steps x 2 tasks) cells
    assert (mat.metric == "threshold_drift@sigma3").sum() == 4 * 1  # only after a task's own step
    summ = pd.read_parquet(swept / "summary.parquet")
    assert summ[summ.metric == "image_f1@fpr0.05"].final_mean.notna().all()
    tasks = pd.read_parquet(swept / "tasks.parquet").set_index("task")
    assert (tasks.calibration_images == 2).all()             # round(0.2 x 10)
    assert (tasks.train_patches == 8 * 64).all()             # 8 images left x (64 / 8)^2 patches
    stats = pd.read_parquet(swept / "statistics.parquet")
    assert "image_f1@fpr0.05" in set(stats.metric)           # the order study treats it like any metric


def test_protocol_json_matches_the_scenario_and_the_report_shows_it(swept):
    record = yaml.safe_load((swept / "scenario.yaml").read_text())
    sc = resolve({k: v for k, v in record.items() if k in SCENARIO or k in ("model", "coreset", "seeds")})
    assert json.loads((swept / "protocol.json").read_text()) == json.loads(json.dumps(protocol_card(sc)))
    r = cli("report", swept)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (swept / "report" / "index.html").read_text()
    assert "<h2>Deployed thresholds</h2>" in page and "<h2>Protocol</h2>" in page
    tab = pd.read_csv(swept / "report" / "thresholds.csv")
    summ = pd.read_parquet(swept / "summary.parquet")
    for _, row in tab.iterrows():
        runs = summ[(summ.strategy == row.strategy) & (summ.memory_size == row.memory_size)]
        assert row.deployed_f1 == pytest.approx(runs[runs.metric == f"image_f1@{row.policy}"].final_mean.mean())
        assert row.oracle_f1 == pytest.approx(runs[runs.metric == "image_f1"].final_mean.mean())
        assert row.gap == pytest.approx(row.oracle_f1 - row.deployed_f1, abs=1e-5)  # csv: 6 digits


def test_a_bad_threshold_key_is_one_error_line(tmp_path):
    bad = dict(SCENARIO, evaluation={"thresholds": [{"fpr": 1.5}]})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(bad))
    r = cli("validate", tmp_path / "s.yaml")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "evaluation.thresholds[0]" in r.stderr
