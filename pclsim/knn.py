"""Exact nearest neighbours of query patches against a memory bank.

Two interchangeable paths: faiss (IndexFlatL2, where faiss is installed) and torch (chunked
matmul, CPU or GPU). Both return Euclidean (not squared) distances.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["knn", "nn_distances", "prefix_nn", "faiss_available"]

_CHUNK_ELEMS = 1 << 22  # distance-matrix elements per chunk (16 MB in float32: stays in cache-friendly sizes)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    return True


def _t(x, device=None) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # zero-copy from Ray's object store
        x = np.array(x)
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.to(device=device, dtype=torch.float32) if device is not None else t.float()


def _partial_sq_dists(q: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """|b|^2 - 2 q.b: the squared distance less |q|^2, which is constant along a row, so the
    row's nearest neighbours are the same and |q|^2 is added to the few values kept (one GEMM pass)."""
    return torch.addmm(b_sq[None, :], q, b.T, alpha=-2.0)


def _finish(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (v + (q * q).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_()


def _knn_torch(queries, bank, k, device):
    q_all = _t(queries)
    b = _t(bank, device)
    b_sq = (b * b).sum(1)
    nq = q_all.shape[0]
    chunk = max(1, _CHUNK_ELEMS // max(1, b.shape[0]))
    dists = torch.empty((nq, k), dtype=torch.float32)
    idxs = torch.empty((nq, k), dtype=torch.int64)
    for s in range(0, nq, chunk):
        q = q_all[s : s + chunk].to(device)
        d2 = _partial_sq_dists(q, b, b_sq)
        if k == 1:
            v, i = d2.min(1, keepdim=True)
        else:
            v, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        dists[s : s + chunk] = _finish(v, q).cpu()
        idxs[s : s + chunk] = i.cpu()
    return dists.numpy(), idxs.numpy()


def _knn_faiss(queries, bank, k):
    import faiss

    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    b = np.ascontiguousarray(np.asarray(bank, dtype=np.float32))
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(b)
    d2, idx = index.search(q, k)
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), idx.astype(np.int64)


def knn(queries, bank, k: int = 1, backend: str = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest bank vectors of every query: (distances (Q,k) float32 Euclidean, indices (Q,k) int64).

    backend: "torch", "faiss" or "auto". auto = torch: on the CPUs measured here (benchmarks/bench_knn.py)
    the chunked GEMM path beat the PyPI faiss build's IndexFlatL2 by about 3x.
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


def prefix_nn(queries, ordered_bank, lengths, device=None) -> tuple[np.ndarray, np.ndarray]:
    """NN distance/index of every query against every prefix ordered_bank[:n], n in `lengths`, at once.

    Returns (dist (Q, L) float32, idx (Q, L) int64) with columns in the order of `lengths`. One pass:
    segment minima between sorted lengths, then a running minimum over segments.
    """
    lengths = [int(n) for n in lengths]
    b_all = _t(ordered_bank)
    if any(n < 1 or n > b_all.shape[0] for n in lengths):
        raise ValueError(f"prefix lengths {lengths} must lie in 1..{b_all.shape[0]}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuts = sorted(set(lengths))
    q_all = _t(queries)
    nq = q_all.shape[0]
    with torch.inference_mode():
        b = b_all[: cuts[-1]].to(device)
        b_sq = (b * b).sum(1)
        chunk = max(1, _CHUNK_ELEMS // max(1, b.shape[0]))
        out_d = torch.empty((nq, len(cuts)), dtype=torch.float32)
        out_i = torch.empty((nq, len(cuts)), dtype=torch.int64)
        for s in range(0, nq, chunk):
            q = q_all[s : s + chunk].to(device)
            d2 = _partial_sq_dists(q, b, b_sq)
            best_v = best_i = None
            lo = 0
            for c, hi in enumerate(cuts):
                v, i = d2[:, lo:hi].min(1)
                i = i + lo
                if best_v is not None:
                    # strict < keeps the earlier (lower) index on ties, like argmin over the whole prefix
                    better = v < best_v
                    v = torch.where(better, v, best_v)
                    i = torch.where(better, i, best_i)
                best_v, best_i = v, i
                out_d[s : s + chunk, c] = _finish(v[:, None], q)[:, 0].cpu()
                out_i[s : s + chunk, c] = i.cpu()
                lo = hi
        col = {n: j for j, n in enumerate(cuts)}
        order = [col[n] for n in lengths]
        return out_d[:, order].numpy(), out_i[:, order].numpy()
