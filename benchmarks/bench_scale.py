"""Memory and time of a whole sweep as the features grow: is memory bounded by the banks, not the features?

One scenario (six synthetic tasks, wide_resnet50_2 with random weights, layers [layer2, layer3]:
D = 1,536; one order; patchcore_cl, joint, multi_model; M = 2,000) at three sizes of the training
sets (default 25, 50, 100 images a task; 20 test images a task). Each size runs `pclsim sweep`
in a fresh process with an empty feature store; a sampler reads /proc/PID/smaps_rollup of that
process and all its descendants (Ray's GCS, raylet with the object store, workers) every 0.5 s.

Per size it prints the feature volume (GB, counted as float32), the peak memory of the process
tree and the seconds per stage (from the sweep's --debug stage lines). Memory is PSS, so pages
shared between processes (the object store, mapped store files) count once:
  pss_gb       all resident pages (anonymous, shared memory, mapped files)
  anon_shm_gb  anonymous + shared memory only: what cannot be dropped; mapped store files are
               page cache the kernel reclaims under pressure
  file_gb      mapped files only (store entries, and the libraries every process maps)
The ratio (peak growth between the two largest sizes) / (feature-volume growth) is printed for
both (target <= 0.4; main held about 2.5 x the features).

--dtype-check instead compares a float16 store with a float32 store on the synthetic stream
(scenarios/orders.yaml's six domains and model, a sample of orders, in-process): the largest
metric difference over every matrix cell (target <= 0.002).

    python benchmarks/bench_scale.py [--sizes 25 50 100] [--test 20] [--image-size 96]
    python benchmarks/bench_scale.py --dtype-check [--orders 6]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from _common import emit

ROOT = Path(__file__).resolve().parents[1]
BMAD = ["Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD"]


def scenario(n_train: int, n_test: int, image_size: int, memory: int, dtype: str) -> dict:
    return {
        "name": f"scale{n_train}",
        "dataset": {"kind": "synthetic", "tasks": BMAD, "image_size": image_size,
                    "synthetic": {"train": n_train, "test": n_test, "seed": 0}},
        "model": {"backbone": "wide_resnet50_2", "weights": "none", "layers": ["layer2", "layer3"],
                  "feature_dtype": dtype},
        "orders": [BMAD],
        "strategies": ["patchcore_cl", "joint", "multi_model"],
        "memory_sizes": [memory],
        "seeds": [0],
    }


def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (children files, else a scan of stat's ppid)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _rollup(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Pss_Anon", "Pss_Shmem", "Pss_File", "Rss"):
                    out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


class Sampler(threading.Thread):
    """Peak PSS (all, and anonymous + shared memory) of a process tree, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_pss = self.peak_anon_shm = self.peak_file = self.peak_procs = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            pids = _tree(self.pid)
            r = [_rollup(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(x.get("Pss", 0) for x in r))
            self.peak_anon_shm = max(self.peak_anon_shm, sum(x.get("Pss_Anon", 0) + x.get("Pss_Shmem", 0) for x in r))
            self.peak_file = max(self.peak_file, sum(x.get("Pss_File", 0) for x in r))
            self.peak_procs = max(self.peak_procs, len(pids))
            self.stop.wait(self.every)


STAGES = ("ray started", "extractors ready", "features done", "banks done", "trials done")


def run_size(n_train: int, a, tmp: Path) -> dict:
    sc = scenario(n_train, a.test, a.image_size, a.memory, a.dtype)
    path = tmp / f"scale{n_train}.yaml"
    path.write_text(yaml.safe_dump(sc, sort_keys=False))
    env = dict(os.environ, PCLSIM_CACHE_DIR=str(tmp / f"cache{n_train}"), RAY_ADDRESS="local",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pclsim.cli", "sweep", str(path), "--out", str(tmp / f"out{n_train}"), "--quiet",
           "--debug"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    s = Sampler(p.pid)
    s.start()
    err = p.communicate()[1]
    s.stop.set()
    s.join()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep at {n_train} train images failed:\n{err[-3000:]}")
    marks = {}
    for m in re.finditer(r"\[\s*([\d.]+) s\] (.+)", err):
        marks.setdefault(m.group(2).strip(), float(m.group(1)))
    seconds, prev = {}, 0.0
    for st in STAGES:
        if st in marks:
            seconds[st.replace(" ", "_")] = round(marks[st] - prev, 1)
            prev = marks[st]
    grid = (a.image_size // 8) ** 2  # layer2 of a ResNet: stride 8
    volume = 6 * (n_train + a.test) * grid * 1536 * 4
    return {"train_images_per_task": n_train, "test_images_per_task": a.test, "patches": grid,
            "feature_gb_f32": round(volume / 1e9, 3), "peak_pss_gb": round(s.peak_pss / 1e9, 3),
            "peak_anon_shm_gb": round(s.peak_anon_shm / 1e9, 3), "peak_file_gb": round(s.peak_file / 1e9, 3),
            "processes": s.peak_procs,
            "wall_s": round(wall, 1), "stage_s": seconds}


def dtype_check(a) -> None:
    """float16 vs float32 store on the synthetic stream: largest metric difference over all cells."""
    import itertools

    import numpy as np

    from pclsim.cache import load_or_extract
    from pclsim.data import load_stream
    from pclsim.engine import simulate
    from pclsim.features import FeatureExtractor
    from pclsim.protocol import TaskFeatures
    from pclsim.scenario import Run, load_scenario

    sc = load_scenario(ROOT / "scenarios" / "orders.yaml")
    ds, m = sc["dataset"], sc["model"]
    stream = load_stream(ds)
    ex = FeatureExtractor(m["backbone"], m["weights"], m["layers"], image_size=ds["image_size"],
                          batch_size=m["batch_size"])
    orders = list(itertools.permutations(ds["tasks"]))[:: max(1, 720 // a.orders)][: a.orders]
    runs = [Run(s, M, 0, o) for s in sc["strategies"] for M in sc["memory_sizes"] for o in orders]
    res, t = {}, {}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        f32 = {x.name: load_or_extract(x, ex, cache_root=Path(d), workers=2, dtype="float32") for x in stream}
        t["extract"] = round(time.perf_counter() - t0, 1)
        # the float16 store holds exactly these values rounded (tests/test_store.py): no second extraction
        f16 = {n: TaskFeatures(n, tf.train.astype(np.float16), tf.test.astype(np.float16), tf.labels, tf.masks,
                               tf.grid, tf.image_size) for n, tf in f32.items()}
        for dt, tasks in (("float32", f32), ("float16", f16)):
            t0 = time.perf_counter()
            res[dt] = {(r.trial_id, k): v for r, o in simulate(runs, tasks, sc) for k, v in o.matrices.items()}
            t[dt] = round(time.perf_counter() - t0, 1)
    worst, where = 0.0, None
    for key, v in res["float32"].items():
        diff = float(np.nanmax(np.abs(res["float16"][key] - v)))
        if diff > worst:
            worst, where = diff, key
    emit("feature_dtype_synthetic", {"orders": len(orders), "runs": len(runs), "cells": sum(
        int(np.isfinite(v).sum()) for v in res["float32"].values()), "max_abs_diff": worst, "worst": where,
        "target": 0.002, "ok": worst <= 0.002, "seconds": t})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--memory", type=int, default=2000)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--dtype-check", action="store_true")
    ap.add_argument("--orders", type=int, default=6)
    a = ap.parse_args()
    if a.dtype_check:
        dtype_check(a)
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in sorted(a.sizes):
            rows.append(run_size(n, a, Path(d)))
            emit("scale_size", rows[-1])
    if len(rows) >= 2:
        x, y = rows[-2], rows[-1]
        dv = y["feature_gb_f32"] - x["feature_gb_f32"]
        emit("scale", {"sizes": [r["train_images_per_task"] for r in rows], "image_size": a.image_size,
                       "dtype": a.dtype, "feature_growth_gb": round(dv, 3),
                       "pss_growth_per_feature_byte": round((y["peak_pss_gb"] - x["peak_pss_gb"]) / dv, 3),
                       "anon_shm_growth_per_feature_byte": round(
                           (y["peak_anon_shm_gb"] - x["peak_anon_shm_gb"]) / dv, 3),
                       "target": 0.4})


if __name__ == "__main__":
    main()
