"""A few anomaly maps per task, stored for the report (image, mask, map, score)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from .engine import strategy_for


def _pick(labels: np.ndarray, n: int) -> list[int]:
    """Anomalous images first (most of the gallery), then normal ones, in data order."""
    anom = [int(i) for i in np.flatnonzero(labels == 1)]
    norm = [int(i) for i in np.flatnonzero(labels == 0)]
    k = min(len(anom), max(1, (2 * n + 2) // 3))
    return anom[:k] + norm[: n - k]


def gallery_files(out: Path, run, stream, tasks, ev, scenario) -> int:
    """Write gallery/<task>_<i>.npz for `run`'s final state, scored by evaluator `ev`; returns the count."""
    from ..data.images import preprocess

    strat = strategy_for(run, scenario["coreset"])
    banks = strat.banks(tuple(run.order))
    n = scenario["evaluation"]["gallery"]
    tmp = out.with_name(".gallery.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    count = 0
    by_name = {t.name: t for t in stream}
    for name in run.order:
        task_features = tasks[name]
        idx = _pick(task_features.labels, n)
        sb, ident = strat.scoring(banks, name)
        scores, maps = ev.maps(name, sb, ident or strat.identifies_task, idx)
        for k, i in enumerate(idx):
            img, mask = by_name[name].test[i].load()
            x, m = preprocess(img, mask, task_features.image_size, scenario["dataset"].get("resize", "crop"))
            rgb = np.clip((x.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype(np.uint8)
            np.savez_compressed(tmp / f"{name}_{k}.npz", image=rgb,
                                mask=m if m is not None else np.zeros(rgb.shape[:2], bool),
                                amap=maps[k].astype(np.float32), task=name, score=float(scores[k]),
                                label=int(task_features.labels[i]), strategy=run.strategy, memory_size=run.memory_size)
            count += 1
    os.replace(tmp, out)
    return count
