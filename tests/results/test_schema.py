"""The results contract and the metric registry: chance levels against random scorers, the registry's
errors, the writers' schemas against the contract, atomic writes."""

import os
import stat

import numpy as np
import pyarrow as pa
import pytest

from pclsim import metrics as metric_fns
from pclsim.core.metric_registry import (Metric, chance_of, get_metric, metric_label, metric_names, register_metric,
                                    unregister_metric)
from pclsim.analysis.summary import chance_level
from pclsim.atomic import atomic_write_bytes
from pclsim.results.tables import read_table
from pclsim.results.schema import CATEGORIES, SUMMARY, TABLES, legacy_renames


# ----------------------------------------------------------------------------- chance levels

@pytest.fixture(scope="module")
def random_pixels():
    """Masks with square defects on 1/4 of 64 images, and anomaly maps that know nothing about them."""
    rng = np.random.default_rng(3)
    masks = np.zeros((64, 32, 32), bool)
    for i in range(0, 64, 4):
        y, x = rng.integers(0, 24, 2)
        masks[i, y:y + 8, x:x + 8] = True
    return masks, rng.random(masks.shape)


def test_chance_levels_are_what_random_scores_get(random_pixels):
    """Each registered image/pixel metric's chance level against the metric of uninformative scores."""
    masks, maps = random_pixels
    p = masks.mean()
    for name in metric_names("pixel"):
        got = get_metric(name).function(masks, maps)
        assert chance_level(name, masks=masks) == pytest.approx(got, abs=0.02), name
    rng = np.random.default_rng(4)
    labels = rng.random(40_000) < 0.3
    scores = rng.random(labels.size)
    for name in metric_names("image"):
        got = get_metric(name).function(labels, scores)
        assert chance_level(name, labels=labels) == pytest.approx(got, abs=0.01), name
    # the closed forms the module docstring states
    assert chance_level("pixel_f1", masks=masks) == pytest.approx(2 * p / (1 + p))
    assert chance_level("pixel_aupro") == 0.15
    assert chance_level("task_id_acc", n_tasks=4) == 0.25


def test_unknown_metric_has_no_guessed_baseline(random_pixels):
    """A metric nobody registered raises instead of getting a level picked from its name's suffix."""
    masks, _ = random_pixels
    with pytest.raises(KeyError, match="pixel_iou.*register_metric"):
        chance_level("pixel_iou", masks=masks)
    with pytest.raises(ValueError, match="prevalence"):
        chance_level("image_f1")  # needs the labels
    with pytest.raises(ValueError, match="fraction"):
        chance_of("pixel_pr", 1.5)


def test_registering_a_metric_is_one_call(random_pixels):
    masks, maps = random_pixels

    def iou_of_top(masks, maps):  # toy: IoU of the top-prevalence pixels with the mask
        top = maps >= np.quantile(maps, 1 - masks.mean())
        return float((top & masks).sum() / (top | masks).sum())

    register_metric(Metric("pixel_iou", "pixel", "pixel IoU", lambda p, n_tasks: p / (2 - p), iou_of_top))
    try:
        p = masks.mean()
        assert chance_level("pixel_iou", masks=masks) == pytest.approx(p / (2 - p))
        assert iou_of_top(masks, maps) == pytest.approx(p / (2 - p), abs=0.02)  # the toy level is right, too
        assert metric_label("pixel_iou") == "pixel IoU"
        assert metric_names("pixel")[-1] == "pixel_iou" and "pixel_iou" not in metric_names(table1=True)
        with pytest.raises(ValueError, match="already registered"):
            register_metric(Metric("pixel_iou", "pixel", "again", lambda p, n: 0.0))
    finally:
        unregister_metric("pixel_iou")
    with pytest.raises(KeyError):
        get_metric("pixel_iou")


def test_metric_definition_errors():
    with pytest.raises(ValueError, match="kind"):
        Metric("voxel_auroc", "voxel", "voxel AUROC", lambda p, n: 0.5)
    with pytest.raises(ValueError, match="'\\|'"):
        Metric("image_f1|correct", "image", "x", lambda p, n: 0.5)
    with pytest.raises(ValueError, match="kind"):
        metric_names("voxel")


def test_the_evaluator_computes_exactly_the_registered_metrics():
    """protocol's metric lists (the evaluator's output) and the registry must name the same metrics."""
    from pclsim.study.protocol import IMAGE_METRICS, PIXEL_METRICS

    assert list(IMAGE_METRICS) == metric_names("image")
    assert list(PIXEL_METRICS) == metric_names("pixel")
    assert metric_names("routing") == ["task_id_acc"]
    assert metric_names(table1=True) == ["image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_pr",
                                         "pixel_aupro"]  # the paper's Table 1 (method.md section 7)
    assert get_metric("pixel_pr").function is metric_fns.pixel_pr


# ----------------------------------------------------------------------------- the contract

def test_every_table_is_described():
    assert set(TABLES) == {"matrices", "steps", "summary", "statistics", "routing", "routed", "categories", "tasks",
                           "design"}
    for t in TABLES.values():
        names = [c.name for c in t.columns + t.extra]
        assert len(names) == len(set(names)), t.name
        assert all(c.meaning for c in t.columns + t.extra), t.name
        assert t.file == f"{t.name}.parquet"
        assert set(t.required) | set(t.optional) == set(names)
    assert SUMMARY.optional == ["avg_forgetting_paper_pct", "max_forgetting", "undefined", "maskless_pixels"]
    assert SUMMARY.is_numeric("bank_mb") and not SUMMARY.is_numeric("order")
    with pytest.raises(KeyError, match="summary.parquet"):
        SUMMARY.column("nope")


def test_categories_writer_follows_the_contract():
    from pclsim.results.categories import categories_table

    assert categories_table([]).schema == CATEGORIES.schema


def test_legacy_run_column(tmp_path):
    assert legacy_renames(["trial_id", "value"]) == {"trial_id": "run_id"}
    assert legacy_renames(["trial_id", "run_id"]) == {}  # both present: nothing renamed
    t = pa.table({"trial_id": ["a", "b"], "value": [0.5, 0.75]})
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "m.parquet")
    assert list(read_table(tmp_path / "m.parquet").columns) == ["run_id", "value"]
    assert read_table(tmp_path / "m.parquet", columns=["run_id"]).run_id.tolist() == ["a", "b"]


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_is_shared_readable_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(b"abc", path)
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(TypeError):
        atomic_write_bytes("not bytes", path)  # fails inside the write
    assert path.read_bytes() == b"abc"  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary left
