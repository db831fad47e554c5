"""Decode + preprocess throughput (images/s): pclsim's iter_batches vs a plain PIL loop over the same files.

Default: 200 RGB PNGs of 512 x 512 (smooth content, like medical scans) in a temp folder, to 224 px.
The PIL loop is what a naive loader does: open, convert, resize, crop, normalise, one after another.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, timed  # noqa: E402
from pclsim.data import Sample, iter_batches  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def write_pngs(d: Path, n: int, px: int) -> list[Path]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    paths = []
    for i in range(n):
        base = 127 + 80 * np.sin(6 * xx + i) * np.cos(4 * yy - i)
        a = np.clip(base[..., None] + rng.normal(0, 12, (px, px, 3)), 0, 255).astype(np.uint8)
        p = d / f"{i:04d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def pil_loop(paths, size):
    short = round(size * 256 / 224)
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((short, short), Image.BILINEAR)
        o = (short - size) // 2
        a = (np.asarray(im.crop((o, o, o + size, o + size)), np.float32) / 255.0 - MEAN) / STD
        out.append(a.transpose(2, 0, 1).sum())  # keep nothing: the loop's memory stays flat like iter_batches'
    return len(out)


def batches(samples, size, bs, workers):
    n = 0
    for imgs, _, _ in iter_batches(samples, size, batch_size=bs, workers=workers):
        n += imgs.shape[0]
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--px", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(Path(tmp), a.images, a.px)
        samples = [Sample(key=str(p), label=0, path=str(p)) for p in paths]
        pil_loop(paths[:4], a.size)  # warm the page cache and the imports
        t_pil, _ = timed(pil_loop, paths, a.size, repeat=a.repeat)
        t_ib, n = timed(batches, samples, a.size, a.batch_size, a.workers, repeat=a.repeat)
        assert n == a.images
    out = {"images": a.images, "px": a.px, "size": a.size, "workers": a.workers, "cpus": os.cpu_count(),
           "iter_batches_ips": a.images / t_ib, "pil_loop_ips": a.images / t_pil}
    out["ratio"] = out["iter_batches_ips"] / out["pil_loop_ips"]
    emit("decode", out)


if __name__ == "__main__":
    main()
