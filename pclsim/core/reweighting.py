"""The registry of image-score reweightings: the values `model.reweighting` may take (method.md section 3).

PatchCore's image score is the largest patch distance s* of an image, optionally scaled by a weight
w in [0, 1] read from the bank around m*, the bank vector nearest that patch (Roth et al. 2022,
eq. 7). A reweighting is one `Reweighting`, registered with `register_reweighting`; the scenario's
allowed values are this registry's names and `pclsim.core.scoring` applies it, so a new one touches this
file (or one registry call) plus its test. numpy only: importing it loads no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Reweighting", "REWEIGHTINGS", "register_reweighting", "get_reweighting"]


@dataclass(frozen=True)
class Reweighting:
    """How an image score s* is reweighted.

    name: the `model.reweighting` value.
    neighbours: how many nearest bank vectors of m* the weight reads (m* itself first); 0: none, s* is
        kept as it is. The evaluator finds at most 9 (pclsim.study.protocol).
    weight(s_star, dists, dim) -> w: s_star (n,) float64, dists (n, neighbours) float64 Euclidean
        distances from each image's s* patch to those bank vectors (m* first), dim the feature
        dimension D; returns the (n,) weights. The reweighted score is w * s*.
    """

    name: str
    neighbours: int
    weight: Callable | None = None


REWEIGHTINGS: dict[str, Reweighting] = {}


def register_reweighting(rw: Reweighting) -> Reweighting:
    """Add (or replace) a reweighting under `rw.name`; returns it. ValueError when it reads neighbours but has
    no weight."""
    if rw.neighbours and rw.weight is None:
        raise ValueError(f"reweighting {rw.name!r} reads {rw.neighbours} neighbours but has no weight function")
    REWEIGHTINGS[rw.name] = rw
    return rw


def get_reweighting(name: str) -> Reweighting:
    """The reweighting registered as `name`; ValueError naming the valid ones otherwise."""
    try:
        return REWEIGHTINGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reweighting {name!r}; valid: {', '.join(REWEIGHTINGS)}") from None


def _paper(s_star: np.ndarray, dists: np.ndarray, dim: int) -> np.ndarray:
    """The authors' variant of PatchCore eq. 7 (method.md section 3): w = 1 - exp(s*/T) / sum_n exp(d_n/T) over
    the 2 nearest bank neighbours n of m* (m* excluded), T = sqrt(D); written stably as 1 - 1 / sum exp((d_n - s*)/T)."""
    t = math.sqrt(dim)
    return 1.0 - 1.0 / np.exp((dists[:, 1:] - s_star[:, None]) / t).sum(1)


def _anomalib(s_star: np.ndarray, dists: np.ndarray, dim: int) -> np.ndarray:
    """anomalib's PatchCore: w = 1 - softmax(d)[m*] over the distances d to the 9 nearest bank vectors of m*
    (m* included, first) (method.md section 3)."""
    e = np.exp(dists - dists.max(1, keepdims=True))
    return 1.0 - e[:, 0] / e.sum(1)


register_reweighting(Reweighting("paper", neighbours=3, weight=_paper))
register_reweighting(Reweighting("anomalib", neighbours=9, weight=_anomalib))
register_reweighting(Reweighting("none", neighbours=0))
