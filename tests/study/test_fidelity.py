"""Issue 14: resize modes, pretrained weights by name, the paper's treatment of mask-less pixels."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pclsim import metrics as M
from pclsim.data import preprocess
from pclsim.data.images import IMAGENET_MEAN, IMAGENET_STD
from pclsim.study.engine import simulate
from pclsim.errors import DataError, ScenarioError
from pclsim.study.maskless import apply_maskless_policy, maskless_all_ones, maskless_record
from pclsim.core.task_features import TaskFeatures
from pclsim.study.scenario import Run, resolve, scenario_hash

from toy_features import make_tasks
from brute_force import brute_evaluate

ROOT = Path(__file__).resolve().parents[2]


def _norm(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


# ---------------------------------------------------------------- resize: crop | full

@pytest.fixture
def wide():
    """A 60 x 120 image with a marked 20-pixel band at the left border and a mask on that band."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(60, 120, 3), dtype=np.uint8)
    mask = np.zeros((60, 120), bool)
    mask[20:40, 0:20] = True
    return img, mask


def test_full_resizes_the_whole_image_and_its_mask(wide):
    img, mask = wide
    x, m = preprocess(img, mask, 32, resize="full")
    ref = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(x, _norm(ref), atol=1e-5)
    ref_m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((32, 32), Image.NEAREST)) > 0
    np.testing.assert_array_equal(m, ref_m)
    # the border lesion survives: columns 0..20 of 120 are columns 0..5.3 of 32
    assert m[:, :5].any() and not m[:, 6:].any()


def test_crop_drops_the_borders_with_the_mask(wide):
    img, mask = wide
    x, m = preprocess(img, mask, 32)  # default: the authors' crop
    short = round(32 * 256 / 224)  # 37: the 60 x 120 image becomes 37 x 74
    ref = Image.fromarray(img).resize((74, 37), Image.BILINEAR)
    left, top = round((74 - 32) / 2), round((37 - 32) / 2)
    ref = np.asarray(ref.crop((left, top, left + 32, top + 32)))
    assert short == 37
    np.testing.assert_allclose(x, _norm(ref), atol=1e-5)
    assert not m.any()  # the lesion at the left border is cut away
    x2, m2 = preprocess(img, mask, 32, resize="crop")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(m2, m)


def test_unknown_resize_mode_is_an_error(wide):
    with pytest.raises(DataError, match="dataset.resize"):
        preprocess(wide[0], None, 32, resize="stretch")
    with pytest.raises(ScenarioError, match="dataset.resize"):
        resolve({"dataset": {"resize": "stretch"}})


def test_resize_changes_features_and_their_cache_key(tmp_path):
    from pclsim.store.cache import load_or_extract
    from pclsim.data import synthetic_stream
    from pclsim.core.features import FeatureExtractor

    task = synthetic_stream(("Brain_AD",), train=2, test=2, size=64, seed=0)[0]
    crop = FeatureExtractor(image_size=64, device="cpu")
    full = FeatureExtractor(image_size=64, device="cpu", resize="full")
    assert crop.cache_key() != full.cache_key()
    a = load_or_extract(task, crop, cache_root=tmp_path, workers=0, dtype="float32")  # exact values to compare
    b = load_or_extract(task, full, cache_root=tmp_path, workers=0, dtype="float32")
    assert len([p for p in (tmp_path / "features").iterdir() if (p / "meta.json").exists()]) == 2  # two store entries
    assert not np.allclose(a.test, b.test)
    # 'full' on a square image of the target size is no resize at all: features of the raw pixels
    img, _ = task.test[0].load()
    with torch.inference_mode():
        ref = full.embed(torch.from_numpy(_norm(img)[None]))
    np.testing.assert_allclose(b.test[0], ref[0].numpy(), rtol=1e-4, atol=1e-4)


def test_scenario_hash_of_old_scenarios_is_unchanged_and_new_keys_count():
    base = resolve({"name": "x"})
    body = {k: v for k, v in base.items()}
    body["dataset"] = {k: v for k, v in base["dataset"].items() if k != "resize"}
    body["evaluation"] = {k: v for k, v in base["evaluation"].items() if k != "maskless_pixels"}
    assert scenario_hash(base) == scenario_hash(body)  # a 0.1.0 results folder still resumes
    assert scenario_hash(resolve({"dataset": {"resize": "full"}})) != scenario_hash(base)
    assert scenario_hash(resolve({"evaluation": {"maskless_pixels": "paper"}})) != scenario_hash(base)


def test_validate_names_resize_reweighting_and_maskless_policy(tmp_path):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "v", "dataset": {"tasks": ["Brain_AD", "Chest_AD"], "image_size": 64,
                                                          "resize": "full", "synthetic": {"train": 2, "test": 2}},
                                 "model": {"reweighting": "anomalib"}, "evaluation": {"maskless_pixels": "paper"},
                                 "memory_sizes": [10]}))
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "validate", str(p)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("resize:"))
    assert "resize: full" in line and "reweighting: anomalib" in line and "maskless pixels: paper" in line


# ---------------------------------------------------------------- weights: pretrained

_FAKE_HUB = """
import os, sys, torch, timm
from safetensors.torch import save_file
snap = os.path.join(sys.argv[1], "hub", "models--timm--efficientnet_lite0.ra_in1k")
rev = "0" * 40
os.makedirs(os.path.join(snap, "refs"), exist_ok=True)
os.makedirs(os.path.join(snap, "snapshots", rev), exist_ok=True)
open(os.path.join(snap, "refs", "main"), "w").write(rev)
torch.manual_seed(7)
sd = timm.create_model("efficientnet_lite0").state_dict()
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(snap, "snapshots", rev, "model.safetensors"))
torch.save(sd, sys.argv[2])
"""

_LOAD = """
import sys, torch
from pclsim.core.backbones import load_backbone
from pclsim.errors import ModelError
try:
    m, layers = load_backbone("efficientnet_lite0", "pretrained")
except ModelError as e:
    print("ModelError:", e); sys.exit(3)
ref = torch.load(sys.argv[1], weights_only=True)
sd = m.state_dict()
assert all(torch.equal(sd[k], ref[k]) for k in ref), "weights differ"
print("ok", layers)
"""


def _offline_env(home: Path) -> dict:
    # no network: the hub is told to stay offline and every cache points into the test's folder
    return dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", TORCH_HOME=str(home / "torch"),
                XDG_CACHE_HOME=str(home / "xdg"), PYTHONPATH=str(ROOT))


def test_pretrained_weights_come_from_the_hub_cache_by_name(tmp_path):
    home = tmp_path / "hf"
    ref = tmp_path / "ref.pth"
    subprocess.run([sys.executable, "-c", _FAKE_HUB, str(home), str(ref)], check=True, env=_offline_env(home))
    r = subprocess.run([sys.executable, "-c", _LOAD, str(ref)], capture_output=True, text=True, env=_offline_env(home))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok ('blocks.2', 'blocks.4')" in r.stdout


def test_pretrained_offline_without_cache_names_the_model_and_the_fix(tmp_path):
    home = tmp_path / "empty"
    r = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "none.pth")], capture_output=True, text=True,
                       env=_offline_env(home))
    assert r.returncode == 3, r.stdout + r.stderr
    msg = r.stdout.strip()
    assert "efficientnet_lite0" in msg and "model.weights" in msg and "local path" in msg
    assert "\n" not in msg


def test_pretrained_is_a_weights_choice_not_a_path():
    sc = resolve({"model": {"weights": "pretrained"}})
    assert sc["model"]["weights"] == "pretrained"
    from pclsim.core.backbones import pretrained_id

    assert pretrained_id("efficientnet_lite0") != pretrained_id("resnet18")
    assert "timm/efficientnet_lite0" in pretrained_id("efficientnet_lite0")


# ---------------------------------------------------------------- maskless_pixels: skip | paper

def _one_patch_task(dists, labels, name="Chest_AD") -> TaskFeatures:
    """A task with a 1 x 1 patch grid and one train patch at the origin: image i's patch distance is dists[i]."""
    test = np.zeros((len(dists), 1, 2), np.float32)
    test[:, 0, 0] = dists
    return TaskFeatures(name, np.zeros((1, 2), np.float32), test, np.asarray(labels, np.int64), None, (1, 1), 32)


def test_paper_masks_reproduce_a_hand_computed_case():
    dists = [1.0, 2.0, 5.0, 3.0, 4.0, 6.0, 0.5, 2.5]
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    task = _one_patch_task(dists, labels)
    ones = maskless_all_ones(task.labels, task.name, seed=0)
    assert not ones[task.labels == 0].any()
    # the record lists exactly the images that got all-1 masks
    assert list(np.flatnonzero(ones)) == maskless_record({"Chest_AD": task}, "paper", 0)["Chest_AD"]
    got = apply_maskless_policy({"Chest_AD": task}, "paper", 0)["Chest_AD"]
    assert got.masks.shape == (8, 32, 32)
    for i in range(8):
        assert got.masks[i].all() if ones[i] else not got.masks[i].any()
    res, _ = brute_evaluate(got, [np.zeros((1, 2), np.float32)], identify=False, reweighting="none")
    # a constant map per image (1 x 1 grid, blur of a constant): pixel AUROC = the share of
    # (all-1 image, all-0 image) pairs whose distance is larger
    pos = [d for d, o in zip(dists, ones) if o]
    neg = [d for d, o in zip(dists, ones) if not o]
    expect = sum(p > n for p in pos for n in neg) / (len(pos) * len(neg))
    assert res["pixel_auroc"] == pytest.approx(expect, abs=1e-9)
    assert res["image_auroc"] == pytest.approx(M.image_auroc(np.array(labels), np.array(dists)))


def test_a_concrete_draw_by_hand():
    # three anomalous images with distances 3, 4, 6 and all-1 masks only on the 6: every all-1 pixel
    # (6) beats every all-0 pixel (1, 2, 3, 4): pixel AUROC 1; on the 3 alone: beats 1 and 2 of 1, 2, 4, 6: 0.5
    task = _one_patch_task([1.0, 2.0, 3.0, 4.0, 6.0], [0, 0, 1, 1, 1])
    for ones, expect in (([4], 1.0), ([2], 0.5)):
        masks = np.zeros((5, 32, 32), bool)
        masks[ones] = True
        t = TaskFeatures(task.name, task.train, task.test, task.labels, masks, task.grid, 32)
        res, _ = brute_evaluate(t, [task.train], identify=False, reweighting="none")
        assert res["pixel_auroc"] == pytest.approx(expect)


def test_paper_draw_is_seeded_per_task_and_independent_of_the_stream():
    labels = np.ones(200, np.int64)
    a = maskless_all_ones(labels, "Chest_AD", 0)
    assert np.array_equal(a, maskless_all_ones(labels, "Chest_AD", 0))
    assert not np.array_equal(a, maskless_all_ones(labels, "Chest_AD", 1))
    assert not np.array_equal(a, maskless_all_ones(labels, "Histopathology_AD", 0))
    assert 70 < a.sum() < 130  # a fair coin
    with pytest.raises(ValueError, match="maskless_pixels"):
        apply_maskless_policy({}, "random", 0)


def test_skip_gives_todays_values_and_paper_adds_pixels_for_maskless_tasks():
    tasks = make_tasks(3, seed=4, masks_for=(0,))
    orders = list(itertools.permutations(tasks))[:2]
    runs = [Run(s, 45, 0, o) for s in ("patchcore_cl", "joint") for o in orders]
    base = {"coreset": {"projection": "jl", "projection_dim": 4, "joint": "composable"},
            "model": {"reweighting": "paper"}, "evaluation": {"pixel_metrics": True}}
    today = simulate(runs, tasks, base, device="cpu")
    skip = simulate(runs, tasks, dict(base, evaluation={"pixel_metrics": True, "maskless_pixels": "skip"}),
                    device="cpu")
    paper = simulate(runs, tasks, dict(base, evaluation={"pixel_metrics": True, "maskless_pixels": "paper"}),
                     device="cpu")
    assert apply_maskless_policy(tasks, "skip", 0) is tasks
    for (r, a), (_, b), (_, c) in zip(today, skip, paper):
        assert set(a.matrices) == set(b.matrices)
        for k in a.matrices:
            np.testing.assert_array_equal(a.matrices[k], b.matrices[k])
        pos = {t: i for i, t in enumerate(r.order)}
        pa, pc = a.matrices["pixel_auroc"], c.matrices["pixel_auroc"]
        # skip: pixel values only for T0 (the task with masks); paper: for every task
        assert np.isnan(pa[:, pos["T1"]]).all() and np.isfinite(pc).all()
        np.testing.assert_array_equal(pa[:, pos["T0"]], pc[:, pos["T0"]])
        np.testing.assert_array_equal(a.matrices["image_auroc"], c.matrices["image_auroc"])


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite0.ra_in1k"])
def test_validate_names_the_weights_a_pretrained_backbone_really_loads(tmp_path, backbone):
    """Issue 28: untagged and tagged names both print the tag timm resolves and the digest of the weights
    loaded (here a cached copy made by the test, offline); run_info and the record carry the same."""
    import torch

    from pclsim.core.backbones import _create, weights_digest

    home = tmp_path / "hf"
    ref = tmp_path / "ref.pth"
    subprocess.run([sys.executable, "-c", _FAKE_HUB, str(home), str(ref)], check=True, env=_offline_env(home))
    model = _create("efficientnet_lite0")
    model.load_state_dict(torch.load(ref, weights_only=True))
    sc = tmp_path / "s.yaml"
    sc.write_text((ROOT / "scenarios/smoke.yaml").read_text().replace(
        "  backbone: efficientnet_lite0\n  weights: bundled", f"  backbone: {backbone}\n  weights: pretrained"))
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "validate", str(sc), "--headers-only"], capture_output=True,
                       text=True, cwd=ROOT, env=_offline_env(home), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"backbone: efficientnet_lite0.ra_in1k (weights pretrained, digest {weights_digest(model)}," in r.stdout
