"""The report's gallery: stored anomaly maps (gallery/*.npz: image, mask, amap, task, score, label)
drawn as image | ground-truth mask | map overlay strips, one colour scale per task.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .figures import new_figure, save_figure
from .reading import ReportData, first_line
from .style import MAP_CMAP

__all__ = ["fig_gallery", "GALLERY_MAX"]

GALLERY_MAX = 24  # samples shown


def _load_gallery(folder: Path) -> tuple[list[dict], list[str]]:
    """(readable samples, "name (why)" of the broken files): a broken file must not cost the report."""
    items, bad = [], []
    for p in sorted(folder.glob("*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                img = np.asarray(z["image"])
                amap = np.asarray(z["amap"], dtype=np.float32)
                mask = np.asarray(z["mask"], dtype=bool) if "mask" in z.files else np.zeros(amap.shape, bool)
                it = {"name": p.name, "image": img, "amap": amap, "mask": mask,
                      "task": str(z["task"]) if "task" in z.files else p.stem,
                      "score": float(z["score"]) if "score" in z.files else float("nan"),
                      "label": int(z["label"]) if "label" in z.files else -1}
            if img.ndim == 2:
                it["image"] = np.repeat(img[..., None], 3, axis=2)
            if it["image"].ndim != 3 or amap.ndim != 2 or amap.shape != it["image"].shape[:2]:
                raise ValueError("image/amap shapes disagree")
            if it["mask"].shape != amap.shape:
                it["mask"] = np.zeros(amap.shape, bool)
            items.append(it)
        except Exception as e:  # a broken gallery file must not cost the whole report
            bad.append(f"{p.name} ({first_line(e)})")
    return items, bad


def _strip(it: dict, lo: float, hi: float, cmap) -> np.ndarray:
    """image | mask | map overlay side by side as one RGB array: one axes per sample keeps drawing cheap."""
    img = it["image"]
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    img = img[..., :3].astype(np.float32)
    h, w = img.shape[:2]
    mask = np.where(it["mask"][..., None], 255.0, 0.0) * np.ones(3, np.float32) if it["mask"].any() \
        else np.full((h, w, 3), 230.0, np.float32)
    norm = np.clip((np.nan_to_num(it["amap"], nan=lo) - lo) / (hi - lo), 0, 1)
    heat = cmap(norm)[..., :3].astype(np.float32) * 255.0
    overlay = 0.5 * img + 0.5 * heat
    gap = np.full((h, max(2, w // 40), 3), 255.0, np.float32)
    return np.concatenate([img, gap, mask, gap, overlay], axis=1).astype(np.uint8)


def fig_gallery(d: ReportData, out: Path) -> tuple[tuple[str, str] | None, list[str], int]:
    """gallery.png from RESULTS/gallery/*.npz (the sweep's --gallery): at most GALLERY_MAX samples, every
    task represented. Returns ((file name, caption) or None, the unreadable files with why, files found)."""
    import matplotlib

    folder = d.root / "gallery"
    if not folder.is_dir():
        return None, [], 0
    items, bad = _load_gallery(folder)
    if not items:
        return None, bad, 0
    total = len(items)
    # keep every task represented when capping
    by_task: dict[str, list[dict]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    order = [t for t in d.tasks if t in by_task] + sorted(set(by_task) - set(d.tasks))
    per = max(1, GALLERY_MAX // len(order))
    shown = [it for t in order for it in by_task[t][:per]][:GALLERY_MAX]
    lim = {}
    for t, its in by_task.items():  # one colour scale per task: scores compare within a task
        v = np.concatenate([i["amap"].ravel() for i in its])
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        lim[t] = (lo, hi if hi > lo else lo + 1.0)
    cmap = matplotlib.colormaps[MAP_CMAP]
    pairs = 2 if len(shown) > 1 else 1
    nrow = math.ceil(len(shown) / pairs)
    fig = new_figure(6.6 * pairs, 2.45 * nrow + 0.6, layout=None)
    axes = fig.subplots(nrow, pairs, squeeze=False)
    height = 2.45 * nrow + 0.6
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, wspace=0.04, hspace=0.22)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k, it in enumerate(shown):
        ax = axes.ravel()[k]
        ax.imshow(_strip(it, *lim[it["task"]], cmap), interpolation="nearest")
        lab = {1: "anomalous", 0: "normal"}.get(it["label"], "label ?")
        ax.set_title(f"{it['task']} ({lab}), score {it['score']:.3g}", fontsize=8.5)
        if not it["mask"].any():
            h, w = it["mask"].shape
            ax.text(w * 1.5 + max(2, w // 40), h / 2, "no mask", ha="center", va="center", fontsize=8)
    fig.suptitle("Anomaly maps: image | ground-truth mask | map overlay (colour scale per task)", fontsize=10,
                 y=1 - 0.2 / height)
    name = save_figure(fig, out, "gallery.png")
    cap = (f"Anomaly maps stored by the sweep's --gallery option: {len(shown)} of {total} shown. Each panel: "
           "the test image, its ground-truth mask (grey: none) and the anomaly map over the image; map colours "
           "are scaled per task.")
    return (name, cap), bad, total
