"""PatchCore scoring: task identification, image scores with reweighting, anomaly maps (method.md 3)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .reweighting import REWEIGHTINGS, get_reweighting
from .tensors import as_tensor

__all__ = ["REWEIGHTINGS", "identify_task", "image_score", "reweight_scores", "anomaly_maps", "gaussian_kernel1d"]

# REWEIGHTINGS (re-exported): the registry of reweightings, {name: pclsim.core.reweighting.Reweighting}


def identify_task(mean_dists: np.ndarray) -> np.ndarray:
    """Index of the bank with the lowest mean patch distance, per image. mean_dists: (n_images, n_banks)."""
    return np.argmin(np.asarray(mean_dists), axis=1)


def _bank_neighbours(bank: np.ndarray, m_star: int, k: int) -> np.ndarray:
    """Indices of the k nearest bank vectors of bank[m_star], m_star itself first."""
    v = bank[m_star].astype(np.float64)
    d = np.sqrt(np.maximum(((bank.astype(np.float64) - v) ** 2).sum(1), 0.0))
    d[m_star] = -1.0  # itself first even when duplicates exist
    k = min(k, bank.shape[0])
    part = np.argpartition(d, k - 1)[:k] if k < bank.shape[0] else np.arange(bank.shape[0])
    return part[np.lexsort((part, d[part]))]


def _neighbour_distances(bank: np.ndarray, neighbours: np.ndarray, m_test: np.ndarray) -> np.ndarray:
    """(n, k) float64 Euclidean distances from m_test (n, D) to the bank rows neighbours (n, k)."""
    return np.sqrt(((bank[neighbours].astype(np.float64) - m_test[:, None, :]) ** 2).sum(-1))


def image_score(patch_dists: np.ndarray, patch_nn: np.ndarray, query_patches: np.ndarray,
                bank: np.ndarray, reweighting: str = "paper", neighbours=None) -> float:
    """Image anomaly score from one image's patch NN distances to its chosen bank (method.md section 3).

    patch_dists (P,), patch_nn (P,) indices into `bank` (n, D), query_patches (P, D). reweighting: a name
    in pclsim.core.reweighting.REWEIGHTINGS ("paper": the authors' PatchCore eq. 7 variant with 3 neighbours and
    T = sqrt(D); "anomalib": 1 - softmax over the distances to the 9 neighbours of m*; "none": s* unchanged).
    neighbours: optional cache, a callable (m_star, k) -> the k nearest bank indices of m*.
    Raises ValueError for an unknown reweighting.
    """
    rw = get_reweighting(reweighting)
    find = neighbours or (lambda m, k: _bank_neighbours(bank, m, k))
    p = int(np.argmax(patch_dists))
    s_star = float(patch_dists[p])
    if rw.neighbours == 0 or bank.shape[0] < 2:
        return s_star
    nb = np.asarray(find(int(patch_nn[p]), rw.neighbours))
    m_test = query_patches[p].astype(np.float64)
    w = rw.weight(np.array([s_star]), _neighbour_distances(bank, nb[None, :], m_test[None, :]), bank.shape[1])
    return float(w[0] * s_star)


def reweight_scores(s_star: np.ndarray, m_test: np.ndarray, bank: np.ndarray, neighbours: np.ndarray,
                    reweighting: str = "paper") -> np.ndarray:
    """Reweighted image scores of several images at once (method.md section 3, PatchCore eq. 7).

    s_star (n,): each image's largest patch distance; m_test (n, D): that patch; bank (m, D);
    neighbours (n, k): bank positions of the nearest bank vectors of each image's m*, m* first; the
    reweighting reads its first `Reweighting.neighbours` columns (3 for "paper", 9 for "anomalib").
    Distances in float64. Same formulas as `image_score`. Raises ValueError for an unknown reweighting.
    """
    rw = get_reweighting(reweighting)
    s_star = np.asarray(s_star, dtype=np.float64)
    if rw.neighbours == 0:
        return s_star.copy()
    if neighbours.shape[1] < min(rw.neighbours, bank.shape[0]):
        raise ValueError(f"reweighting {rw.name!r} reads {rw.neighbours} neighbours of m*, given {neighbours.shape[1]}")
    m_test = np.asarray(m_test, dtype=np.float64)
    dists = _neighbour_distances(bank, neighbours[:, : rw.neighbours], m_test)
    return rw.weight(s_star, dists, bank.shape[1]) * s_star


def gaussian_kernel1d(sigma: float = 4.0) -> torch.Tensor:
    radius = int(4 * sigma + 0.5)  # 16 for sigma 4
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _map_operator(n_in: int, out_size: int, sigma: float) -> torch.Tensor:
    """(out_size, n_in) matrix of one axis of the map pipeline: linear upsample (align_corners=False),
    reflect padding, Gaussian blur. Bilinear upsampling and the blur are separable and linear, so a map
    is A_h @ P @ A_w^T (two small matrix products instead of an upsample and two 33-tap convolutions)."""
    with torch.inference_mode():
        eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]                   # n_in basis signals
        m = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)
        if sigma > 0:
            k = gaussian_kernel1d(sigma).double()
            r = k.numel() // 2
            m = F.conv1d(F.pad(m, (r, r), mode="reflect"), k.view(1, 1, -1))
        return m[:, 0, :].T.float().contiguous()                                 # (out_size, n_in)


_OPERATORS: dict = {}


def anomaly_maps(patch_dists: np.ndarray, grid: tuple[int, int], out_size: int, sigma: float = 4.0) -> np.ndarray:
    """(N, P) patch distances -> (N, out_size, out_size) maps (method.md section 3): bilinear upsample of the
    (h, w) patch grid, then a Gaussian blur (sigma, radius 4 sigma, reflect padding), computed as
    A_h @ P @ A_w^T with each axis' operator built once (`_map_operator`); equal to the upsample-then-
    convolve pipeline to float32 rounding (tested against it and against scipy)."""
    n = patch_dists.shape[0]
    h, w = grid
    key_h, key_w = (h, out_size, float(sigma)), (w, out_size, float(sigma))
    for key in (key_h, key_w):
        if key not in _OPERATORS:
            _OPERATORS[key] = _map_operator(*key)
    with torch.inference_mode():
        p = as_tensor(patch_dists).reshape(n, h, w)
        return torch.matmul(torch.matmul(_OPERATORS[key_h], p), _OPERATORS[key_w].T).numpy()


def anomaly_maps_reference(patch_dists: np.ndarray, grid: tuple[int, int], out_size: int,
                           sigma: float = 4.0) -> np.ndarray:
    """The same maps by the plain pipeline: F.interpolate (bilinear), reflect pad, two 1-D convolutions."""
    n = patch_dists.shape[0]
    with torch.inference_mode():
        m = as_tensor(patch_dists).reshape(n, 1, *grid)
        m = F.interpolate(m, size=(out_size, out_size), mode="bilinear", align_corners=False)
        if sigma > 0:
            k = gaussian_kernel1d(sigma)
            r = k.numel() // 2
            m = F.pad(m, (r, r, r, r), mode="reflect")
            m = F.conv2d(m, k.view(1, 1, 1, -1))
            m = F.conv2d(m, k.view(1, 1, -1, 1))
        return m[:, 0].numpy()
