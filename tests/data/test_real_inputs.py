"""Issue 13, real-world inputs: each failing case rebuilt small, against the right behaviour.

1. decoding keeps the information a file holds, by one rule whatever the format (images and masks);
2. what can be known before the sweep fails `validate` and the sweep's preflight with exit 2 naming
   the task, split and numbers (one-class test sets, banks larger than a task's patches, a cache folder
   that cannot be created), and errors inside Ray workers reach the user with their own message;
3. a resume on changed data stops instead of keeping stale numbers;
4. Ctrl-C gives exit 130, `error: interrupted after N of M trials`, and no summary;
5. `--address` with no cluster fails in seconds naming the address; ray:// is shipped;
6. YAML octal seeds, __MACOSX folders, Brain's train/good/img, the recorded capped files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import png
import pytest
import tifffile
import yaml
from PIL import Image

from pclsim.data import load_stream
from pclsim.data.images import read_image, read_mask
from pclsim.study.preflight import check_memory, patch_grid, preflight
from pclsim.errors import DataError, PclsimError
from pclsim.study.scenario import load_scenario, resolve

from pclsim_cli import cli

ROOT = Path(__file__).resolve().parents[2]


def error_line(r, code=2):
    """The single stderr line of a failed command (warnings aside), checked for shape."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


def scenario(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body))
    return p


def grey(path: Path, a: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def noise(shape, seed, hi=256, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, hi, shape).astype(dtype)


def folder_task(root: Path, name="cat", n_train=3, n_good=2, n_bad=2, size=(48, 48), masks=False, seed=0):
    """root/name/{train/good, test/good, test/crack[, ground_truth/crack]} of random grey PNGs."""
    cat = root / name
    w, h = size
    for i in range(n_train):
        grey(cat / "train" / "good" / f"{i}.png", noise((h, w), seed + i))
    for i in range(n_good):
        grey(cat / "test" / "good" / f"{i}.png", noise((h, w), seed + 100 + i))
    for i in range(n_bad):
        grey(cat / "test" / "crack" / f"{i}.png", noise((h, w), seed + 200 + i))
        if masks:
            m = np.zeros((h, w), np.uint8)
            m[h // 4: h // 2, w // 4: w // 2] = 255
            grey(cat / "ground_truth" / "crack" / f"{i}_mask.png", m)
    return cat


# ============================================================== 1. decoding

def _rgb16_png(path: Path, a: np.ndarray):
    h, w, _ = a.shape
    png.from_array(a.reshape(h, w * 3), "RGB;16").save(str(path))
    return path


def test_12bit_scan_gives_the_same_pixels_in_every_container(tmp_path):
    """The same 12-bit data (0..4095) as a 16-bit PNG, 16- and 32-bit integer TIFFs and a float TIFF decode to
    the same image: v * 255 / 4095 (its 12-bit range), not v / 257 (near black, 16 levels) nor a min-max stretch."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4096, (40, 56)).astype(np.uint16)
    a[0, 0] = 4095
    a[0, 1] = 7  # the darkest value stays dark: no min-max stretch
    files = [grey(tmp_path / "p16.png", a)]
    for name, dt in (("t16.tif", np.uint16), ("t32.tif", np.int32), ("f32.tif", np.float32)):
        tifffile.imwrite(tmp_path / name, a.astype(dt))
        files.append(tmp_path / name)
    want = np.round(a.astype(np.float64) * 255 / 4095).astype(np.uint8)
    for f in files:
        img = read_image(str(f))
        assert img.shape == (40, 56, 3) and img.dtype == np.uint8, f
        np.testing.assert_array_equal(img[..., 0], want, err_msg=str(f))
        assert (img[..., 0] == img[..., 2]).all()
    assert len(np.unique(want)) > 200  # the information kept: not 16 grey levels


def test_16bit_colour_is_read_at_full_depth(tmp_path):
    """Pillow keeps only the high byte of a 16-bit colour PNG; the decoder reads all bits, like the same TIFF."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4096, (24, 30, 3)).astype(np.uint16)
    a[0, 0] = 4095
    want = np.round(a.astype(np.float64) * 255 / 4095).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb")
    for f in (_rgb16_png(tmp_path / "c.png", a), tmp_path / "c.tif"):
        np.testing.assert_array_equal(read_image(str(f)), want, err_msg=str(f))
    # full 16-bit data: v / 257
    b = rng.integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    b[0, 0] = 65535
    np.testing.assert_array_equal(read_image(str(_rgb16_png(tmp_path / "d.png", b))),
                                  np.round(b / 257.0).astype(np.uint8))


def test_8bit_palette_rgba_bilevel_and_float_follow_the_same_rule(tmp_path):
    rgb = noise((20, 24, 3), 3)
    # 8-bit colour and grey: unchanged
    grey(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb.png")), rgb)
    g = noise((20, 24), 4)
    grey(tmp_path / "g.png", g)
    np.testing.assert_array_equal(read_image(str(tmp_path / "g.png")), np.repeat(g[..., None], 3, 2))
    # RGBA: the colour channels as stored (alpha dropped, not composited)
    rgba = np.dstack([rgb, noise((20, 24), 5)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), rgb)
    # palette: each index becomes its palette colour
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    idx = np.asarray(pal)
    colours = np.array(pal.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(read_image(str(tmp_path / "p.png")), colours[idx])
    # 1-bit: 0 / 255
    bits = noise((20, 24), 6, hi=2).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "b.png"))[..., 0], bits.astype(np.uint8) * 255)
    # float in [0, 1]: normalised intensities
    f = np.random.default_rng(7).random((20, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(read_image(str(tmp_path / "f.tif"))[..., 0], np.round(f * 255.0).astype(np.uint8))
    # a TIFF storing its colour planes one after another: the same image
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), planarconfig="separate", photometric="rgb")
    np.testing.assert_array_equal(read_image(str(tmp_path / "planar.tif")), rgb)
    # 8-bit data in a 16-bit container is 8-bit data
    grey(tmp_path / "g16.png", g.astype(np.uint16))
    np.testing.assert_array_equal(read_image(str(tmp_path / "g16.png"))[..., 0], g)


@pytest.mark.parametrize("values,needle", [
    (np.array([[0.5, np.nan], [0.2, 0.1]], np.float32), "NaN"),
    (np.array([[-1024, 0], [12, 3000]], np.int16), "negative"),
    (np.array([[0.5, 300.25], [2.5, 0.0]], np.float32), "neither 0..1"),
])
def test_values_that_cannot_be_interpreted_name_the_file(tmp_path, values, needle):
    tifffile.imwrite(tmp_path / "odd.tif", values)
    for fn in (read_image, read_mask):
        with pytest.raises(DataError, match=needle) as e:
            fn(str(tmp_path / "odd.tif"))
        assert "odd.tif" in str(e.value)


def _components(m):
    from scipy import ndimage

    return ndimage.label(m)[1]


def test_jpeg_masks_are_thresholded_at_half_range_and_warned_once_per_task(tmp_path):
    """A JPEG (quality 75) mask read as `> 0` grows and splits; at half range it stays the region it was."""
    m = np.zeros((96, 96), np.uint8)
    m[20:50, 30:70] = 255
    m[60:80, 10:30] = 255
    Image.fromarray(m).save(tmp_path / "m.jpg", quality=75)
    got = read_mask(str(tmp_path / "m.jpg"))
    naive = np.asarray(Image.open(tmp_path / "m.jpg")) > 0
    true = m > 0
    iou = (got & true).sum() / (got | true).sum()
    assert iou > 0.97 and _components(got) == 2
    assert naive.sum() > 1.05 * true.sum()  # what `> 0` did: the region grows
    # lossless masks: any non-zero value, whatever its scale or channel
    for name, a in (("01.png", (m > 0).astype(np.uint8)), ("16.png", (m > 0).astype(np.uint16) * 65535)):
        grey(tmp_path / name, a)
        np.testing.assert_array_equal(read_mask(str(tmp_path / name)), true)
    col = np.zeros((96, 96, 3), np.uint8)
    col[..., 2] = (m > 0) * 1  # a barely-blue region: luminance 0, still marked
    grey(tmp_path / "col.png", col)
    np.testing.assert_array_equal(read_mask(str(tmp_path / "col.png")), true)

    # a task whose masks are JPEG: one warning naming the task, whatever the number of masks
    root = tmp_path / "data"
    folder_task(root, "cat", masks=True, n_bad=3)
    for p in (root / "cat" / "ground_truth" / "crack").glob("*.png"):
        Image.open(p).save(p.with_suffix(".jpg"), quality=75)
        p.unlink()
    (task,) = load_stream({"kind": "folder", "tasks": ["cat"]}, str(root))
    said = []
    preflight([task], warn=said.append)
    assert len(said) == 1 and "task cat" in said[0] and "3 masks" in said[0] and "JPEG" in said[0]
    body = {"name": "x", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"], "image_size": 32},
            "memory_sizes": [10], "strategies": ["finetune"]}
    r = cli("validate", scenario(tmp_path, body))
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "task cat" in warn[0]


# ============================================================== 2. known before the sweep

def _bmad_brain(root: Path, n_good=6, n_bad=1):
    cat = root / "Brain_AD"
    for i in range(4):
        grey(cat / "train" / "good" / f"tr{i}.png", noise((48, 48), i))
    for i in range(n_good):
        grey(cat / "test" / "good" / "img" / f"g{i}.png", noise((48, 48), 50 + i))
    for i in range(n_bad):
        grey(cat / "test" / "Ungood" / "img" / f"b{i}.png", noise((48, 48), 90 + i))
        m = np.zeros((48, 48), np.uint8)
        m[10:30, 10:30] = 255
        grey(cat / "test" / "Ungood" / "label" / f"b{i}.png", m)
    return root


def _assert_validate_and_sweep_fail(tmp_path, sc_path, needles, env=None):
    out = tmp_path / "out"
    for cmd in (["validate", sc_path], ["sweep", sc_path, "--out", out, "--quiet"]):
        t0 = time.perf_counter()
        line = error_line(cli(*cmd, env=env))
        for n in needles:
            assert str(n) in line, (n, line)
        assert time.perf_counter() - t0 < 120  # before Ray: no trial, no retry
    assert not (out / "scenario.yaml").exists()  # failed before writing anything


def test_one_class_test_set_fails_before_the_sweep(tmp_path):
    # a test folder with only defect images
    root = tmp_path / "data"
    folder_task(root, "cat", n_good=0, n_bad=3)
    body = {"name": "x", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"], "image_size": 32},
            "memory_sizes": [10], "strategies": ["finetune"]}
    _assert_validate_and_sweep_fail(tmp_path, scenario(tmp_path, body), ["task cat", "split test", "0 normal",
                                                                          "3 anomalous"])


def test_max_test_cap_that_drops_the_only_anomalous_image(tmp_path):
    root = _bmad_brain(tmp_path / "bmad")
    seed = next(s for s in range(50) if not any(
        x.label for x in load_stream({"kind": "bmad", "tasks": ["Brain_AD"], "max_test": 3, "seed": s},
                                     str(root))[0].test))
    body = {"name": "x", "dataset": {"kind": "bmad", "root": str(root), "tasks": ["Brain_AD"], "max_test": 3,
                                     "seed": seed, "image_size": 32}, "memory_sizes": [10], "strategies": ["finetune"]}
    r = cli("validate", scenario(tmp_path, body))
    line = error_line(r)
    assert "task Brain_AD" in line and "3 normal and 0 anomalous" in line and "max_test" in line


def test_memory_larger_than_a_tasks_patches_fails_before_the_sweep(tmp_path):
    """Default memory sizes (1000) with two 48 px training images at image_size 64: 2 x 8 x 8 = 128 patches."""
    root = tmp_path / "data"
    folder_task(root, "cat", n_train=2)
    body = {"name": "x", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"], "image_size": 64}}
    _assert_validate_and_sweep_fail(tmp_path, scenario(tmp_path, body), ["task cat", "split train", "128 patches",
                                                                          "1000"])


def test_patch_grid_without_weights_equals_the_extractors_grid():
    from pclsim.core.features import FeatureExtractor

    for size in (64, 100):
        assert patch_grid({"backbone": "efficientnet_lite0", "layers": None}, size) == \
            tuple(FeatureExtractor("efficientnet_lite0", "bundled", image_size=size).grid)


@pytest.mark.parametrize("strategy,sizes,ok", [
    ("multi_model", [192], True), ("multi_model", [193], False),
    ("patchcore_cl", [192], True), ("patchcore_cl", [193], False),  # first task alone takes all of M
    ("finetune", [193], False), ("joint", [192], True), ("joint", [193], False),
])
def test_check_memory_by_brute_force(strategy, sizes, ok):
    """Two tasks of 3 images, grid 8 x 8: 192 patches each; every bank of every prefix must fit."""

    class T:
        def __init__(self, name):
            self.name, self.train = name, [None] * 3

    sc = resolve({"dataset": {"tasks": ["a", "b"]}, "strategies": [strategy], "memory_sizes": sizes})
    if ok:
        check_memory(sc, [T("a"), T("b")], (8, 8))
    else:
        with pytest.raises(DataError, match="192 patches"):
            check_memory(sc, [T("a"), T("b")], (8, 8))


def test_cache_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = blocker / "cache"
    _assert_validate_and_sweep_fail(tmp_path, ROOT / "scenarios" / "smoke.yaml", [str(cache), "feature-cache"],
                                    env={"PCLSIM_CACHE_DIR": str(cache)})


def test_masks_with_no_anomalous_pixel_after_the_crop_fail_before_the_sweep(tmp_path):
    root = tmp_path / "data"
    cat = folder_task(root, "cat", masks=True, size=(96, 48))
    for p in (cat / "ground_truth" / "crack").glob("*.png"):
        m = np.zeros((48, 96), np.uint8)
        m[:, :3] = 255  # only at the left edge, which the centre crop drops
        grey(p, m)
    body = {"name": "x", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"], "image_size": 32},
            "memory_sizes": [10], "strategies": ["finetune"]}
    line = error_line(cli("validate", scenario(tmp_path, body)))
    assert "task cat" in line and "split test" in line and "2 anomalous images" in line


def test_worker_errors_keep_their_message_and_trial():
    """Tune and Ray wrap a worker's exception; _unwrap gives back its class and message, with the trial."""
    from ray.exceptions import RayTaskError

    from pclsim.runner.sweep import _unwrap

    def wrapped(exc):
        try:
            raise exc
        except Exception as e:
            return RayTaskError("extract", "Traceback ...", e).as_instanceof_cause()

    e = _unwrap(wrapped(DataError("/d/x.png: corrupt image")), "trial g0")
    assert isinstance(e, DataError) and str(e) == "trial g0: /d/x.png: corrupt image"
    e = _unwrap(wrapped(KeyError(200)), "trial finetune-M1000-s0-g0")
    assert isinstance(e, RuntimeError) and not isinstance(e, PclsimError)
    assert str(e) == "trial finetune-M1000-s0-g0: KeyError: 200"


# ============================================================== 3 + 2. a real sweep on files

def _tiny(tmp_path, root):
    return scenario(tmp_path, {"name": "tiny", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"],
                                                           "image_size": 32},
                               "memory_sizes": [8], "strategies": ["finetune"]})


def test_resume_on_changed_data_stops_and_worker_errors_name_the_file(tmp_path):
    root = tmp_path / "data"
    folder_task(root, "cat", masks=True)
    sc, out = _tiny(tmp_path, root), tmp_path / "out"
    e = {"PCLSIM_CACHE_DIR": str(tmp_path / "cache")}
    r = cli("sweep", sc, "--out", out, "--quiet", env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = yaml.safe_load((out / "scenario.yaml").read_text())
    assert meta["data_hash"]
    assert json.loads((out / "data.json").read_text())["tasks"]["cat"]["test_anomalous"] == 2
    before = {p: p.read_bytes() for p in out.rglob("*.parquet") if p.is_file()}
    # the same data: resumes (nothing to do); a replaced mask: stops, the old numbers untouched
    assert cli("sweep", sc, "--out", out, "--quiet", env=e).returncode == 0
    m = np.zeros((48, 48), np.uint8)
    m[5:40, 5:40] = 255
    grey(root / "cat" / "ground_truth" / "crack" / "0_mask.png", m)
    line = error_line(cli("sweep", sc, "--out", out, "--quiet", env=e))
    assert "different data" in line and "--fresh" in line and "scenario.yaml" in line
    assert {p: p.read_bytes() for p in out.rglob("*.parquet") if p.is_file()} == before
    # a value the decoder cannot interpret, found inside a Ray worker: one line naming the file, exit 2
    bad = root / "cat" / "test" / "crack" / "1.png"
    bad.unlink()
    a = np.random.default_rng(0).random((48, 48)).astype(np.float32) * 500  # fractional, beyond 0..1
    tifffile.imwrite(bad.with_suffix(".tif"), a)
    grey(root / "cat" / "ground_truth" / "crack" / "1_mask.png", m)
    line = error_line(cli("sweep", sc, "--out", tmp_path / "out2", "--quiet", env=e))
    assert "1.tif" in line and "neither 0..1" in line


_FAIL_HOOK = """
import importlib.abc, importlib.util, sys

class _Finder(importlib.abc.MetaPathFinder):
    # pclsim.study.engine.run_group raises KeyError(200) in every process (Ray workers included), counting calls
    def find_spec(self, name, path, target=None):
        if name != "pclsim.study.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def run_group(*a, **k):
                with open({log!r}, "a") as f:
                    f.write("call\\n")
                raise KeyError(200)

            module.run_group = run_group

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Finder())
"""


def test_a_deterministic_trial_error_is_reported_once_with_its_trial_and_not_retried(tmp_path):
    """Before: four tracebacks (Tune retried 3 times) and `error: internal error: RuntimeError: sweep failed`."""
    hook = tmp_path / "hook"
    hook.mkdir()
    log = tmp_path / "calls.txt"
    (hook / "sitecustomize.py").write_text(_FAIL_HOOK.format(log=str(log)))
    r = cli("sweep", ROOT / "scenarios" / "smoke.yaml", "--out", tmp_path / "out", "--quiet", "--max-concurrent", "1",
            env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "PCLSIM_CACHE_DIR": str(tmp_path / "cache")})
    line = error_line(r, code=1)
    assert "Traceback" not in r.stderr and "sweep failed" not in line
    assert "KeyError: 200" in line and "trial " in line
    group = line.split("trial ", 1)[1].split(":", 1)[0]
    assert group.endswith("-g0") and group.split("-")[0] in ("patchcore_cl", "finetune", "joint", "multi_model")
    assert log.read_text().count("call") == 1  # not retried, and the sweep stopped at the first failure
    assert not (tmp_path / "out" / "summary.parquet").exists()


# ============================================================== 4. Ctrl-C

def test_ctrl_c_exits_130_without_a_summary_and_resume_completes(tmp_path):
    out = tmp_path / "out"
    e = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT), PCLSIM_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "pclsim.cli", "sweep", str(ROOT / "scenarios" / "smoke.yaml"), "--out", str(out),
           "--quiet", "--max-concurrent", "1"]
    p = subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    parts = out / "matrices.parquet"
    deadline = time.time() + 500
    while not (parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 2):
        assert p.poll() is None and time.time() < deadline, "the sweep ended before it could be interrupted"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = p.communicate(timeout=300)
    done = len(list(parts.glob("part-*.parquet")))
    assert p.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [f"error: interrupted after {done} of 8 trials; rerun the same command to resume"], err[-3000:]
    assert done < 8 and not (out / "summary.parquet").exists()
    r = subprocess.run([c for c in cmd if c != "--quiet"], env=e, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and f"({done} already done)" in r.stderr, r.stderr[-3000:]
    s = pd.read_parquet(out / "summary.parquet")
    assert s.run_id.nunique() == 48


# ============================================================== 5. cluster addresses

@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_address_without_a_cluster_fails_fast_naming_it(tmp_path, address):
    t0 = time.perf_counter()
    line = error_line(cli("sweep", "scenarios/smoke.yaml", "--out", tmp_path / "o", "--address", address,
                          "--quiet", timeout=120))
    assert time.perf_counter() - t0 < 30
    assert address in line and "no Ray cluster" in line and "ray[client]" not in line


def test_ray_client_is_installed_as_the_readme_promises():
    """`--address ray://...` needs Ray Client (grpcio); pyproject ships it with the ray dependency."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_dep = next(d for d in deps if d.startswith("ray["))
    assert "client" in ray_dep.split("]")[0]
    from ray.util.client import ray as client_ray  # noqa: F401  (fails with "requires ray[client]" otherwise)
    import grpc  # noqa: F401


def test_cluster_readme_says_how_a_worker_joins_with_the_token():
    text = (ROOT / "cluster" / "README.md").read_text()
    assert "RAY_AUTH_MODE" in text and "auth_token" in text and "ray start --address" in text
    assert "ray get-auth-token" in text and "ray://" in text


# ============================================================== 6. smaller ones

@pytest.mark.parametrize("body,key,value", [
    ("name: x\nseeds: [010]\n", "seeds[0]", "8"),
    ("name: x\ndataset:\n  seed: 07\n", "dataset.seed", "7"),
    ("name: x\nmemory_sizes: [1:30]\n", "memory_sizes[0]", "90"),
])
def test_yaml_octal_and_base60_numbers_are_errors(tmp_path, body, key, value):
    p = tmp_path / "s.yaml"
    p.write_text(body)
    with pytest.raises(PclsimError) as e:
        load_scenario(p)
    assert f"'{key}'" in str(e.value) and f"read as {value}" in str(e.value) and str(p) in str(e.value)
    line = error_line(cli("validate", p))
    assert key in line
    p.write_text(body.replace("010", "10").replace("07", "7").replace("1:30", "90"))
    load_scenario(p)  # plain numbers are fine


def test_macosx_folders_are_not_tasks_or_classes(tmp_path):
    folder_task(tmp_path, "cat")
    junk = tmp_path / "__MACOSX" / "cat" / "train" / "good"
    junk.mkdir(parents=True)
    (junk / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "cat" / "test" / "__MACOSX").mkdir()
    grey(tmp_path / "cat" / "test" / "__MACOSX" / "0.png", noise((48, 48), 1))
    tasks = load_stream({"kind": "folder", "tasks": None}, str(tmp_path))
    assert [t.name for t in tasks] == ["cat"]
    assert sum(s.label for s in tasks[0].test) == 2 and len(tasks[0].test) == 4


def test_brain_train_good_img_layout_is_accepted(tmp_path):
    root = _bmad_brain(tmp_path, n_bad=2)
    train = root / "Brain_AD" / "train" / "good"
    (train / "img").mkdir()
    for p in train.glob("*.png"):
        p.rename(train / "img" / p.name)
    (task,) = load_stream({"kind": "bmad", "tasks": ["Brain_AD"]}, str(root))
    assert sorted(Path(s.path).name for s in task.train) == [f"tr{i}.png" for i in range(4)]
    assert all(Path(s.path).parent.name == "img" for s in task.train)


def test_files_chosen_by_the_caps_are_recorded_in_the_results(tmp_path):
    root = tmp_path / "data"
    folder_task(root, "cat", n_train=6, n_good=3, n_bad=3)
    (task,) = load_stream({"kind": "folder", "tasks": ["cat"], "max_train": 4, "max_test": 5, "seed": 3}, str(root))
    assert task.chosen is not None and len(task.chosen["train"]) == 4 and len(task.chosen["test"]) == 5
    assert task.chosen["train"] == [Path(s.path).relative_to(root).as_posix() for s in task.train]
    from pclsim.runner.sweep import _data_record

    rec = json.loads(json.dumps(_data_record([task])))
    assert rec["tasks"]["cat"]["chosen"]["test"] == [Path(s.path).relative_to(root).as_posix() for s in task.test]


def test_address_that_accepts_but_is_not_ray_names_the_address(monkeypatch):
    """A proxy or another service may accept the TCP connection; ray.init then fails with ConnectionError,
    which must reach the user as the --address error (exit 2), not as an internal error."""
    import ray

    from pclsim.errors import PclsimError
    from pclsim.runner.cluster import ray_init

    monkeypatch.setattr("pclsim.runner.cluster.probe_address", lambda address: None)

    def refuse(**kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kw['address']}")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(PclsimError, match=r"--address 10\.255\.255\.1:6379: no Ray cluster answers there"):
        ray_init("10.255.255.1:6379", debug=False)


def test_validate_decodes_every_file_unless_headers_only(tmp_path):
    """A file cut after its header and a float TIFF holding NaN pass a header check; `validate` decodes every
    file, so each is one `error:` naming the file before any sweep; --headers-only is the fast header check."""
    root = tmp_path / "data"
    cat = folder_task(root, n_train=4, size=(64, 64))
    sc = scenario(tmp_path, {"name": "dec", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"],
                                                         "image_size": 64}, "memory_sizes": [10]})
    r = cli("validate", sc)
    assert r.returncode == 0, r.stderr
    assert "decoded" in r.stdout
    bad = cat / "test" / "crack" / "1.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    line = error_line(cli("validate", sc))
    assert "1.png" in line and "truncated" in line
    r = cli("validate", sc, "--headers-only")
    assert r.returncode == 0 and "headers read" in r.stdout, r.stderr
    grey(bad, noise((64, 64), 7))
    (cat / "train" / "good" / "3.png").unlink()
    tifffile.imwrite(cat / "train" / "good" / "3.tif", np.full((64, 64), np.nan, np.float32))
    line = error_line(cli("validate", sc))
    assert "3.tif" in line and "NaN" in line
