"""The paper-size pipeline of ONE task, without Ray: extraction into the store, selection, NN table.

Paper size (BMAD Table 1): 2,000 train + 2,000 test images, wide_resnet50_2 at 224 px (layers
layer2 + layer3: 28 x 28 = 784 patches, D = 1,536), M = 30,000: greedy k-center selection of
30,000 from 2,000 x 784 = 1.57 M train patches, then the candidate (NN) table of the 1.57 M test
patches against the 30,000 selected vectors, as the sweep builds it for a task source.

Stages, each timed and printed as one JSON line:
  extract   backbone + PatchCore aggregation of train and test images, written batch by batch
            into the feature store (float16 by default; pclsim.store.writing) and read back memory-mapped.
            The images are random normalised tensors made once (decoding is not measured: it is
            the data loader's, on the CPU cores); weights random (timm, pretrained=False).
  select    greedy_coreset of M from the stored train patches (projection_dim "auto": the authors'
            JL dimension, 352 at 1.57 M patches), streamed from the memory-mapped store.
  table     the candidate table of the task (pclsim.core.candidates.build_table): the K = 64 nearest of
            the M selected vectors for every stored test patch, checked against brute force.
Targets on one H200: extraction > 3,000 images/s, selection < 30 s, table < 60 s.

PCLSIM_PAPER_SCALE (default 1) scales images and M down (e.g. 0.01 on a CPU: 20 + 20 images,
M = 300) to check the script itself; --image-size shrinks the images too.

    python benchmarks/bench_paper_task.py --device cuda
    PCLSIM_PAPER_SCALE=0.01 python benchmarks/bench_paper_task.py --device cpu --image-size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import emit, sync


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=2000, help="train images = test images (before scaling)")
    ap.add_argument("--memory", type=int, default=30000, help="M (before scaling)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--store", help="store folder (default: a temporary one, removed at the end)")
    a = ap.parse_args()
    scale = float(os.environ.get("PCLSIM_PAPER_SCALE", "1"))
    n = max(2, int(round(a.images * scale)))
    m = max(2, int(round(a.memory * scale)))

    from pclsim.coreset import greedy_coreset, jl_dim
    from pclsim.core.features import FeatureExtractor
    from pclsim.core.candidates import DEFAULT_K, build_table
    from pclsim.core.task_features import TaskFeatures
    from pclsim.store import writing as store

    t0 = time.perf_counter()
    ex = FeatureExtractor("wide_resnet50_2", "none", ("layer2", "layer3"), image_size=a.image_size, device=a.device,
                          batch_size=a.batch_size)
    load_s = time.perf_counter() - t0
    P, D = ex.num_patches, ex.dim
    base = {"device": a.device, "scale": scale, "images": n, "patches": P, "dim": D, "dtype": a.dtype,
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None}
    g = torch.Generator().manual_seed(0)
    # a few distinct batches, each batch then scaled by its number: every image (and patch) differs,
    # and train and test differ, without generating 4,000 images on the CPU
    bases = {s: torch.randn(4, a.batch_size, 3, a.image_size, a.image_size, generator=g) for s in ("train", "test")}

    def images(split, i, b):
        x = bases[split][i % 4, :b] * (1.0 + 0.002 * i)
        return x.pin_memory() if a.device.startswith("cuda") else x

    ex.embed(images("train", 0, 2))  # warm-up: kernels, autotuning
    sync(a.device)

    with tempfile.TemporaryDirectory(dir=a.store) as d:
        root = Path(d)
        dt = np.dtype(a.dtype)
        files = {}
        t0 = time.perf_counter()
        for split in ("train", "test"):
            shape = (n * P, D) if split == "train" else (n, P, D)
            files[split] = root / f"{split}.npy"
            with open(files[split], "wb") as f:
                store._npy_header(f, shape, dt)  # the store's writer: header, then batches as they come
                done, i = 0, 0
                while done < n:
                    b = min(a.batch_size, n - done)
                    x = images(split, i, b)
                    feats = ex.embed(x, dtype=torch.float16 if a.dtype == "float16" else torch.float32)
                    f.write(feats.numpy().tobytes())
                    done, i = done + b, i + 1
        sync(a.device)
        t_ext = time.perf_counter() - t0
        train = np.load(files["train"], mmap_mode="r")
        test = np.load(files["test"], mmap_mode="r")
        emit("paper_task_extract", dict(base, backbone_load_s=round(load_s, 1), seconds=round(t_ext, 2),
                                        images_per_s=round(2 * n / t_ext, 1), stored_gb=round(
                                            (train.nbytes + test.nbytes) / 1e9, 2), target_images_per_s=3000))

        t0 = time.perf_counter()
        order = greedy_coreset(train, m, projection_dim="auto", seed=0, device=a.device)  # the authors' JL dim
        sync(a.device)
        t_sel = time.perf_counter() - t0
        assert len(np.unique(order)) == m
        emit("paper_task_select", dict(base, n_patches=int(train.shape[0]), k=m, projection_dim=jl_dim(int(train.shape[0])),
                                       seconds=round(t_sel, 2),
                                       target_s=30))

        # the candidate table the sweep builds for a task source (pclsim.core.candidates): every test patch's
        # K nearest among the selected vectors, queries streamed from the store
        rows = np.sort(order)
        cand = np.asarray(train[rows], dtype=np.float32)
        tf = TaskFeatures("task", train[:0], test, np.zeros(n, np.int64), None, ex.grid, a.image_size)
        t0 = time.perf_counter()
        tb = build_table(("task", "task"), rows, cand, {"task": tf}, k=DEFAULT_K, device=a.device)
        sync(a.device)
        t_tab = time.perf_counter() - t0
        # spot check against brute force (float64) on 64 queries: the first listed candidate is the nearest
        first = tb.dist["task"].reshape(-1, tb.k)[:, 0]
        step = max(1, n * P // 64)
        picks = np.arange(0, n * P, step)
        c64 = cand.astype(np.float64)
        q = np.asarray(test.reshape(-1, D)[picks], dtype=np.float64)
        ref = np.array([np.sqrt(((c64 - v) ** 2).sum(1)).min() for v in q])
        err = float(np.max(np.abs(first[picks] - ref) / np.maximum(ref, 1.0)))
        emit("paper_task_table", dict(base, queries=int(n * P), candidates=m, k=tb.k, table_gb=round(tb.nbytes / 1e9, 3),
                                      seconds=round(t_tab, 2), max_err_vs_brute_force=err, target_s=60))
        emit("paper_task", dict(base, extract_s=round(t_ext, 2), select_s=round(t_sel, 2), table_s=round(t_tab, 2),
                                nn_ok=err < 1e-3,  # the table's nearest agrees with brute force, at any scale
                                ok=bool(err < 1e-3 and 2 * n / t_ext > 3000 and t_sel < 30 and t_tab < 60)
                                if scale == 1 else None))
        if err >= 1e-3:  # a wrong table fails the step (gpu_check.sh reads the exit status)
            raise SystemExit(f"error: the candidate table's nearest differs from brute force by {err:.2e} (relative)")


if __name__ == "__main__":
    main()
