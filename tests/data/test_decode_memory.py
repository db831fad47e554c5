"""Issue 26, item 1: bounded decode memory and a real pixel limit.

1. the 8-bit scaling gives, value for value, what the former float64 formula gave (kept here as the
   reference) on every 1..16-bit integer value, on floats and on 32-bit integers, through the row-block
   paths too; whole files decode to the same pixels and masks as the former pipeline;
2. the peak memory of one decode, measured in a fresh process, stays within the bound the preflight reports;
3. the pixel limit (PCLSIM_MAX_IMAGE_PIXELS) is checked from the header, with our error, never Pillow's
   warning or error; `pclsim validate` states the largest image and its decode memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import yaml
from PIL import Image

from pclsim.data import decoding
from pclsim.data.images import (bit_depth, decode_memory_bound, image_header, max_image_pixels, read_image,
                                read_mask, to_uint8)
from pclsim.errors import DataError, PclsimError

from pclsim_cli import cli

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------- the former decoding rule, kept as the reference

def old_bit_depth(a: np.ndarray) -> int:
    """bit_depth as it was before the row blocks (whole-array temporaries)."""
    if a.dtype == bool:
        return 1
    if a.dtype == np.uint8:
        return 8
    lo, hi = a.min(), a.max()
    if a.dtype.kind == "f":
        assert np.isfinite(lo) and np.isfinite(hi)
        if lo >= 0 and hi <= 1:
            return 0
        assert np.all(a == np.rint(a))
    assert lo >= 0
    need = int(hi).bit_length()
    return max(8, need + (need % 2))


def old_to_uint8(a: np.ndarray) -> np.ndarray:
    b = old_bit_depth(a)
    if b == 8:
        return np.ascontiguousarray(a, dtype=np.uint8) if a.dtype == np.uint8 else np.rint(a).astype(np.uint8)
    scale = 255.0 if b == 0 else 255.0 / (2.0 ** b - 1.0)
    return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def old_read_image(a: np.ndarray) -> np.ndarray:
    """The former read_image after decoding: drop alpha, scale, grey to three channels."""
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :-1] if a.shape[2] == 4 else a[..., 0]
    a = old_to_uint8(a)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def old_read_mask(a: np.ndarray, lossy: bool) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :-1] if a.shape[2] == 4 else a[..., 0]
    b = old_bit_depth(a)
    if a.ndim == 3:
        a = a.max(axis=2)
    if lossy and b > 1:
        return a.astype(np.float64) > (2.0 ** b - 1.0) / 2.0
    return a > 0


@pytest.fixture(params=[None, 1000], ids=["one-block", "blocks-of-1000"])
def blocks(request, monkeypatch):
    """Run with the default block size, and with blocks of 1000 values so every path is cut into many."""
    if request.param:
        monkeypatch.setattr(decoding, "BLOCK_ELEMENTS", request.param)
    return request.param


# ============================================================== 1. the same values as before

@pytest.mark.parametrize("k", range(1, 17))
def test_every_integer_value_of_1_to_16_bits_scales_as_the_float64_formula(k, blocks):
    """All of 0 .. 2**k - 1, in every integer container that holds them and as integral floats; the depth
    b the rule picks is 8, 10, ..., 16 (values of fewer bits land in the 8-bit range)."""
    v = np.arange(2 ** k, dtype=np.int64)
    dtypes = [np.uint16, np.int32, np.uint32, np.int64, np.float32, np.float64] + ([np.uint8] if k <= 8 else []) \
        + ([np.int16] if k <= 15 else [])
    for dt in dtypes:
        for shape in ((v.size,), (v.size // 2 or 1, -1) if v.size > 1 else (1, 1), (1, v.size, 1)):
            a = v.astype(dt).reshape(shape)
            got = to_uint8(a)
            want = old_to_uint8(a)
            assert got.dtype == np.uint8 and got.shape == a.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{k} bits as {np.dtype(dt).name} {shape}")
            assert bit_depth(a) == old_bit_depth(a)
    # the same values in a colour image with a non-contiguous channel view (alpha dropped)
    rgba = np.stack([v, v[::-1], v, v], axis=-1).astype(np.uint16).reshape(1, -1, 4)
    np.testing.assert_array_equal(to_uint8(rgba[..., :3]), old_to_uint8(rgba[..., :3]))


def test_bilevel_data_is_0_or_255_whatever_byte_marks_true(blocks):
    """Pillow's mode-'1' arrays store True as byte 255, numpy's as 1: both must give 255, never 255 * 255 % 256."""
    raw = np.frombuffer(bytes([0, 255, 1, 0, 7, 255] * 500), dtype=bool).reshape(60, 50)
    np.testing.assert_array_equal(to_uint8(raw), old_to_uint8(raw))
    assert set(np.unique(to_uint8(raw))) == {0, 255}
    np.testing.assert_array_equal(to_uint8(raw.astype(np.uint8).astype(bool)), old_to_uint8(raw))


def test_floats_and_32_bit_integers_scale_as_the_float64_formula(blocks):
    rng = np.random.default_rng(0)
    f = rng.random((70, 300)).astype(np.float32)
    f[0, :256] = np.arange(256) / 255.0  # every exact level
    f[1, :255] = (np.arange(255) + 0.5) / 255.0  # every half-way point: rounding to even must agree
    f[2, :3] = (0.0, 1.0, np.nextafter(np.float32(1), np.float32(0)))
    cases = {"float32 [0, 1]": f, "float64 [0, 1]": f.astype(np.float64) ** 1.5,
             "float32 whole 12-bit": rng.integers(0, 4096, (33, 65)).astype(np.float32),
             "float64 whole 20-bit": rng.integers(0, 2 ** 20, (33, 65)).astype(np.float64),
             "uint32 full range": np.concatenate([rng.integers(0, 2 ** 32, 2000, dtype=np.uint64),
                                                  [0, 2 ** 32 - 1]]).astype(np.uint32).reshape(2, -1),
             "int32 31-bit": rng.integers(0, 2 ** 31 - 1, (40, 30)).astype(np.int32),
             "int64 40-bit": rng.integers(0, 2 ** 40, (40, 30)).astype(np.int64),
             "uint16 big-endian": rng.integers(0, 2 ** 14, (40, 30)).astype(">u2"),
             "float32 whole 8-bit": rng.integers(0, 256, (40, 30)).astype(np.float32),
             "int32 whole 8-bit": rng.integers(0, 256, (40, 30)).astype(np.int32)}
    for name, a in cases.items():
        assert bit_depth(a) == old_bit_depth(a), name
        np.testing.assert_array_equal(to_uint8(a), old_to_uint8(a), err_msg=name)
    with pytest.raises(DataError, match="neither 0..1"):  # a fraction in the last block is still found
        g = rng.integers(0, 300, (40, 30)).astype(np.float32)
        g[-1, -1] = 2.5
        bit_depth(g)


def _files(tmp: Path) -> dict[str, tuple[Path, np.ndarray, bool]]:
    """Files of every decoding path: {name: (file, the samples the reader library returns, lossy)}."""
    rng = np.random.default_rng(1)
    h, w = 61, 77
    out = {}

    def pil(name, arr, mode=None, **kw):
        p = tmp / name
        (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(p, **kw)
        with Image.open(p) as im:
            if im.mode in ("P", "PA"):
                ref = np.asarray(im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB"))
            else:
                ref = np.asarray(im)
        out[name] = (p, ref, p.suffix == ".jpg")

    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil("bits.png", rng.integers(0, 2, (h, w)).astype(bool))
    pil("grey.png", rgb[..., 0])
    pil("grey16.png", rng.integers(0, 4096, (h, w)).astype(np.uint16))
    pil("rgb.png", rgb)
    pil("rgba.png", np.dstack([rgb, rgb[..., 1]]), "RGBA")
    pil("la.png", np.dstack([rgb[..., 0], rgb[..., 1]]), "LA")
    pil("rgb.jpg", rgb, quality=80)
    pil("grey.jpg", rgb[..., 2], quality=80)
    q = Image.fromarray(rgb).quantize(32)
    q.save(tmp / "pal.png")
    with Image.open(tmp / "pal.png") as im:
        out["pal.png"] = (tmp / "pal.png", np.asarray(im.convert("RGB")), False)
    a16 = rng.integers(0, 65536, (h, w, 3)).astype(np.uint16)
    png.from_array(a16.reshape(h, w * 3), "RGB;16").save(str(tmp / "rgb16.png"))
    out["rgb16.png"] = (tmp / "rgb16.png", a16, False)
    for name, arr, kw in (("rgb16.tif", a16 >> 4, {"photometric": "rgb"}),
                          ("rgb16z.tif", a16 >> 2, {"photometric": "rgb", "compression": "zlib", "rowsperstrip": 7}),
                          ("f32.tif", rng.random((h, w)).astype(np.float32), {}),
                          ("i32.tif", rng.integers(0, 2 ** 20, (h, w)).astype(np.int32), {})):
        tifffile.imwrite(tmp / name, arr, **kw)
        out[name] = (tmp / name, arr, False)
    idx = rng.integers(0, 16, (h, w)).astype(np.uint8)
    cmap = rng.integers(0, 65536, (3, 256)).astype(np.uint16)
    tifffile.imwrite(tmp / "pal.tif", idx, photometric="palette", colormap=cmap)
    out["pal.tif"] = (tmp / "pal.tif", cmap.T[idx], False)
    return out


def test_whole_files_decode_to_the_former_pixels_and_masks(tmp_path, blocks):
    """Every decoding path (Pillow modes 1, L, I;16, RGB, RGBA, LA, P, JPEG; pypng 16-bit colour; tifffile
    16-bit colour, compressed strips, float, int32, palette) against the former pipeline on the same samples."""
    for name, (p, ref, lossy) in _files(tmp_path).items():
        got = read_image(str(p))
        assert got.shape == ref.shape[:2] + (3,) and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, old_read_image(ref), err_msg=name)
        np.testing.assert_array_equal(read_mask(str(p)), old_read_mask(ref, lossy), err_msg=name)
    assert len(np.unique(read_image(str(tmp_path / "rgb16.tif")))) > 250  # not all black: a real comparison


# ============================================================== 2. peak memory of one decode

PEAK = r"""
import json, sys
from pclsim.data.images import read_image
read_image(sys.argv[2])  # warm-up on a small file of the same kind: the readers' imports and codecs
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the resident size now
base = status("VmRSS")
out = read_image(sys.argv[1])
print(json.dumps({"peak": status("VmHWM") - base, "out": out.nbytes}))
"""


def _peak(path: Path, small: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PEAK, str(path), str(small)], capture_output=True, text=True,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_peak_memory_of_one_decode_is_within_the_bound(tmp_path):
    """Peak resident memory of one read_image in a fresh process, above what it held before (Linux VmHWM,
    reset just before the call; the readers warmed up on a small file of the same kind). Asserted bound:

        peak <= raw + 3 * (H * W * 3)

    raw: the decoded samples as the reader library returns them (H * W * channels * bytes per sample);
    H * W * 3: the uint8 RGB result. Same bound as `decode_memory_bound`, which the preflight reports.
    Former figures (float64 scaling): 16-bit 3000 x 3000 RGB TIFF 487 MB, 4000 x 4000 1-bit PNG 273 MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("no /proc/self/clear_refs: peak memory cannot be measured here")
    a = np.random.default_rng(2).integers(0, 65536, (3000, 3000, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", a, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16z.tif", a >> 4, photometric="rgb", compression="zlib", rowsperstrip=64)
    del a
    bits = np.zeros((4000, 4000), bool)
    bits[1000:3000:3, 500:3500] = True
    Image.fromarray(bits).save(tmp_path / "bits.png")
    del bits
    small = {".tif": tmp_path / "small.tif", "z.tif": tmp_path / "smallz.tif", ".png": tmp_path / "small.png"}
    tifffile.imwrite(small[".tif"], np.ones((8, 8, 3), np.uint16), photometric="rgb")
    tifffile.imwrite(small["z.tif"], np.ones((8, 8, 3), np.uint16), photometric="rgb", compression="zlib")
    Image.fromarray(np.eye(8, dtype=bool)).save(small[".png"])
    cases = [("rgb16.tif", 3000 * 3000 * 3 * 2, small[".tif"]), ("rgb16z.tif", 3000 * 3000 * 3 * 2, small["z.tif"]),
             ("bits.png", 4000 * 4000 * 1, small[".png"])]
    for name, raw, warm in cases:
        p = tmp_path / name
        hw = 3000 * 3000 if name.endswith(".tif") else 4000 * 4000
        bound = raw + 3 * hw * 3
        assert decode_memory_bound(image_header(str(p))) == bound, name  # what the preflight states
        m = _peak(p, warm)
        assert m["out"] == hw * 3
        print(f"{name}: peak {m['peak'] / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB "
              f"(raw {raw / 1e6:.1f} MB + 3 x {hw * 3 / 1e6:.1f} MB)")
        assert m["peak"] <= bound, (name, m["peak"], bound)


# ============================================================== 3. the pixel limit

def _limit_msg(p, w, h, limit):
    return (f"{p}: {w} x {h} = {w * h} pixels is above the pixel limit {limit} "
            "(set PCLSIM_MAX_IMAGE_PIXELS to raise it)")


def test_pixel_limit_is_ours_from_the_header_and_pillow_never_warns_below_it(tmp_path, monkeypatch):
    """Below or at the limit: read by every reader with warnings as errors (Pillow neither warns nor refuses).
    Above it, in Pillow's warning band (limit, 2 x limit] and above Pillow's error at 2 x limit: our DataError,
    with no Pillow warning; tifffile's and pypng's own paths check the header too."""
    rng = np.random.default_rng(3)
    p = tmp_path / "g.png"
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(p)  # 50 x 40 = 2000 pixels
    t = tmp_path / "c.tif"
    tifffile.imwrite(t, rng.integers(0, 4096, (40, 50, 3)).astype(np.uint16), photometric="rgb")
    q = tmp_path / "c16.png"
    png.from_array(rng.integers(0, 65536, (40, 150)).astype(np.uint16), "RGB;16").save(str(q))
    assert max_image_pixels() == 2 ** 31
    for limit in (2000, 2 ** 31):
        monkeypatch.setenv("PCLSIM_MAX_IMAGE_PIXELS", str(limit))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for f in (p, t, q):
                assert read_image(str(f)).shape == (40, 50, 3)
                assert image_header(str(f)).pixels == 2000
    for limit in (1999, 1000, 999, 10):  # 1999, 1000: Pillow's warning band; 999, 10: Pillow would refuse
        monkeypatch.setenv("PCLSIM_MAX_IMAGE_PIXELS", str(limit))
        for f in (p, t, q):
            for fn in (read_image, read_mask, image_header):
                with warnings.catch_warnings(record=True) as seen:
                    with pytest.raises(DataError) as e:
                        fn(str(f))
                assert str(e.value) == _limit_msg(f, 50, 40, limit)
                assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
        with pytest.raises(DataError) as e:
            decoding._tiff(str(t))  # the tifffile path alone checks its own header
        assert str(e.value) == _limit_msg(t, 50, 40, limit)
        with pytest.raises(DataError) as e:
            decoding._png16(str(q))  # and so does the pypng one
        assert str(e.value) == _limit_msg(q, 50, 40, limit)
    for bad in ("abc", "0", "-5", "1.5"):
        monkeypatch.setenv("PCLSIM_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(PclsimError, match="PCLSIM_MAX_IMAGE_PIXELS"):
            read_image(str(p))
    # a low limit is ours, per file: Pillow's process-wide guard still lets pclsim crop and resize its own
    # images (a limit of 10 once left Pillow refusing every 64 x 64 crop of the tests that followed)
    from pclsim.data.images import preprocess

    img = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    assert preprocess(img, None, 64, "crop")[0].shape[-2:] == (64, 64)


def test_validate_states_the_largest_image_and_refuses_one_above_the_limit(tmp_path):
    """`pclsim validate` on a folder data set: one stderr line naming the largest image (a 16-bit RGB TIFF among
    8-bit PNGs), its size and depth, and its decode memory per decode and per extractor (2 decode threads, 4 on
    a GPU); with the pixel limit below that image, one error line naming it and no Pillow warning."""
    rng = np.random.default_rng(4)
    cat = tmp_path / "data" / "cat"
    for d, n in (("train/good", 3), ("test/good", 2), ("test/crack", 2)):
        (cat / d).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(cat / d / f"{i}.png")
    big = cat / "train" / "good" / "big.tif"
    tifffile.imwrite(big, rng.integers(0, 4096, (80, 96, 3)).astype(np.uint16), photometric="rgb")
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"name": "dec", "dataset": {"kind": "folder", "root": str(tmp_path / "data"),
                                                             "tasks": ["cat"], "image_size": 64},
                                  "memory_sizes": [10]}))
    r = cli("validate", sc)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("decode memory:")]
    assert len(lines) == 1, r.stderr
    one = 96 * 80 * 3 * 2 + 3 * 96 * 80 * 3  # raw 16-bit samples + 3 x the uint8 result: 115200 bytes
    assert lines[0] == (f"decode memory: largest image {big} (96 x 80, TIFF, 16-bit RGB) takes at most "
                        f"{one / 1024:.0f} KiB to decode; {2 * one / 1024:.0f} KiB per extractor (2 decode threads; "
                        f"{4 * one / 1024:.0f} KiB for the 4 of a GPU extractor)")
    r = cli("validate", sc, env={"PCLSIM_MAX_IMAGE_PIXELS": str(96 * 80 - 1)})  # in Pillow's warning band
    assert r.returncode == 2 and r.stderr.strip() == "error: " + _limit_msg(big, 96, 80, 96 * 80 - 1), r.stderr
