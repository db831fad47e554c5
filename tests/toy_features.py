"""Small hand-made TaskFeatures: each task a distinct patch distribution, anomalies = displaced patches."""

from __future__ import annotations

import numpy as np

from pclsim.core.task_features import TaskFeatures


def make_tasks(n_tasks: int = 3, *, dim: int = 8, grid=(4, 4), n_train: int = 20, n_test: int = 12,
               image_size: int = 32, seed: int = 0, masks_for=(0,)) -> dict[str, TaskFeatures]:
    rng = np.random.default_rng(seed)
    p = grid[0] * grid[1]
    cell = image_size // grid[0]
    out = {}
    for t in range(n_tasks):
        center = rng.normal(size=dim) * 6
        basis = rng.normal(size=(3, dim))
        def normal(n):
            return center + rng.normal(size=(n, p, 3)) @ basis + 0.3 * rng.normal(size=(n, p, dim))
        train = normal(n_train).reshape(-1, dim)
        test = normal(n_test)
        labels = np.zeros(n_test, dtype=np.int64)
        labels[n_test // 2:] = 1
        masks = np.zeros((n_test, image_size, image_size), dtype=bool)
        for i in np.flatnonzero(labels):
            k = int(rng.integers(0, p))
            strength = 1.0 + 3.0 * (i % 3)  # some anomalies subtle, some obvious
            test[i, k] += strength * rng.normal(size=dim)
            r, c = divmod(k, grid[1])
            masks[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = True
        name = f"T{t}"
        out[name] = TaskFeatures(name, train.astype(np.float32), test.astype(np.float32), labels,
                                 masks if t in masks_for else None, grid, image_size)
    return out
