"""pixel_metrics (one pass) vs scikit-learn's functions called one by one, on 40 maps of 224x224.

The sklearn baseline computes pixel AUROC, F1-max, PR area and AP with roc_auc_score,
precision_recall_curve (twice: F1 and auc) and average_precision_score, as an evaluation script
calling each metric separately would; sklearn has no AU-PRO, so pclsim's single-metric `aupro`
is added to make the "all five" baseline.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from _common import emit, timed
from pclsim import metrics as M


def sklearn_four(masks, maps):
    y, s = masks.ravel(), maps.ravel()
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0).max()
    p2, r2, _ = precision_recall_curve(y, s)
    return {"pixel_auroc": roc_auc_score(y, s), "pixel_f1": f1, "pixel_pr": auc(r2, p2),
            "pixel_ap": average_precision_score(y, s)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (a.images, a.size, a.size)
    masks = ndimage.gaussian_filter(rng.random(shape), (0, 6, 6)) > 0.53  # blobs, ~2% of pixels
    maps = (ndimage.gaussian_filter(rng.random(shape), (0, 3, 3)) + 0.05 * masks).astype(np.float32)

    t_fast, fast = timed(M.pixel_metrics, masks, maps, repeat=a.repeat)
    t_sk, sk = timed(sklearn_four, masks, maps, repeat=a.repeat)
    t_pro, pro = timed(M.aupro, masks, maps, repeat=a.repeat)
    emit("metrics", {
        "images": a.images, "size": a.size, "pixels": int(masks.size),
        "anomalous_fraction": float(masks.mean()),
        "pixel_metrics_s": t_fast, "sklearn_four_s": t_sk, "aupro_single_s": t_pro,
        "speedup_vs_sklearn_four": t_sk / t_fast,
        "speedup_vs_sklearn_four_plus_aupro": (t_sk + t_pro) / t_fast,
        "max_abs_diff_vs_sklearn": max(abs(fast[k] - sk[k]) for k in sk),
        "aupro_abs_diff": abs(fast["pixel_aupro"] - pro),
    })


if __name__ == "__main__":
    main()
