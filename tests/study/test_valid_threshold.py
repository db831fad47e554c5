"""Issue 24: the `valid` threshold on BMAD's labelled validation split (protocol clean), kept out of every bank
and apart from the test set, through the data loader, the feature store and the evaluator."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pclsim.core.features import FeatureExtractor
from pclsim.core.thresholds import fit_valid
from pclsim.data import load_stream
from pclsim.data.bmad import BMAD_LAYOUTS, write_bmad_layout
from pclsim.data.synthetic import synthetic_stream
from pclsim.errors import DataError, ScenarioError
from pclsim.store.cache import load_or_extract
from pclsim.study.engine import evaluator_options, plan_study, prepare_seed, restore_evaluator
from pclsim.study.scenario import Run, resolve

TASKS = ["Brain_AD", "Chest_AD"]   # one with masks, one without


def add_valid_split(root, n_good=3, n_bad=2):
    """Copy some test images (and masks) of each category into its valid/ folders (BMAD ships valid/)."""
    for t in TASKS:
        lay = BMAD_LAYOUTS[t]
        (good, _, _), (bad, _, mask) = lay["test"]
        (vgood, _, _), (vbad, _, vmask) = lay["valid"]
        for src, dst, n in ((good, vgood, n_good), (bad, vbad, n_bad)):
            (root / t / dst).mkdir(parents=True, exist_ok=True)
            for f in sorted((root / t / src).iterdir())[:n]:
                shutil.copy(f, root / t / dst / f.name)
                if mask and vmask and dst == vbad:
                    (root / t / vmask).mkdir(parents=True, exist_ok=True)
                    shutil.copy(root / t / mask / f.name, root / t / vmask / f.name)


@pytest.fixture(scope="module")
def bmad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bmad")
    write_bmad_layout(synthetic_stream(TASKS, train=10, test=8, size=64, seed=0), root, image_size=64)
    add_valid_split(root)
    return root


def dataset(root, **over):
    return {"kind": "bmad", "root": str(root), "tasks": TASKS, "protocol": "clean", "seed": 0, **over}


def test_validation_split_is_appended_after_the_calibration_images(bmad):
    plain = load_stream(dataset(bmad))
    both = load_stream(dataset(bmad, calibration=0.2), validation=True)
    for p, t in zip(plain, both):
        assert t.n_validation == 5 and t.n_calibration == 2 and len(t.train) == len(p.train) + 5
        assert [s.label for s in t.train[-5:]] == [0, 0, 0, 1, 1]
        vdirs = [str(bmad / t.name / d) for d, _, _ in BMAD_LAYOUTS[t.name]["valid"]]
        assert all(str(Path(s.path).parent) in vdirs for s in t.train[-5:])
        assert not any(str(Path(s.path).parent) in vdirs for s in list(t.test) + list(t.train[:-5]))
        assert [s.key for s in t.test] == [s.key for s in p.test]
    assert all(t.n_validation == 0 for t in plain)


def test_valid_threshold_is_the_best_f1_on_the_validation_images_against_each_bank(bmad, tmp_path):
    sc = resolve({"dataset": dataset(bmad, calibration=0.2, image_size=64), "strategies": ["patchcore_cl"],
                  "memory_sizes": [40], "orders": [TASKS],
                  "evaluation": {"thresholds": ["valid", {"fpr": 0.1}]}})
    fe = FeatureExtractor("efficientnet_lite0", "bundled", image_size=64, device="cpu")
    stream = load_stream(sc["dataset"], validation=True)
    tasks = {t.name: load_or_extract(t, fe, cache_root=tmp_path) for t in stream}
    for t in stream:
        tf = tasks[t.name]
        assert tf.validation.shape[0] == 5 and list(tf.validation_labels) == [0, 0, 0, 1, 1]
        assert tf.calibration.shape[0] == 2 and tf.train.shape[0] == (len(t.train) - 7) * tf.test.shape[1]
    runs = [Run("patchcore_cl", 40, 0, tuple(TASKS))]
    (sp,) = plan_study(runs, sc["coreset"]).seeds.values()
    orders, banks, tables = prepare_seed(tasks, sp, sc["coreset"])
    ev = restore_evaluator(tasks, sp, sc["coreset"], orders, banks, tables, **evaluator_options(sc))
    for ref in sorted(sp.refs):
        (t,) = ref.tasks
        scores = ev.scores(f"{t}::validation", (ref,) * 5)[0]
        assert ev.threshold(ref)["valid"] == fit_valid(scores, tasks[t].validation_labels)
    # validation images are in no bank
    for ref in sp.refs:
        bank = ev.bank_vectors(ref).astype(np.float32)
        v = np.asarray(tasks[ref.tasks[0]].validation, np.float32).reshape(-1, bank.shape[1])
        assert np.sqrt(((v[:, None] - bank[None]) ** 2).sum(-1)).min() > 1e-3


def test_valid_is_refused_where_there_is_no_validation_split(bmad):
    with pytest.raises(ScenarioError, match="evaluation.thresholds\\[0\\].*dataset.kind synthetic has none"):
        resolve({"evaluation": {"thresholds": ["valid"]}})
    with pytest.raises(ScenarioError, match="evaluation.thresholds\\[0\\].*protocol paper"):
        resolve({"dataset": dataset(bmad, protocol="paper"), "evaluation": {"thresholds": ["valid"]}})
    for d in (bmad / "Chest_AD" / BMAD_LAYOUTS["Chest_AD"]["valid"][1][0],):
        moved = d.with_name(d.name + ".away")
        d.rename(moved)
        try:
            with pytest.raises(DataError, match="no anomalous validation image"):
                load_stream(dataset(bmad), validation=True)
        finally:
            moved.rename(d)


def test_a_merged_step_keeps_its_categories_validation_splits(bmad):
    (merged,) = load_stream(dataset(bmad, tasks={"M": TASKS}, calibration=0.2), validation=True)
    assert merged.n_validation == 10 and [s.label for s in merged.train[-10:]] == [0, 0, 0, 1, 1] * 2
