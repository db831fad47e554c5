"""Greedy k-center coreset selection (method.md section 2).

The selection runs on a sparse random projection of the patches; the bank keeps the original
vectors. With a fixed projection and start, re-running the selection on a selected prefix
returns that prefix again (the prefix property), which is what lets a sweep compute each
task's selection order once and truncate it for every smaller budget.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .tensors import read_rows

_CHUNK_BYTES = 32 << 20  # float32 bytes of one block of rows read from the store for a projection
# Greedy k-center reads the features at the float16 store's precision whatever the store holds: its
# choices cascade (one flipped near-tie changes every later pick), so the 2^-11 relative rounding of a
# float16 store would otherwise select different coresets than a float32 store of the same data. The
# rounding is ~1/1000 of the JL projection's own distortion; scoring still uses the stored values.
SELECTION_INPUT = torch.float16

# On a CPU, selections over more points than this use the lazy block form (`_greedy_lazy`): the same picks
# from one matrix product per stale block instead of one pass over every point per pick.
LAZY_MIN_POINTS = 4096
LAZY_BLOCK = 256  # points per block of `_greedy_lazy` (measured best of 128-8192 on 47,040 x 265: benchmarks/bench_coreset.py)

__all__ = ["greedy_coreset", "jl_dim", "sparse_projection", "isometric_basis", "project", "resolve_projection_dim"]


def jl_dim(n: int, eps: float = 0.9) -> int:
    """Johnson-Lindenstrauss minimum dimension for n points at distortion eps:
    floor(4 ln(n) / (eps^2/2 - eps^3/3)) (method.md section 2; 254 at 30,000 points, 352 at 1.57 M).
    Like the authors' sparse random projection, nothing caps it at the feature dimension."""
    denom = eps**2 / 2 - eps**3 / 3
    return int(4 * math.log(max(n, 2)) / denom)  # truncated, as the authors' (anomalib's) projection does


def resolve_projection_dim(spec, n: int) -> tuple[int | None, bool]:
    """(dimension, force) for a projection spec over n points.

    spec "auto": the authors' JL dimension for n points (eps 0.9), applied even where it exceeds the
    feature dimension D, as their sparse random projection is (it then distorts rather than
    compresses, and a fresh one still changes the selection); an integer: that dimension, or no
    projection when it is >= D; None: no projection.
    """
    if spec == "auto":
        return jl_dim(n), True
    if spec is None:
        return None, False
    return int(spec), False


def sparse_projection(in_dim: int, out_dim: int, seed: int = 0) -> torch.Tensor:
    """A (in_dim, out_dim) sparse random projection matrix (Li et al. 2006), density 1/sqrt(in_dim).

    Entries are 0 or +-sqrt(1/density)/sqrt(out_dim); drawn from `seed` only, so every caller with
    the same (in_dim, out_dim, seed) gets the same matrix.
    """
    gen = torch.Generator().manual_seed(int(seed))
    density = 1.0 / math.sqrt(in_dim)
    keep = torch.rand(in_dim, out_dim, generator=gen) < density
    sign = torch.randint(0, 2, (in_dim, out_dim), generator=gen, dtype=torch.int8) * 2 - 1
    scale = math.sqrt(1.0 / density) / math.sqrt(out_dim)
    return keep.to(torch.float32) * sign.to(torch.float32) * scale


def isometric_basis(mat: torch.Tensor) -> torch.Tensor:
    """A (D, D) matrix B with |v B| = |v P| for every v, for a projection P of shape (D, d') with d' > D.

    P^T = Q R (reduced QR, Q with orthonormal columns) gives P P^T = R^T R, so v R^T has the norms of
    v P in D instead of d' dimensions: the same greedy selection (up to float rounding) at D/d' of the
    memory traffic. The authors' JL dimension exceeds D whenever D < ~250 (EfficientNet-Lite0: 152).
    """
    _, r = torch.linalg.qr(mat.T.double(), mode="reduced")
    return r.T.to(mat.dtype).contiguous()


def project(x, projection_dim: int | None, seed: int = 0, device=None, chunk: int | None = None,
            dtype: torch.dtype | None = None, force: bool = False, compact: bool = False,
            round_to: torch.dtype | None = None) -> torch.Tensor:
    """Project rows of x (N, D) to (N, projection_dim) on `device`, chunk by chunk.

    chunk: rows read at a time; None: as many as fill _CHUNK_BYTES in float32 (32 MiB: 5,461 rows
    at D = 1,536), so the transient copy is bounded by bytes, not by the number of patches.

    projection_dim None or (>= D and not force) keeps the original vectors (no projection).
    compact: where projection_dim > D (with force), return instead the (N, D) image under
    `isometric_basis` of the projection: every pairwise distance equals the projected one.
    x may be float16 (a feature store): each chunk is converted to float32 before the product, and
    a memory-mapped x keeps only the chunk being read resident (`tensors.read_rows`).
    round_to: round the inputs to this dtype first (values outside its finite range are kept), so a
    float32 and a float16 copy of the same features give the same projection.
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (N, D) array, got shape {tuple(x.shape)}")
    owned = not isinstance(x, torch.Tensor)  # blocks are fresh copies (a tensor's may be views of it)
    if owned:  # memory-mapped store (or a pooled view of several): chunk by chunk
        def block_of(s):  # a writable float32 copy; the store's mapped pages are released after each chunk
            return torch.from_numpy(read_rows(x, slice(s, s + chunk)))
        device = torch.device(device) if device is not None else torch.device("cpu")
    else:
        def block_of(s):
            return x[s : s + chunk]
        device = torch.device(device) if device is not None else x.device
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    n, d = x.shape
    chunk = int(chunk) if chunk else max(256, _CHUNK_BYTES // (4 * max(1, d)))
    # a float16 store already holds float16 values: rounding them again would only cost memory
    rounding = round_to is not None and str(x.dtype).rsplit(".", 1)[-1] != str(round_to).rsplit(".", 1)[-1]
    keep = projection_dim is None or projection_dim <= 0 or (projection_dim >= d and not force)
    mat = None if keep else sparse_projection(d, projection_dim, seed)
    if mat is not None and compact and projection_dim > d:
        mat = isometric_basis(mat)
    mat = mat.to(device) if mat is not None else None
    out = torch.empty((n, d if keep else mat.shape[1]), dtype=dtype, device=device)
    for s in range(0, n, chunk):
        block = block_of(s).to(device=device, dtype=torch.float32)
        if rounding:  # in place: no second float32 block
            r = block.to(round_to)
            fin = torch.isfinite(r)
            if owned and bool(fin.all()):
                block.copy_(r)
            else:  # a caller's tensor is never written; values beyond round_to's range keep their own
                block = torch.where(fin, r.to(torch.float32), block)
            del r, fin
        out[s : s + chunk] = (block if keep else block @ mat).to(dtype)
    return out


def greedy_coreset(x, k: int, *, projection_dim: int | str | None = 128, seed: int = 0, device=None,
                   start: int = 0) -> np.ndarray:
    """Greedy k-center selection; returns int64 indices into x in selection order (method.md section 2).

    x: (N, D) numpy array (a memory-mapped store is read chunk by chunk), torch tensor, or a row view
    with `shape`, `ndim` and row slicing (banks' pooled tasks). The first index is `start`; each next one is the point
    farthest (Euclidean) from all points selected so far, measured in the projected space (where the
    projection has more dimensions than D, in its D-dimensional isometric image, `isometric_basis`).
    projection_dim: an integer, None (no projection) or "auto" (the JL dimension for N points,
    see `resolve_projection_dim`); the projection is drawn from `seed`.
    Memory is O(N): one projected copy and one running distance vector. The features are read at
    float16 precision (`SELECTION_INPUT`): a float32 and a float16 store select the same coreset.
    Raises ValueError for a non-2-D x, no points, k < 1 or start out of range.
    """
    if not (hasattr(x, "shape") and hasattr(x, "ndim")):  # arrays, tensors, banks' pooled view
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"greedy_coreset expects (N, D) features, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("greedy_coreset got no points")
    k = int(k)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not 0 <= start < n:
        raise ValueError(f"start index {start} out of range for {n} points")
    k = min(k, n)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    pdim, force = resolve_projection_dim(projection_dim, n)
    with torch.inference_mode():
        z = project(x, pdim, seed=seed, device=device, force=force, compact=True, round_to=SELECTION_INPUT)
        # distances are translation invariant: centring keeps |z|^2 small against the cross term
        z = z - z.float().mean(0).to(z.dtype)
        sq = z.float().pow(2).sum(1)
        # Squared norms in float32; distances via |z|^2 + |c|^2 - 2 z.c (one vector-matrix product per
        # step). z is kept transposed, (d, N): c @ z^T then streams N-long rows (an axpy per dimension),
        # ~3x faster on one CPU thread than the row-major GEMV (benchmarks/bench_coreset.py).
        if device.type == "cpu" and n > LAZY_MIN_POINTS:
            # its products are small (pending picks x d x block): on one thread, since waking other
            # threads for each costs more than it saves, and far more on a busy machine
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return _greedy_lazy(z.float().contiguous(), sq, k, start)
            finally:
                torch.set_num_threads(threads)
        zt = z.T.contiguous()
        del z
        selected = torch.empty(k, dtype=torch.int64, device=device)
        selected[0] = start
        idx = torch.tensor(start, device=device)
        mind = torch.full((n,), float("inf"), dtype=torch.float32, device=device)
        for i in range(1, k):
            c = zt[:, idx]
            d2 = sq - 2.0 * (c @ zt).float() + sq[idx]
            torch.minimum(mind, d2, out=mind)
            mind[idx] = -1.0  # never select the same point twice (rounding can leave ~0, not exactly 0)
            idx = torch.argmax(mind)
            selected[i] = idx
        return selected.cpu().numpy().astype(np.int64)



def _greedy_lazy(z: torch.Tensor, sq: torch.Tensor, k: int, start: int, block: int | None = None) -> np.ndarray:
    """Greedy k-center over (N, d) float32 CPU points z (centred; sq their squared norms), lazily per block.

    The plain form updates every point's distance to the selected set after each pick: one pass over
    N x d values per pick, bound by memory bandwidth. Here the points are cut into blocks of `block`; a
    block's largest distance is an upper bound of its true one while picks are pending for it (distances
    only shrink), so each pick updates only the blocks whose bound is the largest, until the largest bound
    belongs to an up-to-date block: its farthest point is the farthest of all (the first such point on
    ties, as argmax over all points). A block brought up to date applies all its pending picks in one
    matrix product (p x d by d x block), at matrix-multiply speed instead of bandwidth speed. Each
    distance is the plain form's |z|^2 - 2 z.c + |c|^2 and the minimum over picks is exact, so the picks are
    those of the plain form but for the order of float summation inside the dot products (a near-tie
    within float32 rounding may resolve differently; tests/core/test_coreset_lazy.py compares them).
    Returns int64 indices in selection order.
    """
    n, d = z.shape
    block = int(block or LAZY_BLOCK)
    nb = -(-n // block)
    mind = torch.full((n,), float("inf"), dtype=torch.float32)
    bound = torch.full((nb,), float("inf"), dtype=torch.float64)  # float64 holds every float32 maximum exactly
    applied = [0] * nb                        # picks applied to each block
    picked: list[list[int]] = [[] for _ in range(nb)]  # each block's picks (kept at -1)
    centres = torch.empty((k, d), dtype=torch.float32)
    csq = torch.empty((k,), dtype=torch.float32)
    selected = np.empty(k, dtype=np.int64)
    idx = int(start)
    for i in range(k):
        selected[i] = idx
        centres[i] = z[idx]
        csq[i] = sq[idx]
        mind[idx] = -1.0  # never select the same point twice; its block's bound stays an upper bound
        picked[idx // block].append(idx)
        if i + 1 == k:
            break
        while True:
            b = int(torch.argmax(bound))  # the first block of largest bound
            lo, hi = b * block, min(n, (b + 1) * block)
            if applied[b] <= i:  # stale: apply its pending picks in one product
                c = centres[applied[b]:i + 1]
                d2 = (sq[lo:hi, None] - 2.0 * (z[lo:hi] @ c.T)) + csq[None, applied[b]:i + 1]
                torch.minimum(mind[lo:hi], d2.min(1).values, out=mind[lo:hi])
                if picked[b]:
                    mind[picked[b]] = -1.0
                applied[b] = i + 1
                bound[b] = float(mind[lo:hi].max())
                continue
            idx = lo + int(torch.argmax(mind[lo:hi]))
            break
    return selected
