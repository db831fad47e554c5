"""greedy_coreset selections/s vs anomalib's KCenterGreedy and a plain per-step-norm loop, same features.

Default: 50,000 x 152 features (lite0 patch size), k = 1,000, CPU (issue target: >= 5x anomalib).
GPU check: --device cuda --n 1570000 --dim 1536 --k 30000.
"""

from __future__ import annotations

import argparse

import torch

from _common import anomalib_or_none, emit, sync, timed
from pclsim.coreset import greedy_coreset, project


def naive_greedy(x: torch.Tensor, k: int, device: str, steps: int) -> float:
    """Selections/s of the textbook loop (full norm of x - c each step) on the same projection, first `steps`."""
    z = project(x, 128, seed=0, device=device, dtype=torch.float32)
    mind = torch.full((z.shape[0],), float("inf"), device=device)
    idx = 0
    sync(device)
    import time

    t0 = time.perf_counter()
    for _ in range(steps):
        mind = torch.minimum(mind, torch.linalg.norm(z - z[idx], dim=1))
        idx = int(torch.argmax(mind))
    sync(device)
    return steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-anomalib", action="store_true")
    a = ap.parse_args()
    gen = torch.Generator(device=a.device).manual_seed(0)
    # made on the device: 1.57 M x 1536 would take over a minute to generate on the CPU
    x = torch.randn(a.n, a.dim, generator=gen, device=a.device,
                    dtype=torch.float16 if a.device.startswith("cuda") else torch.float32)
    greedy_coreset(x[:2000], 10, device=a.device)  # warm-up
    sync(a.device)
    t_ours, idx = timed(lambda: (greedy_coreset(x, a.k, device=a.device), sync(a.device))[0])
    out = {"n": a.n, "dim": a.dim, "k": a.k, "device": a.device, "pclsim_seconds": t_ours,
           "pclsim_selections_per_s": a.k / t_ours}
    naive_rate = naive_greedy(x.float() if a.device == "cpu" else x, a.k, a.device, steps=min(a.k, 200))
    out["naive_loop_selections_per_s"] = naive_rate
    out["ratio_vs_naive_loop"] = out["pclsim_selections_per_s"] / naive_rate
    KCenter = None if a.no_anomalib else anomalib_or_none("kcenter")
    if KCenter is not None:
        xf = x.float().cpu() if a.device == "cpu" else x.float()
        sampler = KCenter(embedding=xf, sampling_ratio=a.k / a.n)
        t_ano, _ = timed(lambda: (sampler.sample_coreset(), sync(a.device)))
        out["anomalib_seconds"] = t_ano
        out["ratio_vs_anomalib"] = t_ano / t_ours
    emit("coreset", out)


if __name__ == "__main__":
    main()
