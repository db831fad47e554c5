"""Building blocks of the synthetic domains: smooth random fields, soft shapes, placement, sensor noise.

Coordinates are in [-1, 1] across an S x S image (1 = half the side).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["grid", "smooth", "sig", "rho", "inside", "band", "loguniform", "point_in", "noise"]


@lru_cache(maxsize=8)
def grid(S: int):
    c = ((np.arange(S, dtype=np.float32) + 0.5) / S * 2.0 - 1.0)
    return c[:, None], c[None, :]  # yy (S,1), xx (1,S): broadcast instead of two full planes


def smooth(rng, S: int, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Smooth random field (std about 0.8): coarse white noise upsampled bicubically."""
    n = rng.standard_normal((cells, cells_x or cells)).astype(np.float32)
    return np.asarray(Image.fromarray(n, "F").resize((S, S), Image.BICUBIC))


def sig(x):
    return 0.5 + 0.5 * np.tanh(x)


def rho(yy, xx, cy, cx, ry, rx, angle=0.0, rng=None, wobble=0.0):
    """Normalised elliptical radius (1 on the boundary), optionally with a wobbly, irregular boundary."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    rho = np.sqrt(u * u + v * v)
    if wobble and rng is not None:
        th = np.arctan2(v, u)
        mod = np.zeros_like(th)
        for k in (2, 3, 5):
            mod += rng.uniform(-1, 1) / k * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        rho = rho / (1.0 + wobble * mod)
    return rho


def inside(rho, r_units, edge):
    """Soft indicator of rho < 1 with an edge about `edge` units wide for a shape of radius r_units."""
    return sig((1.0 - rho) * (r_units / max(edge, 1e-4)))


def band(rho, a, b, soft):
    return sig((rho - a) / soft) * sig((b - rho) / soft)


def loguniform(rng, lo_hi):
    lo, hi = lo_hi
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def point_in(rng, region, S, lim=0.78):
    """A random (y, x) in coordinates where `region` (S,S bool) holds, kept inside the centre crop."""
    yy, xx = grid(S)
    ok = region & (np.abs(yy) < lim) & (np.abs(xx) < lim)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))
    i = int(idx[rng.integers(idx.size)])
    return float(yy[i // S, 0]), float(xx[0, i % S])


def noise(rng, S, sigma, k):
    """Sensor noise of standard deviation sigma times the knob k["noise"] (pclsim.data.synthetic.NOISE_SCALE)."""
    return rng.standard_normal((S, S)).astype(np.float32) * (sigma * k["noise"])
