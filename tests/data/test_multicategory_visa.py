"""Issue 14: multi-category steps (merged tasks, per-category values) and the VisA data-set kind."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pclsim.store.cache import load_or_extract
from pclsim.data import load_stream
from pclsim.results.categories import categories_table
from pclsim.data.merge import category_parts
from pclsim.study.engine import simulate
from pclsim.errors import DataError, ScenarioError
from pclsim.core.features import FeatureExtractor
from brute_force import brute_evaluate
from pclsim.study.banks import BankBuilder, SelectionNeeds
from pclsim.core.task_features import TaskFeatures
from pclsim.study.scenario import Run, resolve
from pclsim.study.strategies import BankRef

ROOT = Path(__file__).resolve().parents[2]
SC = {"coreset": {"projection": "jl", "projection_dim": 16, "joint": "composable"},
      "model": {"reweighting": "paper"}, "evaluation": {"pixel_metrics": True}}


def _features(dataset: dict, cache: Path) -> tuple[dict[str, TaskFeatures], list]:
    streams = load_stream(dataset)
    ex = FeatureExtractor(image_size=64, device="cpu")
    return {t.name: load_or_extract(t, ex, cache_root=cache, workers=0) for t in streams}, streams


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    base = {"kind": "synthetic", "image_size": 64, "synthetic": {"train": 4, "test": 6, "seed": 0}}
    spec = {"A": ["Brain_AD", "Liver_AD"], "B": ["Chest_AD"]}
    m_tasks, m_streams = _features(dict(base, tasks=spec), cache)
    p_tasks, _ = _features(dict(base, tasks=["Brain_AD", "Liver_AD", "Chest_AD"]), cache)
    return m_tasks, m_streams, p_tasks


def test_merged_tasks_concatenate_their_categories(merged):
    m_tasks, streams, p_tasks = merged
    a, b = streams
    assert (a.name, b.name) == ("A", "B")
    assert a.categories == (("Brain_AD", 4, 6), ("Liver_AD", 4, 6)) and b.categories == (("Chest_AD", 4, 6),)
    assert a.has_masks and not b.has_masks  # Chest_AD has no masks
    np.testing.assert_array_equal(m_tasks["A"].test, np.concatenate([p_tasks["Brain_AD"].test, p_tasks["Liver_AD"].test]))
    np.testing.assert_array_equal(m_tasks["A"].train,
                                  np.concatenate([p_tasks["Brain_AD"].train, p_tasks["Liver_AD"].train]))
    np.testing.assert_array_equal(m_tasks["B"].test, p_tasks["Chest_AD"].test)
    assert category_parts(streams) == {"A": [("Brain_AD", 6), ("Liver_AD", 6)], "B": [("Chest_AD", 6)]}


def test_merged_stream_runs_with_per_category_values(merged):
    m_tasks, streams, p_tasks = merged
    parts = category_parts(streams)
    M = 60
    orders = list(itertools.permutations(["A", "B"]))
    runs = [Run(s, M, 0, o) for s in ("multi_model", "patchcore_cl", "joint") for o in orders]
    out = simulate(runs, m_tasks, SC, device="cpu", categories=parts)
    for r, res in out:
        assert res.matrices["image_auroc"].shape == (2, 2) and np.isfinite(res.matrices["image_auroc"]).all()
        assert res.categories.names == [f"{m}/{c}" for m in r.order for c, _ in parts[m]]
        assert not np.isnan(res.categories.matrices["image_auroc"]).any()
    # multi_model: each merged task has its own bank; a category's values are the metrics over its slice
    r, res = next(p for p in out if p[0].strategy == "multi_model" and p[0].order == ("A", "B"))
    refs = [BankRef("task", ("A",), M)]
    bank_a = BankBuilder(m_tasks, SelectionNeeds.of(refs), projection_dim=SC["coreset"]["projection_dim"],
                         seed=0).bank_vectors(refs[0])
    for k, (cat, sl) in enumerate((("Brain_AD", slice(0, 6)), ("Liver_AD", slice(6, 12)))):
        tf = m_tasks["A"]
        sub = TaskFeatures(cat, tf.train[:0], tf.test[sl], tf.labels[sl], tf.masks[sl], tf.grid, tf.image_size)
        ref, _ = brute_evaluate(sub, [bank_a], identify=False, reweighting="paper")
        col = res.categories.names.index(f"A/{cat}")
        for metric in ("image_auroc", "image_f1", "pixel_auroc", "pixel_aupro"):
            assert res.categories.matrices[metric][1, col] == pytest.approx(ref[metric], abs=1e-6), metric
    # the table beside the matrices: one row per (run, step, merged task, category, metric)
    t = categories_table([(r, res, res.categories) for r, res in out]).to_pandas()
    assert set(t.category) == {"Brain_AD", "Liver_AD", "Chest_AD"} and set(t.eval_task) == {"A", "B"}
    assert "pixel_auroc" not in set(t[t.category == "Chest_AD"].metric)


def test_a_merged_task_of_one_category_gives_that_category_alone(merged):
    m_tasks, streams, p_tasks = merged
    M = 60
    mm = simulate([Run("multi_model", M, 0, ("A", "B"))], m_tasks, SC, device="cpu",
                  categories=category_parts(streams))[0][1]
    alone = simulate([Run("multi_model", M, 0, ("Brain_AD", "Liver_AD", "Chest_AD"))], p_tasks, SC, device="cpu")[0][1]
    for metric in ("image_auroc", "image_f1"):
        b_merged = mm.matrices[metric][:, 1]          # B, after each of the two steps
        chest = alone.matrices[metric][1:, 2]         # Chest_AD alone (third task), after steps 1 and 2
        assert b_merged[1] == chest[1]                # after training: exactly equal
        assert mm.categories.matrices[metric][1, mm.categories.names.index("B/Chest_AD")] == b_merged[1]


def test_task_mapping_is_validated():
    sc = resolve({"dataset": {"tasks": {"A": ["Brain_AD", "Liver_AD"], "B": "Chest_AD"}}, "memory_sizes": [10]})
    assert sc["dataset"]["tasks"] == {"A": ["Brain_AD", "Liver_AD"], "B": ["Chest_AD"]}
    for bad, msg in (({"A": ["Brain_AD"], "B": ["Brain_AD"]}, "already in"), ({"A/x": ["Brain_AD"]}, "without"),
                     ({"A": []}, "non-empty")):
        with pytest.raises(ScenarioError, match=msg):
            resolve({"dataset": {"tasks": bad}})
    with pytest.raises(ScenarioError, match="unknown task 'Brain_AD'"):
        resolve({"dataset": {"tasks": {"A": ["Brain_AD"], "B": ["Chest_AD"]}}, "orders": [["Brain_AD", "B"]]})


# ---------------------------------------------------------------- VisA

def _png(path: Path, a: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture
def visa(tmp_path):
    """A tiny VisA: two objects, 3 normal train, 2 normal + 2 anomalous test each, JPG images, PNG masks."""
    root = tmp_path / "VisA"
    rng = np.random.default_rng(0)
    rows = []
    for obj in ("candle", "pcb1"):
        for split, label, n in (("train", "normal", 3), ("test", "normal", 2), ("test", "anomaly", 2)):
            for i in range(n):
                kind = "Normal" if label == "normal" else "Anomaly"
                img = f"{obj}/Data/Images/{kind}/{split}{i:03d}.JPG"
                _png_path = root / img
                _png_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(_png_path, format="JPEG")
                mask = ""
                if label == "anomaly":
                    mask = f"{obj}/Data/Masks/Anomaly/{split}{i:03d}.png"
                    m = np.zeros((40, 60), np.uint8)
                    m[10:20, 5:15] = 1 + i  # VisA masks hold small integers, not 255
                    _png(root / mask, m)
                rows.append([obj, split, label, img, mask])
    (root / "split_csv").mkdir()
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def test_visa_layout_from_its_split_csv(visa):
    tasks = load_stream({"kind": "visa", "root": str(visa), "tasks": None})
    assert [t.name for t in tasks] == ["candle", "pcb1"]
    for t in tasks:
        assert len(t.train) == 3 and len(t.test) == 4 and t.has_masks
        assert sorted(s.label for s in t.test) == [0, 0, 1, 1]
        for s in t.test:
            img, mask = s.load()
            assert img.shape == (40, 60, 3)
            if s.label:
                assert mask.sum() == 100 and mask[10:20, 5:15].all()
            else:
                assert mask is None
    one = load_stream({"kind": "visa", "root": str(visa), "tasks": ["pcb1"], "max_test": 3})
    assert [t.name for t in one] == ["pcb1"] and len(one[0].test) == 3


def test_visa_errors_name_the_file(visa):
    with pytest.raises(DataError, match="unknown object 'candel'"):
        load_stream({"kind": "visa", "root": str(visa), "tasks": ["candel"]})
    (visa / "pcb1" / "Data" / "Masks" / "Anomaly" / "test001.png").unlink()
    with pytest.raises(DataError, match=r"test001.png: mask listed in split_csv/1cls.csv \(line \d+\) not found"):
        load_stream({"kind": "visa", "root": str(visa), "tasks": ["pcb1"]})
    (visa / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DataError, match="VisA split file not found"):
        load_stream({"kind": "visa", "root": str(visa), "tasks": None})


def test_visa_and_merged_tasks_through_validate(visa, tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text(yaml.safe_dump({"name": "v", "dataset": {"kind": "visa", "root": str(visa), "image_size": 64,
                                                          "tasks": {"step0": ["candle"], "step1": ["pcb1"]}},
                                 "memory_sizes": [20], "strategies": ["patchcore_cl"]}))
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "validate", str(p)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "task step0: 3 train, 4 test (2 anomalous)" in r.stdout and "orders: 2" in r.stdout


# ---------------------------------------------------------------- end to end through the Ray sweep

def test_merged_scenario_sweeps_end_to_end_with_categories_and_paper_masks(tmp_path):
    import pandas as pd

    from pclsim.study.maskless import maskless_record

    sc = {"name": "merged", "dataset": {"kind": "synthetic", "tasks": {"A": ["Brain_AD", "Liver_AD"], "B": ["Chest_AD"]},
                                        "image_size": 64, "synthetic": {"train": 6, "test": 8, "seed": 0}},
          "strategies": ["patchcore_cl", "multi_model"], "memory_sizes": [30],
          "evaluation": {"maskless_pixels": "paper"}}
    p = tmp_path / "merged.yaml"
    p.write_text(yaml.safe_dump(sc))
    out, cache = tmp_path / "out", tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(p), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), PCLSIM_CACHE_DIR=str(cache), RAY_ADDRESS=""))
    assert r.returncode == 0, r.stderr[-3000:]
    mat = pd.read_parquet(out / "matrices.parquet")
    cats = pd.read_parquet(out / "categories.parquet")
    id_col = "run_id" if "run_id" in mat.columns else "trial_id"
    assert set(mat.eval_task) == {"A", "B"}  # one matrix column per merged task
    assert {"pixel_auroc", "pixel_f1"} <= set(mat[mat.eval_task == "B"].metric)  # paper masks for mask-less B
    assert set(zip(cats.eval_task, cats.category)) == {("A", "Brain_AD"), ("A", "Liver_AD"), ("B", "Chest_AD")}
    tasks_pq = pd.read_parquet(out / "tasks.parquet").set_index("task")
    assert set(tasks_pq.maskless_pixels) == {"paper"}
    assert set(pd.read_parquet(out / "summary.parquet").maskless_pixels) == {"paper"}
    # the Ray executor and the in-process one agree exactly, categories included
    feats, streams = _features(dict(sc["dataset"]), cache)
    rec = maskless_record(feats, "paper", 0)
    assert list(tasks_pq.loc["B", "maskless_all_ones"]) == rec["B"] and list(tasks_pq.loc["A", "maskless_all_ones"]) == []
    full = resolve(dict(sc))
    from pclsim.study.scenario import expand_runs

    for run, res in simulate(expand_runs(full), feats, full, device="cpu", categories=category_parts(streams)):
        got = mat[mat[id_col] == run.trial_id]
        for metric, a in res.matrices.items():
            for s in range(2):
                for j, t in enumerate(run.order):
                    v = got[(got.metric == metric) & (got.step == s) & (got.eval_task == t)].value
                    assert len(v) == 1 and v.iloc[0] == a[s, j], (run, metric, s, t)
        c = cats[cats[id_col] == run.trial_id]
        for metric, a in res.categories.matrices.items():
            for s in range(2):
                for k, name in enumerate(res.categories.names):
                    m, cat = name.split("/")
                    v = c[(c.metric == metric) & (c.step == s) & (c.category == cat)].value
                    assert len(v) == 1 and v.iloc[0] == a[s, k], (run, metric, s, name)
