"""Evaluation metrics (method.md section 6): image, pixel and continual, on numpy arrays.

Ranking metrics follow scikit-learn's curves exactly: one curve point per distinct score
(equal scores are one threshold), precision/recall/TPR/FPR from the counts at and above it.
`pixel_metrics` is the fast path used by the evaluator: one sort of the pooled pixels (as its
normal and anomalous halves) shared by all five metrics, binary searches at the anomalous
scores for the ranking metrics, and a (component x threshold) histogram for AU-PRO. The
single-metric functions compute the same values a plainer way (full curves from an argsort,
per-component sorted scores), so each path checks the other.

Bad inputs (wrong shapes, NaN/inf, labels that are not 0/1, a single class, a NaN cell a
continual metric needs) raise ValueError.

The continual metrics of a T x T matrix (final mean, forgetting, BWT, FWT, relative gap) live in
`pclsim.analysis.continual`; `pclsim.metrics` (interface.md's stable names) re-exports both modules.
`memory_mb` (a bank's size) lives here because the results writers, below the analysis, need it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "image_auroc", "f1_max", "image_metrics",
    "pixel_auroc", "pixel_f1", "pixel_pr", "pixel_ap", "aupro", "pixel_metrics", "mask_components",
    "memory_mb",
]


# ----------------------------------------------------------------------------- input checks

def _as_binary(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a boolean or 0/1 numeric array, got dtype {a.dtype}")
    ok = (a == 0) | (a == 1)
    if not ok.all():
        bad = a[~ok].ravel()[0]
        raise ValueError(f"{name}: values must be 0/1 (or bool), found {bad!r}")
    return a.astype(bool)


def _as_scores(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def _check_both_classes(y: np.ndarray, name: str) -> None:
    n1 = int(np.count_nonzero(y))
    if n1 == 0 or n1 == y.size:
        which = "positive (anomalous)" if n1 == 0 else "negative (normal)"
        raise ValueError(f"{name}: needs both classes, found no {which} entry")


def _check_pair(truth, scores, truth_name: str, scores_name: str, ndim: int, form: str):
    """(truth as bool, scores) after the checks shared by image and pixel metrics."""
    y = _as_binary(truth, truth_name)
    s = _as_scores(scores, scores_name)
    if y.ndim != ndim or s.ndim != ndim:
        raise ValueError(f"{truth_name} and {scores_name} must be {form}, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        what = f"length: {y.shape[0]} vs {s.shape[0]}" if ndim == 1 else f"shape: {y.shape} vs {s.shape}"
        raise ValueError(f"{truth_name} and {scores_name} differ in {what}")
    _check_both_classes(y, truth_name)
    return y, s


def _check_image(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    return _check_pair(labels, scores, "labels", "scores", 1, "1-D")


def _check_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    return _check_pair(masks, maps, "masks", "maps", 3, "(N,H,W)")


# ----------------------------------------------------------------------------- ranking curves

def _curve_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tps, fps): positives/negatives scoring >= each distinct score, thresholds descending.

    Same points as sklearn's _binary_clf_curve (last index of each run of equal scores).
    """
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps


def _auroc_from(tps: np.ndarray, fps: np.ndarray) -> float:
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def _f1max_from(tps: np.ndarray, fps: np.ndarray) -> float:
    # F1 = 2PR/(P+R) = 2 tp / (tp + fp + all positives)
    return float(np.max(2.0 * tps / (tps + fps + tps[-1])))


def _precision_recall(tps, fps):
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return precision, recall


def _prauc_from(p: np.ndarray, r: np.ndarray) -> float:
    """Trapezoid area of sklearn's PR curve, which starts at the extra point (recall 0, precision 1)."""
    p, r = np.r_[1.0, p], np.r_[0.0, r]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1])) / 2.0)


def _ap_from(p: np.ndarray, r: np.ndarray) -> float:
    return float(np.sum(np.diff(np.r_[0.0, r]) * p))


# ----------------------------------------------------------------------------- image metrics

def image_auroc(labels, scores) -> float:
    """ROC AUC of image scores; labels 1 = anomalous."""
    return _auroc_from(*_curve_counts(*_check_image(labels, scores)))


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds of the PR curve (the oracle threshold)."""
    return _f1max_from(*_curve_counts(*_check_image(labels, scores)))


def image_metrics(labels, scores) -> dict[str, float]:
    """{image_auroc, image_f1} from one curve."""
    tps, fps = _curve_counts(*_check_image(labels, scores))
    return {"image_auroc": _auroc_from(tps, fps), "image_f1": _f1max_from(tps, fps)}


# ----------------------------------------------------------------------------- pixel metrics

def _pixel_counts(masks, maps):
    m, a = _check_pixels(masks, maps)
    return _curve_counts(m.ravel(), a.ravel())


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over the pooled pixels of all images; masks (N,H,W) bool, maps (N,H,W) float."""
    return _auroc_from(*_pixel_counts(masks, maps))


def pixel_f1(masks, maps) -> float:
    """Best F1 over the pooled-pixel PR curve."""
    return _f1max_from(*_pixel_counts(masks, maps))


def pixel_pr(masks, maps) -> float:
    """Trapezoid area under the pooled-pixel PR curve, as sklearn auc(recall, precision)."""
    return _prauc_from(*_precision_recall(*_pixel_counts(masks, maps)))


def pixel_ap(masks, maps) -> float:
    """Average precision of the pooled pixels, as sklearn average_precision_score."""
    return _ap_from(*_precision_recall(*_pixel_counts(masks, maps)))


def _check_pro_args(fpr_limit, num_thresholds) -> None:
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2, got {num_thresholds!r}")


def mask_components(masks) -> tuple[np.ndarray, int]:
    """(labels (N,H,W) int32, count) of the 8-connected ground-truth regions of masks (N,H,W) bool.

    A task's regions never change: compute them once and pass them to `pixel_metrics`."""
    return _components(np.asarray(masks, dtype=bool))


def _components(m: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each image's mask, labelled 1..C over all images."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # full 3x3 in-plane, nothing across images
    return ndimage.label(m, structure=structure)


def _threshold_positions(n_normal: int, num_thresholds: int) -> np.ndarray:
    """Indices into the ascending normal-pixel scores: num_thresholds equally spaced, rounded."""
    return np.rint(np.linspace(0, n_normal - 1, int(num_thresholds))).astype(np.int64)


def _integrate_pro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Normalised area of PRO over FPR in [0, fpr_limit].

    fpr/pro are listed by descending threshold (both non-decreasing); (1, 1) is appended and the
    curve is linearly interpolated at the limit.
    """
    x = np.r_[fpr, 1.0]
    y = np.r_[pro, 1.0]
    k = int(np.searchsorted(x, fpr_limit, side="right"))  # points with fpr <= limit
    if x[k - 1] < fpr_limit:  # k < len(x) here since x[-1] == 1 >= limit
        y_lim = y[k - 1] + (y[k] - y[k - 1]) * (fpr_limit - x[k - 1]) / (x[k] - x[k - 1])
        x, y = np.r_[x[:k], fpr_limit], np.r_[y[:k], y_lim]
    else:
        x, y = x[:k], y[:k]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0 / fpr_limit)


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int = 100) -> float:
    """Normalised area under the per-region-overlap curve up to FPR fpr_limit (method.md section 6).

    Thresholds: num_thresholds equally spaced positions (rounded to the nearest index) of the
    ascending normal-pixel scores. At threshold t, FPR is the fraction of normal pixels scoring
    > t; PRO is the mean over all ground-truth components (8-connected, per image, all images)
    of the fraction of the component's pixels scoring > t. The point (1, 1) is added; the
    trapezoid area up to fpr_limit (interpolated there) is divided by fpr_limit.
    """
    _check_pro_args(fpr_limit, num_thresholds)
    m, a = _check_pixels(masks, maps)
    normal = np.sort(a[~m])
    th = normal[_threshold_positions(normal.size, num_thresholds)]  # ascending
    fpr = (normal.size - np.searchsorted(normal, th, side="right")) / normal.size
    lab, n_comp = _components(m)
    comp = lab[m]
    sc = a[m]
    order = np.lexsort((sc, comp))
    comp, sc = comp[order], sc[order]
    start = np.searchsorted(comp, np.arange(1, n_comp + 2))
    pro = np.zeros(th.size)
    for c in range(n_comp):
        seg = sc[start[c]:start[c + 1]]  # this component's scores, ascending
        pro += (seg.size - np.searchsorted(seg, th, side="right")) / seg.size
    pro /= n_comp
    return _integrate_pro(fpr[::-1], pro[::-1], float(fpr_limit))


def _ranking_fast(s0: np.ndarray, s1: np.ndarray) -> dict[str, float]:
    """AUROC, F1-max, PR area and AP from the sorted normal (s0) and anomalous (s1) scores.

    On sklearn's curve (one point per distinct score, thresholds descending) recall only moves at
    scores that some anomalous pixel has, F1 can only peak there, and AUROC is the tie-aware
    Mann-Whitney count over anomalous pixels; so only those points and the curve point just
    before each (the next larger distinct score) are visited, counted by binary search.
    """
    n0, n1 = s0.size, s1.size
    start = np.flatnonzero(np.concatenate(([True], s1[1:] != s1[:-1])))
    u = s1[start]  # ascending distinct anomalous scores
    pos_lt = start.astype(np.int64)  # anomalous < u
    pos_le = np.concatenate((start[1:], [n1])).astype(np.int64)  # anomalous <= u
    neg_lt = np.searchsorted(s0, u, side="left").astype(np.int64)
    neg_le = np.searchsorted(s0, u, side="right").astype(np.int64)
    tps, fps = n1 - pos_lt, n0 - neg_lt  # scores >= u
    tps_prev, fps_prev = n1 - pos_le, n0 - neg_le  # scores > u: the preceding curve point
    # AUROC = P(anomalous > normal) + P(tie) / 2, in exact integers until the final division
    pairs2 = int(np.sum((pos_le - pos_lt) * (2 * neg_lt + (neg_le - neg_lt))))
    precision = tps / (tps + fps)
    seen = tps_prev + fps_prev
    # before the top score sklearn's curve starts at (recall 0, precision 1)
    precision_prev = np.divide(tps_prev, seen, out=np.ones(seen.shape), where=seen > 0)
    d_recall = (tps - tps_prev) / n1
    return {
        "pixel_auroc": pairs2 / (2.0 * n0 * n1),
        "pixel_f1": float(np.max(2.0 * tps / (tps + fps + n1))),
        "pixel_pr": float(np.sum(d_recall * (precision + precision_prev)) / 2.0),
        "pixel_ap": float(np.sum(d_recall * precision)),
    }


def _aupro_fast(m, a, s0, fpr_limit, num_thresholds, components=None) -> float:
    """AU-PRO from the sorted normal scores and a (component x threshold-bucket) histogram."""
    n0 = s0.size
    th = s0[_threshold_positions(n0, num_thresholds)]  # ascending
    fpr = (n0 - np.searchsorted(s0, th, side="right")) / n0
    lab, n_comp = components if components is not None else _components(m)
    # bucket b = number of thresholds strictly below the score: the pixel is above t_k iff k < b
    K = th.size
    comp = lab[m].astype(np.int64) - 1
    bucket = np.searchsorted(th, a[m], side="left")
    hist = np.bincount(comp * (K + 1) + bucket, minlength=n_comp * (K + 1)).reshape(n_comp, K + 1)
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # above[c, k] = sum_{b > k} hist[c, b]
    size = hist.sum(axis=1)
    pro = (above / size[:, None]).mean(axis=0)
    return _integrate_pro(fpr[::-1], pro[::-1], float(fpr_limit))


def pixel_metrics(masks, maps, fpr_limit: float = 0.3, num_thresholds: int = 100,
                  components=None) -> dict[str, float]:
    """{pixel_auroc, pixel_f1, pixel_pr, pixel_ap, pixel_aupro} in one pass (the evaluator's hot path).

    The pooled pixels are sorted once, split into normal and anomalous scores; every metric
    then uses binary searches into those two sorted arrays. components: `mask_components(masks)`,
    computed once per task (the ground-truth regions do not change between evaluations).
    """
    _check_pro_args(fpr_limit, num_thresholds)
    m, a = _check_pixels(masks, maps)
    s0, s1 = np.sort(a[~m], axis=None), np.sort(a[m], axis=None)
    out = _ranking_fast(s0, s1)
    out["pixel_aupro"] = _aupro_fast(m, a, s0, fpr_limit, num_thresholds, components)
    return out


def memory_mb(n_vectors, dim, bytes_per=4) -> float:
    """Decimal megabytes of n_vectors x dim values of bytes_per bytes (float32: 4)."""
    vals = []
    for name, v in (("n_vectors", n_vectors), ("dim", dim), ("bytes_per", bytes_per)):
        ok = isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())
        if isinstance(v, (bool, np.bool_)) or not ok or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        vals.append(int(v))
    return vals[0] * vals[1] * vals[2] / 1e6
