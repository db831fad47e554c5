"""Test oracle: a task scored against materialised banks by brute force (independent of the evaluator)."""

import numpy as np

from pclsim import metrics as metric_fns
from pclsim.core.knn import nn_distances
from pclsim.core.scoring import anomaly_maps, identify_task, image_score


def brute_evaluate(task, banks: list[np.ndarray], identify: bool, reweighting="paper", sigma=4.0):
    """Reference: materialised banks, plain exact k-NN per bank, float64 neighbour scans, sklearn-checked metrics."""
    q = task.test.reshape(-1, task.dim)
    n_img, p, _ = task.test.shape
    per_bank = []
    for b in banks:
        d, i = nn_distances(q, b, backend="torch")
        per_bank.append((d.reshape(n_img, p), i.reshape(n_img, p)))
    if identify and len(banks) > 1:
        chosen = identify_task(np.stack([d.mean(1) for d, _ in per_bank], axis=1))
    else:
        chosen = np.zeros(n_img, dtype=np.int64)
    scores = np.array([image_score(per_bank[c][0][n], per_bank[c][1][n], task.test[n], banks[c], reweighting)
                       for n, c in enumerate(chosen)])
    out = metric_fns.image_metrics(task.labels, scores)
    if task.masks is not None:
        patch = np.stack([per_bank[c][0][n] for n, c in enumerate(chosen)])
        maps = anomaly_maps(patch, task.grid, task.masks.shape[-1], sigma)
        out["pixel_auroc"] = metric_fns.pixel_auroc(task.masks, maps)
        out["pixel_aupro"] = metric_fns.aupro(task.masks, maps)
    return out, chosen
