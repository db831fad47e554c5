"""k-NN queries/s: pclsim's faiss and torch paths vs anomalib's PatchcoreModel.nearest_neighbors.

Default: 40 test images of 784 patches (31,360 queries) x a bank of 3,000 x 152 (lite0), k = 1; and the
candidate-list shape of the study core (`--k 32` nearest among `--candidates 7,000`), torch against faiss,
which decides `knn(backend="auto")`.

--chunks: the candidate tables' shape at the paper's dimensions (a 30,000 x 1,536 bank, k = 64, on this
process's torch threads): knn's query blocks (`query_chunk`) against the 0.4.0 rule (2^22 / max(C, k x D)
queries, 42 here), in the same run, with GFLOP/s and the ratio.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import anomalib_or_none, emit, sync, timed
import pclsim.core.knn as knn_module
from pclsim.core.knn import faiss_available, knn


def chunks(a):
    """knn at the tables' shape with the current query blocks and with the 0.4.0 rule (same data, same run)."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
    b = rng.normal(size=(a.candidates, a.dim)).astype(np.float32)
    gflop = 2 * a.queries * a.candidates * a.dim / 1e9
    current = knn_module.query_chunk

    def old_rule(n_bank, k, dim):
        return max(1, min((1 << 22) // max(1, n_bank), (1 << 22) // max(1, k * dim)))

    out = {"queries": a.queries, "candidates": a.candidates, "dim": a.dim, "k": a.k, "threads": torch.get_num_threads(),
           "chunk_now": current(a.candidates, a.k, a.dim), "chunk_0.4.0": old_rule(a.candidates, a.k, a.dim)}
    t_now, (d_now, i_now) = timed(lambda: knn(q, b, a.k, backend="torch", device=a.device), repeat=2)
    try:
        knn_module.query_chunk = old_rule
        t_old, (d_old, i_old) = timed(lambda: knn(q, b, a.k, backend="torch", device=a.device), repeat=2)
    finally:
        knn_module.query_chunk = current
    out.update(gflops_now=gflop / t_now, gflops_0_4_0=gflop / t_old, speedup=t_old / t_now,
               max_abs_diff=float(np.abs(d_now - d_old).max()), same_lists=float(np.mean(i_now == i_old)))
    emit("knn_chunks", out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=31_360)
    ap.add_argument("--bank", type=int, default=3_000)
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=7_000)
    ap.add_argument("--chunks", action="store_true", help="query blocks at the tables' shape, against 0.4.0's rule")
    a = ap.parse_args()
    if a.chunks:
        if a.dim == 152 and a.candidates == 7_000 and a.queries == 31_360:  # the defaults: the paper's shape instead
            a.queries, a.candidates, a.dim, a.k = 4_704, 30_000, 1_536, 64
        return chunks(a)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
    b = rng.normal(size=(a.bank, a.dim)).astype(np.float32)
    out = {"queries": a.queries, "bank": a.bank, "dim": a.dim, "device": a.device}
    knn(q[:100], b, backend="torch", device=a.device)
    t_torch, (d_t, _) = timed(lambda: knn(q, b, 1, backend="torch", device=a.device), repeat=3)
    out["torch_qps"] = a.queries / t_torch
    if faiss_available():
        t_faiss, (d_f, _) = timed(lambda: knn(q, b, 1, backend="faiss"), repeat=3)
        out["faiss_qps"] = a.queries / t_faiss
        out["faiss_vs_torch_max_abs_diff"] = float(np.abs(d_f - d_t).max())
    c = rng.normal(size=(a.candidates, a.dim)).astype(np.float32)
    t_tk, (dk_t, _) = timed(lambda: knn(q, c, a.k, backend="torch", device=a.device), repeat=2)
    out[f"torch_k{a.k}_qps"] = a.queries / t_tk
    if faiss_available():
        t_fk, (dk_f, _) = timed(lambda: knn(q, c, a.k, backend="faiss"), repeat=2)
        out[f"faiss_k{a.k}_qps"] = a.queries / t_fk
        out[f"faiss_vs_torch_k{a.k}_ratio"] = t_tk / t_fk
        out[f"faiss_vs_torch_k{a.k}_max_abs_diff"] = float(np.abs(dk_f - dk_t).max())
    model_cls = anomalib_or_none("patchcore")
    if model_cls is not None:
        tq, tb = torch.from_numpy(q).to(a.device), torch.from_numpy(b).to(a.device)
        # only nearest_neighbors is used: a bare module holding the bank, no backbone built
        model = model_cls.__new__(model_cls)
        torch.nn.Module.__init__(model)
        model.register_buffer("memory_bank", tb)

        def run():
            r = model.nearest_neighbors(tq, n_neighbors=1)
            sync(a.device)
            return r

        run()
        t_ano, _ = timed(run, repeat=3)
        out["anomalib_qps"] = a.queries / t_ano
        out["torch_ratio_vs_anomalib"] = out["torch_qps"] / out["anomalib_qps"]
        if "faiss_qps" in out:
            out["faiss_ratio_vs_anomalib"] = out["faiss_qps"] / out["anomalib_qps"]
    emit("knn", out)


if __name__ == "__main__":
    main()
