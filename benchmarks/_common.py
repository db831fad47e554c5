"""Shared benchmark helpers: timing, JSON output, optional anomalib oracle."""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # oracles draw progress bars; benchmarks print JSON only


def timed(fn, *args, repeat: int = 1, **kw):
    """(best seconds over `repeat` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def emit(name: str, payload: dict) -> None:
    """Print one JSON line; append it to $PCLSIM_BENCH_OUT when set."""
    line = json.dumps({"benchmark": name, **payload}, default=float)
    print(line, flush=True)
    path = os.environ.get("PCLSIM_BENCH_OUT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def anomalib_or_none(what: str):
    try:
        if what == "kcenter":
            from anomalib.models.components.sampling import KCenterGreedy

            return KCenterGreedy
        if what == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            return PatchcoreModel
    except Exception as e:  # anomalib is an optional oracle (pip install -e '.[bench]')
        print(f"anomalib unavailable ({type(e).__name__}: {e}); its baseline is skipped", file=sys.stderr)
    return None
