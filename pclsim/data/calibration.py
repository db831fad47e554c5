"""The calibration split (`dataset.calibration`): normal training images held out of every memory bank.

A share `fraction` of each task's training images (all normal), chosen at random with numpy's
default_rng seeded by [dataset.seed, crc32(task name)] (so one task's draw does not depend on the
others), is moved to the end of the task's training list and counted in `TaskData.n_calibration`.
The feature store keeps them with the task (`FeatureRef.n_calibration`); `TaskFeatures.train` then
holds the other images' patches only (every bank is built from those) and `TaskFeatures.calibration`
the held-out images' patches, which fit the label-free thresholds (pclsim.core.thresholds).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ..errors import DataError

__all__ = ["calibration_count", "split_calibration", "append_validation"]


def calibration_count(n_train: int, fraction: float) -> int:
    """Images held out of n_train at `fraction` (0 <= fraction < 1): round(fraction * n_train), at least 1
    when fraction > 0; 0 when fraction is 0."""
    if not fraction:
        return 0
    return max(1, int(round(float(fraction) * int(n_train))))


def split_calibration(task, fraction: float, seed: int):
    """`task` (TaskData) with its calibration images last in `train` and `n_calibration` set.

    Raises DataError naming dataset.calibration and the task when no training image would be left."""
    if task.n_validation:
        raise ValueError("split_calibration before append_validation: the validation images are last")
    n = len(task.train)
    k = calibration_count(n, fraction)
    if k == 0:
        return task
    if k >= n:
        raise DataError(f"dataset.calibration: {fraction} of task {task.name}'s {n} training images holds out "
                        f"{k}, leaving none for its memory bank; lower it or add training images")
    rng = np.random.default_rng([int(seed), zlib.crc32(str(task.name).encode())])
    held = np.zeros(n, dtype=bool)
    held[rng.choice(n, size=k, replace=False)] = True
    train = [s for s, h in zip(task.train, held) if not h] + [s for s, h in zip(task.train, held) if h]
    return dataclasses.replace(task, train=train, n_calibration=k)


def append_validation(task, kind: str):
    """`task` with its labelled validation samples (TaskData.validation) appended to `train` after the
    calibration images, counted in `n_validation` (no bank reads them; a `valid` threshold does).

    Raises DataError naming evaluation.thresholds when the data set kind gave the task no validation split."""
    if not task.validation:
        raise DataError(f"evaluation.thresholds: valid needs a labelled validation split; task {task.name} of "
                        f"dataset.kind {kind} has none (BMAD's valid/ under protocol clean has one)")
    return dataclasses.replace(task, train=list(task.train) + list(task.validation), validation=None,
                               n_validation=len(task.validation))
