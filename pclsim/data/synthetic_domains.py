"""The six synthetic domains' image generators (pclsim.data.synthetic holds the knobs and the stream).

Each domain: (rng for the normal anatomy, rng for the anomaly, S, anomalous, knobs) -> (float image,
about [0, 1], (S,S) or (S,S,3); mask (S,S) bool or None). knobs: {"size": anomaly radius range,
"contrast": strength range, "noise": sensor-noise multiplier} (pclsim.data.synthetic.DIFFICULTY,
NOISE_SCALE). Brain, liver, chest and histopathology are here, the two retinal domains in
pclsim.data.synthetic_retina.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .synthetic_retina import oct2017, resc
from .synthetic_shapes import (band as _band, grid as _grid, inside as _inside, loguniform as _loguniform,
                               noise as _noise, point_in as _point_in, rho as _rho, sig as _sig, smooth as _smooth)

__all__ = ["GENERATORS"]


# ---------------------------------------------------------------- domains
# Each: (rng for the normal anatomy, rng for the anomaly, S, anomalous, knobs) -> (float image in [0,1], mask or None)

def _brain(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    cy, cx = rng.normal(0, 0.035, 2)
    ry = rng.uniform(0.74, 0.86)
    rx = ry * rng.uniform(0.74, 0.88)
    ang = rng.normal(0, 0.1)
    rho = _rho(yy, xx, cy, cx, ry, rx, ang, rng, wobble=0.04)
    skull_t = rng.uniform(0.05, 0.09)
    inner = 1.0 - skull_t
    skull = _band(rho, inner, 1.0, 0.006) * (0.72 + 0.12 * _smooth(rng, S, 9))
    scalp = _band(rho, 1.0, 1.0 + rng.uniform(0.02, 0.05), 0.006) * 0.3
    csf = _band(rho, inner - 0.035, inner, 0.006) * 0.1
    brain = _sig((inner - 0.035 - rho) / 0.006)
    g0 = rng.uniform(0.38, 0.5)
    par = g0 + 0.05 * _smooth(rng, S, 5)
    wm = _sig((0.6 + 0.08 * _smooth(rng, S, 5) - rho) / 0.04)
    par = par - rng.uniform(0.04, 0.1) * wm  # FLAIR-like: white matter darker than cortex
    sulci = np.exp(-(_smooth(rng, S, 14) / 0.16) ** 2) * _band(rho, 0.5, inner, 0.03)
    par = par - rng.uniform(0.12, 0.22) * sulci
    v = rng.uniform(0.5, 1.3)  # ventricle size: slice level and age
    vent = np.zeros((S, S), np.float32)
    for side in (-1, 1):
        vy, vx = cy - 0.05 * ry + rng.normal(0, 0.02), cx + side * 0.08 * rx + rng.normal(0, 0.01)
        r = _rho(yy, xx, vy, vx, 0.17 * v * ry, 0.055 * v, ang - side * 0.45, rng, 0.15)
        vent = np.maximum(vent, _inside(r, 0.05 * v, 0.006))
    c, s = math.cos(ang), math.sin(ang)
    u = (xx - cx) * c + (yy - cy) * s
    falx = np.exp(-(u / 0.008) ** 2) * (rho < 0.8) * 0.5
    par = par * (1 - vent) + 0.1 * vent
    par = par * (1 - falx) + 0.12 * falx
    img = brain * par + csf + skull + scalp
    mask = None
    if anomalous:
        while True:
            py, px = _point_in(ra, brain > 0.5, S, lim=0.7)
            if _rho(np.float32(py), np.float32(px), cy, cx, ry, rx, ang) < 0.75:
                break
        r = _loguniform(ra, k["size"])
        con = ra.uniform(*k["contrast"])
        rt = _rho(yy, xx, py, px, r, r * ra.uniform(0.6, 1.0), ra.uniform(0, np.pi), ra, 0.3)
        core = _inside(rt, r, 0.2 * r) * (1.0 + 0.25 * _smooth(ra, S, max(4, int(8 / max(r, 0.05)))))
        lesion = core
        extent = rt < 1.0
        if ra.random() < 0.5:  # surrounding oedema, fainter and larger (part of the whole-tumour mask)
            grow = ra.uniform(1.4, 1.9)
            lesion = np.maximum(core, 0.45 * _inside(rt / grow, r * grow, 0.4 * r))
            extent = rt < grow
        if ra.random() < 0.3:  # necrotic centre
            lesion = lesion - 1.2 * _inside(rt / 0.45, 0.45 * r, 0.1 * r)
        img = img + con * lesion * brain
        mask = extent & (brain > 0.5)
    img = img * rng.uniform(0.85, 1.15) * (1 + 0.08 * _smooth(rng, S, 3))
    sig = rng.uniform(0.012, 0.035)
    img = np.sqrt((img + _noise(rng, S, sig, k)) ** 2 + _noise(rng, S, sig, k) ** 2)  # Rician magnitude noise
    return img, mask


def _liver(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    by, bx = 0.05 + rng.normal(0, 0.03), rng.normal(0, 0.03)
    bry, brx = rng.uniform(0.58, 0.72), rng.uniform(0.84, 0.94)
    rb = _rho(yy, xx, by, bx, bry, brx, rng.normal(0, 0.04), rng, 0.03)
    fat_t = rng.uniform(0.05, 0.13)
    body = _sig((1 - rb) / 0.006)
    inner = _sig((1 - fat_t - 0.05 - rb) / 0.006)
    img = 0.22 * body + 0.2 * _band(rb, 1 - fat_t - 0.05, 1 - fat_t, 0.006)  # fat then muscle wall
    bowel = 0.4 + 0.07 * _smooth(rng, S, 12) + 0.03 * _smooth(rng, S, 30)
    gas = _sig((_smooth(rng, S, 9) - rng.uniform(1.3, 1.9)) / 0.05)
    bowel = bowel * (1 - gas) + 0.03 * gas
    img = img + inner * (bowel - 0.22)
    # liver: large organ on the image's left
    ly, lx = by - 0.08 + rng.normal(0, 0.05), bx - 0.38 + rng.normal(0, 0.04)
    lry, lrx = rng.uniform(0.36, 0.5), rng.uniform(0.3, 0.42)
    rl = _rho(yy, xx, ly, lx, lry, lrx, rng.uniform(-0.35, 0.35), rng, 0.12)
    liver = _inside(rl, 0.35, 0.008) * inner
    L0 = rng.uniform(0.54, 0.63)
    ltex = L0 + 0.012 * _smooth(rng, S, 24)
    for _ in range(rng.integers(2, 6)):  # hepatic vessels: small faint dark spots that normals have too
        vy, vx = _point_in(rng, liver > 0.9, S)
        rv = rng.uniform(0.012, 0.03)
        ltex = ltex - 0.05 * _inside(_rho(yy, xx, vy, vx, rv, rv * rng.uniform(0.5, 1), rng.uniform(0, 3)), rv, 0.005)
    img = img * (1 - liver) + ltex * liver
    # spleen and stomach on the right
    sp = _inside(_rho(yy, xx, by - 0.15 + rng.normal(0, 0.04), bx + 0.6, rng.uniform(0.12, 0.2),
                      rng.uniform(0.08, 0.13), rng.uniform(-0.5, 0.5), rng, 0.1), 0.1, 0.008) * inner
    img = img * (1 - sp) + 0.52 * sp
    st = _inside(_rho(yy, xx, by - 0.28, bx + 0.25 + rng.normal(0, 0.05), rng.uniform(0.1, 0.18),
                      rng.uniform(0.12, 0.2), 0.0, rng, 0.1), 0.12, 0.008) * inner
    air = st * _sig((by - 0.3 - yy) / 0.01)
    img = img * (1 - st) + 0.45 * st
    img = img * (1 - air) + 0.02 * air
    # spine, canal, aorta, paraspinal muscle
    sy = by + bry * rng.uniform(0.55, 0.65)
    vr = rng.uniform(0.09, 0.12)
    vert = _rho(yy, xx, sy, bx, vr, vr * 1.1)
    img = img + (0.85 - img) * _inside(vert, vr, 0.006) - 0.15 * _inside(vert / 0.75, 0.75 * vr, 0.006)
    can = _inside(_rho(yy, xx, sy + vr + 0.04, bx, 0.035, 0.03), 0.03, 0.005)
    img = img * (1 - can) + 0.3 * can
    ao = _inside(_rho(yy, xx, sy - vr - 0.05, bx - 0.06, 0.045, 0.045), 0.045, 0.005)
    img = img * (1 - ao) + rng.uniform(0.55, 0.68) * ao
    for side in (-1, 1):
        m = _inside(_rho(yy, xx, sy + 0.03, bx + side * 0.25, 0.12, 0.1, side * 0.3), 0.1, 0.006)
        img = img * (1 - m) + 0.46 * m
    # ribs: bright spots along the lateral body wall
    for t in np.linspace(-0.9, 0.9, int(rng.integers(5, 9))) + rng.normal(0, 0.08):
        for side in (-1, 1):
            a = side * (np.pi / 2 + t * 0.9) + np.pi / 2 * (1 - side)
            rr = 1 - fat_t - 0.08
            ry_, rx_ = by + rr * bry * math.sin(a), bx + rr * brx * math.cos(a)
            rib = _inside(_rho(yy, xx, ry_, rx_, 0.025, 0.04, a), 0.025, 0.004)
            img = img + (0.8 - img) * rib
    mask = None
    if anomalous:
        n = 1 if ra.random() < 0.65 else int(ra.integers(2, 4))
        mask = np.zeros((S, S), bool)
        lesions = np.zeros((S, S), np.float32)
        size = _loguniform(ra, k["size"])
        con = ra.uniform(*k["contrast"]) * (1 if ra.random() < 0.8 else -0.7)  # mostly hypodense
        for i in range(n):
            py, px = _point_in(ra, liver > 0.95, S)
            r = size * (ra.uniform(0.5, 1.0) if i else 1.0)
            rt = _rho(yy, xx, py, px, r, r * ra.uniform(0.7, 1), ra.uniform(0, 3), ra, 0.2)
            les = _inside(rt, r, 0.15 * r)
            if ra.random() < 0.3:  # rim enhancement
                les = les - 0.5 * _band(rt, 0.85, 1.05, 0.04)
            lesions = np.maximum(lesions, les)
            mask |= (rt < 1.0) & (liver > 0.5)
        img = img - con * lesions * liver * (1 + 0.2 * _smooth(ra, S, 16))
    img = img * rng.uniform(0.9, 1.1)
    img = ndi.gaussian_filter(img + _noise(rng, S, rng.uniform(0.015, 0.035), k), 0.6)
    return img, mask


def _chest(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    img = 0.5 + 0.08 * yy + 0.05 * _smooth(rng, S, 3)
    img = img - 0.3 * _sig((np.abs(xx) - rng.uniform(0.88, 0.98)) / 0.03)  # outside the thorax
    lungs = np.zeros((S, S), np.float32)
    cy = rng.uniform(-0.12, 0.05)
    geom = []
    for side in (-1, 1):
        ly = cy + rng.normal(0, 0.03)
        lx = side * rng.uniform(0.36, 0.44)
        lry = rng.uniform(0.5, 0.62)
        lrx = rng.uniform(0.24, 0.3) * (0.9 if side > 0 else 1.0)
        r = _rho(yy, xx, ly, lx, lry, lrx, side * rng.uniform(0.0, 0.12), rng, 0.08)
        lung = _inside(r, lrx, 0.02) * _sig((ly + 0.8 * lry - 0.25 * (xx - lx) ** 2 * side - yy) / 0.02)
        lungs = np.maximum(lungs, lung)
        geom.append((ly, lx, lry, lrx))
    dark = rng.uniform(0.22, 0.34)
    markings = 0.05 * _smooth(rng, S, 14) + 0.03 * _smooth(rng, S, 30)
    img = img - dark * lungs + markings * lungs
    hy, hx = cy + rng.uniform(0.22, 0.32), rng.uniform(0.05, 0.15)
    heart = _inside(_rho(yy, xx, hy, hx, rng.uniform(0.2, 0.28), rng.uniform(0.25, 0.33), 0.3, rng, 0.05), 0.25, 0.03)
    img = img + 0.16 * heart * (0.4 + lungs)
    img = img + 0.08 * _sig((0.1 - np.abs(xx - rng.normal(0, 0.02))) / 0.02)  # spine and mediastinum
    trachea = _sig((0.035 - np.abs(xx)) / 0.01) * _sig((cy - 0.2 - yy) / 0.05)
    img = img - 0.08 * trachea
    # posterior ribs: one periodic pattern per side, arcs sloping down laterally, spacing widening downwards
    sp = rng.uniform(0.13, 0.17)
    ribs = np.zeros((S, S), np.float32)
    for side, (ly, lx, lry, lrx) in zip((-1, 1), geom):
        arc = yy - 0.5 * (xx - side * 0.05) ** 2 * rng.uniform(0.8, 1.2) + 1
        phase = np.sqrt(np.maximum(arc, 0)) / sp * 2.2 + rng.uniform(0, 1)
        band = ((1 + np.cos(2 * np.pi * phase)) / 2) ** 6
        ribs += band * (np.sign(xx) == side)
    img = img + rng.uniform(0.05, 0.09) * ribs * (0.4 + lungs)
    clav = sum(np.exp(-((yy - (cy - 0.62 + 0.18 * np.abs(xx) * s2)) / 0.03) ** 2) * (np.abs(xx) < 0.6)
               for s2 in (1.0,))
    img = img + 0.1 * clav
    if anomalous:
        kind = ra.choice(3, p=[0.55, 0.3, 0.15])
        con = ra.uniform(*k["contrast"])
        if kind == 2:  # effusion: blunted base of one lung
            ly, lx, lry, lrx = geom[int(ra.integers(2))]
            h = _loguniform(ra, k["size"]) * 1.2
            line = ly + 0.75 * lry - h - 0.3 * (xx - lx - 0.3 * np.sign(lx)) ** 2
            eff = _sig((yy - line) / 0.02) * _sig((lrx * 1.1 - np.abs(xx - lx)) / 0.02)
            img = img + con * 1.4 * eff * lungs
        else:
            py, px = _point_in(ra, lungs > 0.8, S, lim=0.72)
            r = _loguniform(ra, k["size"]) * (0.4 if kind == 1 else 1.0)
            blob = _inside(_rho(yy, xx, py, px, r, r * ra.uniform(0.6, 1), ra.uniform(0, 3), ra, 0.3), r,
                           (0.5 if kind == 0 else 0.15) * r)
            tex = 1 + 0.3 * _smooth(ra, S, 20) if kind == 0 else 1.0
            img = img + con * (1.6 if kind == 1 else 1.0) * blob * tex
    img = ndi.gaussian_filter(img, 0.8)
    img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1) ** rng.uniform(0.8, 1.25)
    return img + _noise(rng, S, rng.uniform(0.008, 0.025), k), None


_H_OD = np.array([0.65, 0.70, 0.29], np.float32) * 1.6  # haematoxylin optical density (purple-blue)
_E_OD = np.array([0.07, 0.99, 0.11], np.float32) * 1.0  # eosin (pink)


def _nuclei_positions(rng, S, n, density):
    """n positions (pixels) accepted with probability `density` (S,S in [0,1]): clustered tissue."""
    y = rng.uniform(0, S, 3 * n)
    x = rng.uniform(0, S, 3 * n)
    keep = rng.random(3 * n) < density[y.astype(int), x.astype(int)]
    return y[keep][:n], x[keep][:n]


def _histo(rng, ra, S, anomalous, k):
    yy, xx = _grid(S)
    px = S / 224.0
    e = 0.5 + 0.15 * _smooth(rng, S, 6)
    fib = _smooth(rng, S, 28, 7)
    if rng.random() < 0.5:
        fib = fib.T
    e = e + 0.1 * fib
    space = _sig((_smooth(rng, S, 5) - rng.uniform(1.1, 1.8)) / 0.08)  # fat / lumen: empty
    tissue = 1 - space
    dens = np.clip(0.55 + 0.5 * _smooth(rng, S, 4), 0.05, 1.0) * tissue
    n = int(rng.uniform(0.010, 0.016) * S * S / px ** 2)
    ny, nx = _nuclei_positions(rng, S, n, dens)
    nr = rng.uniform(2.0, 3.4, ny.size) * px
    na = rng.uniform(1.0, 1.35, ny.size)
    nh = rng.uniform(1.0, 1.5, ny.size) * rng.uniform(0.85, 1.15)
    if anomalous:  # metastatic cluster: big, pleomorphic, crowded, paler (vesicular) nuclei
        r = _loguniform(ra, k["size"])
        con = ra.uniform(*k["contrast"])
        cy, cx = _point_in(ra, np.ones((S, S), bool), S, lim=0.65)
        region = _inside(_rho(yy, xx, cy, cx, r, r * ra.uniform(0.6, 1), ra.uniform(0, 3), ra, 0.35), r, 0.1 * r)
        iy, ix = np.clip(ny.astype(int), 0, S - 1), np.clip(nx.astype(int), 0, S - 1)
        drop = ra.random(ny.size) < region[iy, ix] * min(1.0, 0.3 + con)
        ny, nx, nr, na, nh = ny[~drop], nx[~drop], nr[~drop], na[~drop], nh[~drop]
        m = int(region.sum() * (0.012 + 0.012 * con) / px ** 2) + 1
        cells = np.flatnonzero(region.ravel() > 0.5)
        pick = cells[ra.integers(cells.size, size=m)] if cells.size else np.zeros(0, np.int64)
        ty = (pick // S).astype(np.float64) + ra.uniform(0, 1, pick.size)
        tx = (pick % S).astype(np.float64) + ra.uniform(0, 1, pick.size)
        ny, nx = np.concatenate([ny, ty]), np.concatenate([nx, tx])
        nr = np.concatenate([nr, ra.uniform(3.0 + 1.5 * con, 4.0 + 4.5 * con, ty.size) * px])
        na = np.concatenate([na, ra.uniform(1.0, 1.3 + 0.6 * con, ty.size)])
        nh = np.concatenate([nh, ra.uniform(0.6, 1.2, ty.size) * (1 - 0.35 * con)])
        e = e + 0.35 * con * region  # more cytoplasm
        tissue = np.maximum(tissue, region)  # tumour fills the empty spaces it grows into
    # render every nucleus at once: nearest-centre map via a distance transform, then an ellipse test
    seeds = np.zeros((S, S), bool)
    iy, ix = np.clip(ny.astype(int), 0, S - 1), np.clip(nx.astype(int), 0, S - 1)
    seeds[iy, ix] = True
    lab = np.full((S, S), -1, np.int32)
    lab[iy, ix] = np.arange(iy.size)
    if iy.size:
        _, (cyi, cxi) = ndi.distance_transform_edt(~seeds, return_indices=True)
        idx = lab[cyi, cxi]
        ang = rng.uniform(0, np.pi, iy.size)[idx]
        dy = np.arange(S, dtype=np.float32)[:, None] - ny[idx]
        dx = np.arange(S, dtype=np.float32)[None, :] - nx[idx]
        c, s = np.cos(ang), np.sin(ang)
        u = (dx * c + dy * s) / (nr[idx] * na[idx])
        v = (-dx * s + dy * c) / nr[idx]
        dist = np.sqrt(u * u + v * v)
        nuc = _sig((1 - dist) * nr[idx] / 0.7)
        chrom = 1 + 0.25 * rng.standard_normal((S, S)).astype(np.float32)
        h = nuc * nh[idx] * chrom * (0.75 + 0.35 * _sig((dist - 0.6) / 0.1))  # darker rim
    else:
        h = np.zeros((S, S), np.float32)
    e = np.clip(e, 0, None) * tissue * rng.uniform(0.8, 1.2)
    h = h * rng.uniform(0.8, 1.2)
    od = h[..., None] * _H_OD + e[..., None] * _E_OD
    rgb = np.exp(-od) * rng.uniform(0.92, 1.0, 3).astype(np.float32)
    rgb = rgb + _noise(rng, S, 0.01, k)[..., None]
    return rgb, None


GENERATORS = {
    "Brain_AD": _brain,
    "Liver_AD": _liver,
    "Retina_RESC_AD": resc,
    "Chest_AD": _chest,
    "Histopathology_AD": _histo,
    "Retina_OCT2017_AD": oct2017,
}
