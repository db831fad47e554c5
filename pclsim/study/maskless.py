"""Pixel labels for tasks without masks: `evaluation.maskless_pixels` (method.md section 5).

`skip` (pclsim's default): tasks without masks get no pixel metrics; means of pixel metrics run
over the masked tasks only.
`paper` (the authors' treatment, needed to compare with the paper's Table 1 pixel rows): every
normal test image of a mask-less task gets an all-0 mask, every anomalous one an all-0 or an
all-1 mask by a fair coin. pclsim seeds the coin from (seed, task name), so the draw is
reproducible and independent of the other tasks of the stream; `maskless_record` lists the
images that got all-1 masks so that every output can name them.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ..core.task_features import TaskFeatures

__all__ = ["MASKLESS_POLICIES", "maskless_all_ones", "apply_maskless_policy", "maskless_record"]

MASKLESS_POLICIES = ("skip", "paper")


def _check(policy: str) -> None:
    if policy not in MASKLESS_POLICIES:
        raise ValueError(f"evaluation.maskless_pixels: {policy!r} is not one of {', '.join(MASKLESS_POLICIES)}")


def maskless_all_ones(labels: np.ndarray, task: str, seed: int) -> np.ndarray:
    """(N,) bool: which test images get an all-1 mask under `paper`.

    labels: (N,) int, 1 = anomalous. Normal images are always False; each anomalous image is True
    with probability 1/2, drawn from numpy's default_rng seeded with [seed, crc32(task)].
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng([int(seed), zlib.crc32(str(task).encode())])
    coin = rng.random(labels.shape[0]) < 0.5  # one draw per image, so a label change elsewhere keeps the others
    return coin & (labels == 1)


def apply_maskless_policy(tasks: dict[str, TaskFeatures], policy: str, seed: int) -> dict[str, TaskFeatures]:
    """Tasks with the policy's pixel labels: `skip` returns `tasks` unchanged; `paper` gives every task whose
    `masks` is None (N, S, S) bool masks per `maskless_all_ones` (S = the task's image_size). Tasks with masks,
    and the feature arrays, are shared, not copied. Raises ValueError for an unknown policy."""
    _check(policy)
    if policy == "skip":
        return tasks
    out = {}
    for name, tf in tasks.items():
        if tf.masks is not None:
            out[name] = tf
            continue
        ones = maskless_all_ones(tf.labels, tf.name, seed)
        masks = np.zeros((tf.labels.shape[0], tf.image_size, tf.image_size), dtype=bool)
        masks[ones] = True
        out[name] = dataclasses.replace(tf, masks=masks)
    return out


def maskless_record(tasks: dict[str, TaskFeatures], policy: str, seed: int) -> dict[str, list[int]]:
    """Per mask-less task, the test-image indices that got all-1 masks (empty dict under `skip`)."""
    _check(policy)
    if policy == "skip":
        return {}
    return {name: [int(i) for i in np.flatnonzero(maskless_all_ones(tf.labels, tf.name, seed))]
            for name, tf in tasks.items() if tf.masks is None}
