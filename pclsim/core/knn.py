"""Exact nearest neighbours of query patches against a memory bank.

Two interchangeable paths: faiss (IndexFlatL2, where faiss is installed) and torch (chunked
matmul, CPU or GPU). Both return Euclidean (not squared) distances.
"""

from __future__ import annotations

import numpy as np
import torch

from .tensors import as_tensor

__all__ = ["knn", "nn_distances", "faiss_available", "query_chunk"]

_CHUNK_ELEMS = 1 << 24  # distance-matrix elements per chunk (64 MB in float32)
_MIN_CHUNK = 256  # queries per GEMM at least: fewer re-read the whole bank for too little work
_GATHER_ELEMS = 1 << 22  # k = 1: the chosen neighbours' vectors gathered per chunk (16 MB in float32)


def query_chunk(n_bank: int, k: int, dim: int) -> int:
    """Queries `knn` handles per GEMM against a bank of n_bank vectors of `dim`: a distance block of at most
    2^24 elements, but never fewer than 256 queries (benchmarks/bench_knn.py --chunks: against a
    30,000 x 1,536 bank, 42-query blocks reached 61 GFLOP/s a thread, 256 and more about 100); for k = 1 also
    at most 2^22 / dim (the exact re-measure gathers one vector a query). Its memory is 2 x chunk x n_bank x 4
    bytes (the block and its partial sort) + chunk x dim x 4 (the centred queries) + chunk x k x 12 (the kept
    distances and indices): pclsim.runner.memory.table_memory_bytes."""
    chunk = max(_MIN_CHUNK, _CHUNK_ELEMS // max(1, n_bank))
    if k == 1:
        chunk = min(chunk, max(1, _GATHER_ELEMS // max(1, dim)))
    return chunk


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    return True


def _t(x, device=None) -> torch.Tensor:
    return as_tensor(x, device)  # read-only arrays (Ray's object store, the feature store) are copied first


def _partial_sq_dists(q: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """|b|^2 - 2 q.b: the squared distance less |q|^2, which is constant along a row, so the
    row's nearest neighbours are the same and |q|^2 is added to the few values kept (one GEMM pass)."""
    return torch.addmm(b_sq[None, :], q, b.T, alpha=-2.0)


def _exact(q: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of the chosen neighbours from the differences (no cancellation), re-sorted ascending."""
    d = (q[:, None, :] - b[i]).pow_(2).sum(-1).sqrt_()
    if i.shape[1] > 1:
        d, o = torch.sort(d, dim=1, stable=True)
        i = torch.gather(i, 1, o)
    return d, i


def _knn_torch(queries, bank, k, device):
    q_all = _t(queries)
    b = _t(bank, device)
    # distances are translation invariant: centring on the bank keeps |q|^2 and |b|^2 small, so the
    # GEMM form ranks candidates without float32 cancellation; the kept ones are then measured exactly
    mu = b.mean(0)
    b = b - mu
    b_sq = (b * b).sum(1)
    nq = q_all.shape[0]
    chunk = query_chunk(b.shape[0], k, b.shape[1])
    dists = torch.empty((nq, k), dtype=torch.float32)
    idxs = torch.empty((nq, k), dtype=torch.int64)
    for s in range(0, nq, chunk):
        q = q_all[s : s + chunk].to(device) - mu
        d2 = _partial_sq_dists(q, b, b_sq)
        if k == 1:  # measured from the difference: exact, and cheap for one neighbour
            _, i = d2.min(1, keepdim=True)
            d, i = _exact(q, b, i)
        else:  # centred GEMM form: accurate to ~1e-6 relative; a gather of k x D per query would double the cost
            v, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            d = (v + (q * q).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_()
        dists[s : s + chunk] = d.cpu()
        idxs[s : s + chunk] = i.cpu()
    return dists.numpy(), idxs.numpy()


def _knn_faiss(queries, bank, k):
    import faiss

    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    b = np.ascontiguousarray(np.asarray(bank, dtype=np.float32))
    mu = b.mean(0, keepdims=True)
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(np.ascontiguousarray(b - mu))
    d2, idx = index.search(np.ascontiguousarray(q - mu), k)
    if k > 1:
        return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), idx.astype(np.int64)
    with torch.inference_mode():
        d, i = _exact(torch.from_numpy(q), torch.from_numpy(b), torch.from_numpy(idx.astype(np.int64)))
    return d.numpy(), i.numpy()


def knn(queries, bank, k: int = 1, backend: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest bank vectors of every query: (distances (Q,k) float32 Euclidean, indices (Q,k) int64).

    backend: "torch", "faiss" or "auto". auto = torch: on the CPUs measured here (benchmarks/bench_knn.py)
    the chunked GEMM path beat the PyPI faiss build's IndexFlatL2 by about 3x.
    Candidates are ranked by the GEMM form on bank-centred vectors (no cancellation from a common offset);
    for k = 1 the distance is then measured from the difference (float32 rounding), for k > 1 it is the
    centred GEMM value (about 1e-6 relative).
    """
    queries = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
    bank = bank.detach().cpu().numpy() if isinstance(bank, torch.Tensor) else bank
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"knn expects (Q,D) queries and (M,D) bank, got {queries.shape} and {bank.shape}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the bank size {bank.shape[0]}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "torch"
    if backend == "faiss":
        return _knn_faiss(queries, bank, k)
    if backend == "torch":
        with torch.inference_mode():
            return _knn_torch(queries, bank, k, device)
    raise ValueError(f"unknown knn backend {backend!r}; valid: auto, torch, faiss")


def nn_distances(queries, bank, backend: str = "torch", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distance and index of each query: ((Q,), (Q,))."""
    d, i = knn(queries, bank, 1, backend=backend, device=device)
    return d[:, 0], i[:, 0]
