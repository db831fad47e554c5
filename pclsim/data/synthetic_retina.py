"""The two retinal OCT domains (Retina_RESC_AD, Retina_OCT2017_AD): layered bands along a curved
retina, with fluid, drusen, cysts or CNV as anomalies (see pclsim.data.synthetic_domains).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .synthetic_shapes import (grid as _grid, inside as _inside, loguniform as _loguniform, noise as _noise,
                               rho as _rho, sig as _sig, smooth as _smooth)

__all__ = ["resc", "oct2017"]


_RESC_KNOTS = np.array([-0.06, 0.0, 0.1, 0.16, 0.3, 0.38, 0.46, 0.52, 0.8, 0.84, 0.87, 0.9, 0.93, 1.0, 1.05, 1.5,
                        2.6], np.float32)
_RESC_VALUES = np.array([0.05, 0.75, 0.68, 0.45, 0.42, 0.2, 0.5, 0.22, 0.22, 0.62, 0.3, 0.85, 0.95, 0.9, 0.42, 0.28,
                         0.04], np.float32)
_OCT_KNOTS = np.array([-0.04, 0.0, 0.06, 0.12, 0.28, 0.34, 0.42, 0.47, 0.78, 0.8, 0.84, 0.88, 0.9, 0.97, 1.0, 1.04,
                       1.35, 1.8], np.float32)
_OCT_VALUES = np.array([0.0, 0.55, 0.5, 0.3, 0.32, 0.08, 0.35, 0.1, 0.1, 0.55, 0.12, 0.75, 0.2, 0.85, 0.8, 0.3, 0.3,
                        0.0], np.float32)


def _retina_band(rng, S, curv, tilt, y0, T0, pit_d, pit_w):
    yy, xx = _grid(S)
    xf = rng.uniform(-0.25, 0.25)
    pit = np.exp(-((xx - xf) / pit_w) ** 2)
    top = y0 + curv * (xx - rng.uniform(-0.2, 0.2)) ** 2 + tilt * xx + pit_d * pit
    T = T0 * (1 + 0.06 * _smooth(rng, S, 1, 4)[0:1]) - 0.6 * pit_d * pit
    return top, T


def resc(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    top, T = _retina_band(rng, S, rng.uniform(0.1, 0.35), rng.uniform(-0.12, 0.12), rng.uniform(-0.3, -0.08),
                          rng.uniform(0.28, 0.38), rng.uniform(0.05, 0.13), rng.uniform(0.12, 0.22))
    fluid = np.zeros((S, S), np.float32)
    mask = None
    if anomalous:
        w = _loguniform(ra, k["size"])
        xa = ra.uniform(-0.6, 0.6)
        h = min(w * ra.uniform(0.35, 0.8), 0.12)
        T = T + 1.3 * h * np.exp(-((xx - xa) / (w * 1.4)) ** 2)  # oedema thickens the retina
    knots = _RESC_KNOTS + np.concatenate([[0, 0], rng.normal(0, 0.015, len(_RESC_KNOTS) - 4), [0, 0]]).astype(
        np.float32)
    knots = np.maximum.accumulate(knots)
    vals = _RESC_VALUES * rng.uniform(0.85, 1.15, len(_RESC_VALUES)).astype(np.float32)
    d = (yy - top) / T
    img = np.interp(d, knots, vals).astype(np.float32)
    img = img * (1 + 0.12 * _smooth(rng, S, 3, 10)) + 0.08 * _smooth(rng, S, 20) * (d > 1.0)
    if anomalous:
        mask = np.zeros((S, S), bool)
        n = 1 if ra.random() < 0.5 else int(ra.integers(2, 5))
        con = ra.uniform(*k["contrast"])
        i0 = int(np.clip((xa + 1) / 2 * S, 0, S - 1))
        for i in range(n):
            px = xa + (ra.normal(0, w * 0.8) if i else 0.0)
            j = int(np.clip((px + 1) / 2 * S, 0, S - 1))
            dc = ra.uniform(0.35, 0.7) if i == 0 else ra.uniform(0.3, 0.75)
            py = float(top[0, j] + dc * T[0, j])
            ww = w * (ra.uniform(0.4, 0.8) if i else 1.0)
            hh = min(h * (ra.uniform(0.4, 0.8) if i else 1.0), 0.4 * float(T[0, i0]))
            rt = _rho(yy, xx, py, px, hh, ww, ra.normal(0, 0.1), ra, 0.15)
            fluid = np.maximum(fluid, _inside(rt, hh, 0.15 * hh))
            mask |= rt < 1.0
        mask &= (np.abs(yy) < 0.85) & (np.abs(xx) < 0.85)
        img = img * (1 - con * fluid)
    kk = rng.uniform(3, 6)
    img = img * rng.gamma(kk, 1 / kk, (S, S)).astype(np.float32)  # coarse speckle
    img = ndi.gaussian_filter(img, 0.7) * rng.uniform(0.85, 1.2)
    return img + _noise(rng, S, 0.015, k), mask


def oct2017(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    top, T = _retina_band(rng, S, rng.uniform(-0.05, 0.12), rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.05),
                          rng.uniform(0.26, 0.36), rng.uniform(0.06, 0.15), rng.uniform(0.08, 0.14))
    kind = ra.choice(3, p=[0.4, 0.3, 0.3]) if anomalous else -1
    con = ra.uniform(*k["contrast"]) if anomalous else 0.0
    size = _loguniform(ra, k["size"]) if anomalous else 0.0
    xa = ra.uniform(-0.6, 0.6) if anomalous else 0.0
    bump = np.zeros_like(top)
    if kind == 0:  # drusen: domes lifting the RPE
        for i in range(int(ra.integers(1, 5))):
            w = size * (ra.uniform(0.4, 1.0) if i else 1.0)
            cxd = xa + (ra.normal(0, 0.15) if i else 0.0)
            bump = np.maximum(bump, con * 0.5 * min(w, 0.1) * 1.5 * np.exp(-((xx - cxd) / w) ** 2))
    elif kind == 1:  # DME: thickened retina
        T = T + con * size * 0.6 * np.exp(-((xx - xa) / (size * 1.5)) ** 2)
    knots = _OCT_KNOTS + np.concatenate([[0, 0], rng.normal(0, 0.01, len(_OCT_KNOTS) - 4), [0, 0]]).astype(np.float32)
    knots = np.maximum.accumulate(knots)
    vals = _OCT_VALUES * rng.uniform(0.85, 1.15, len(_OCT_VALUES)).astype(np.float32)
    d = (yy - top) / (T - bump)  # drusen compress the retina above them and lift the RPE
    img = np.interp(d, knots, vals).astype(np.float32)
    bottom = top + T
    if kind == 0:
        under = _sig((bottom - yy) / 0.006) * _sig((yy - (bottom - bump)) / 0.006) * (bump > 0.003)
        img = img * (1 - under) + 0.45 * under
    choroid = _sig((d - 1.05) / 0.03) * _sig((1.6 - d) / 0.1)
    vessels = _sig((_smooth(rng, S, 10, 22) - 0.7) / 0.1)
    img = img * (1 - 0.7 * choroid * vessels)
    if kind == 1:  # intraretinal cysts
        for i in range(int(ra.integers(1, 6))):
            px = xa + (ra.normal(0, size) if i else 0.0)
            j = int(np.clip((px + 1) / 2 * S, 0, S - 1))
            py = float(top[0, j] + ra.uniform(0.3, 0.7) * T[0, j])
            rw = size * ra.uniform(0.3, 0.7)
            rh = min(rw * ra.uniform(0.6, 1.2), 0.3 * float(T[0, j]))
            img = img * (1 - min(1.0, 0.3 + con) * _inside(_rho(yy, xx, py, px, rh, rw, 0, ra, 0.1), rh, 0.2 * rh))
    elif kind == 2:  # CNV: bright irregular lesion at the RPE with fluid above
        j = int(np.clip((xa + 1) / 2 * S, 0, S - 1))
        py = float(bottom[0, j])
        rw, rh = size, size * ra.uniform(0.3, 0.6)
        les = _inside(_rho(yy, xx, py, xa, rh, rw, ra.normal(0, 0.2), ra, 0.35), rh, 0.2 * rh)
        img = img + (0.2 + 0.6 * con) * les * (1 + 0.3 * _smooth(ra, S, 16))
        fl = _inside(_rho(yy, xx, py - rh * 1.4, xa, rh * 0.6, rw * 0.7, 0, ra, 0.1), rh * 0.6, 0.1 * rh)
        img = img * (1 - min(1.0, con) * fl)
    cols = 1 + 0.15 * _smooth(rng, S, 1, 12)[0:1]  # Spectralis-like column brightness variation
    img = img * cols * rng.uniform(0.85, 1.15)
    kk = rng.uniform(9, 16)
    img = img * rng.gamma(kk, 1 / kk, (S, S)).astype(np.float32)  # finer, weaker speckle than RESC
    return img ** rng.uniform(0.9, 1.3) + _noise(rng, S, 0.01, k), None
