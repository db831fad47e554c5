"""Deployable image thresholds fitted without test labels (`evaluation.thresholds`), and their metrics.

Every F1 of the accuracy matrices (`image_f1`, `pixel_f1`) is F1-max: the best F1 over all thresholds
of the TEST set, an oracle threshold chosen with the labels it is scored against (the paper's figure,
method.md section 6). A deployed detector has to fix its threshold before it sees a test label. The
policies here fit one threshold per memory bank from data the bank was NOT built from:

- `fpr: a` (a in [0, 1)): the (1 - a) empirical quantile of the image scores of the bank's held-out
  normal training images (`dataset.calibration`), the inverted-CDF definition (numpy's
  `quantile(method="inverted_cdf")`): the smallest calibration score t with F(t) >= 1 - a, so at most
  a share a of the calibration images scores above t.
- `sigma: k` (k a real number): mean + k * standard deviation (population, ddof = 0, so a calibration set
  of one image gives its own score) of the same scores.
- `valid`: the threshold of best F1 on a labelled validation split (images with both labels, never used
  by a bank nor by the test set); ties go to the highest threshold (the fewest alarms).

An image is called anomalous when its score is strictly ABOVE its threshold, for every policy.
The metrics at a fitted threshold (`deployed_metrics`) are precision, recall, F1 and false-positive
rate of the test images; precision is 0 when nothing is called anomalous (scikit-learn's
zero_division=0), recall is NaN without anomalous test images, FPR NaN without normal ones.

Chance levels (what a scorer whose scores carry no information gets, `alarm_rate`): its threshold,
fitted on normal images, calls a share r of ANY images anomalous, independently of the label; so
precision = p (the share of anomalous test images), recall = FPR = r, F1 = 2pr / (p + r). r is `a`
for `fpr: a`, the Gaussian tail 1 - Phi(k) for `sigma: k` (scores without information treated as
Gaussian), and 1 for `valid` (F1 on labels independent of the scores is largest calling every image
anomalous, as for F1-max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ThresholdPolicy", "POLICY_KINDS", "parse_policy", "fit_fpr", "fit_sigma", "fit_valid",
           "deployed_metrics", "DEPLOYED", "PER_POLICY", "metric_name", "split_metric_name", "alarm_rate",
           "needs_validation"]

POLICY_KINDS = ("fpr", "sigma", "valid")
# the metrics each policy adds to the accuracy matrices, as "<name>@<policy label>"
DEPLOYED = ("image_precision", "image_recall", "image_f1", "image_fpr")
PER_POLICY = DEPLOYED + ("threshold", "threshold_drift")


@dataclass(frozen=True)
class ThresholdPolicy:
    """One policy of `evaluation.thresholds`: kind "fpr" | "sigma" | "valid", value its parameter (None for valid)."""

    kind: str
    value: float | None = None

    @property
    def label(self) -> str:
        """The policy's name in metric names: fpr0.05, sigma3, valid."""
        return self.kind if self.value is None else f"{self.kind}{format(self.value, '.15g')}"

    @property
    def needs_calibration(self) -> bool:
        return self.kind in ("fpr", "sigma")

    def fit(self, normal_scores=None, valid_scores=None, valid_labels=None) -> float:
        """The threshold (a score value, same unit as the image scores). Raises ValueError on empty input."""
        if self.kind == "fpr":
            return fit_fpr(normal_scores, self.value)
        if self.kind == "sigma":
            return fit_sigma(normal_scores, self.value)
        return fit_valid(valid_scores, valid_labels)


def parse_policy(entry) -> ThresholdPolicy:
    """A scenario entry -> ThresholdPolicy: {fpr: a} with 0 <= a < 1, {sigma: k} with k finite, or "valid".

    Raises ValueError saying what is wrong (the scenario check adds the key)."""
    if entry == "valid" or entry == {"valid": None}:
        return ThresholdPolicy("valid")
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(f"expected {{fpr: A}}, {{sigma: K}} or valid, got {entry!r}")
    if "valid" in entry:
        raise ValueError(f"valid takes no value: write it as a plain list item (- valid), got {entry!r}")
    (kind, value), = entry.items()
    if kind not in ("fpr", "sigma"):
        raise ValueError(f"unknown threshold policy {kind!r} (valid: {', '.join(POLICY_KINDS)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind}: expected a number, got {value!r}")
    if kind == "fpr" and not 0.0 <= float(value) < 1.0:
        raise ValueError(f"fpr: {value!r} is not a false-positive rate in [0, 1)")
    return ThresholdPolicy(kind, float(value))


def _scores(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{what}: no scores to fit a threshold on")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: NaN or infinite scores")
    return a


def fit_fpr(normal_scores, fpr: float) -> float:
    """(1 - fpr) inverted-CDF quantile of the normal calibration scores (n,): at most a share `fpr` lies above."""
    s = _scores(normal_scores, "fpr threshold")
    return float(np.quantile(s, 1.0 - float(fpr), method="inverted_cdf"))


def fit_sigma(normal_scores, k: float) -> float:
    """mean + k * std (ddof 0) of the normal calibration scores (n,)."""
    s = _scores(normal_scores, "sigma threshold")
    return float(s.mean() + float(k) * s.std())


def fit_valid(scores, labels) -> float:
    """The threshold t of best F1 (anomalous: score > t) on labelled validation images.

    scores (n,), labels (n,) 0/1 with at least one anomalous image. Candidates: -inf (every image
    anomalous) and every distinct score; F1 ties go to the highest candidate. Raises ValueError without
    an anomalous image."""
    s = _scores(scores, "valid threshold")
    y = np.asarray(labels).reshape(-1).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"valid threshold: {y.size} labels for {s.size} scores")
    if not y.any():
        raise ValueError("valid threshold: the validation split has no anomalous image")
    cand = np.r_[-np.inf, np.unique(s)]
    order = np.argsort(s)
    ss, yy = s[order], y[order]
    # images above candidate c: those after the last position holding a score <= c
    above = len(s) - np.searchsorted(ss, cand, side="right")
    tp = np.r_[np.cumsum(yy[::-1])[::-1], 0][len(s) - above]
    f1 = 2 * tp / (above + y.sum())
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(cand[best])


def deployed_metrics(labels, scores, thresholds) -> dict[str, float]:
    """Precision, recall, F1 and FPR of images called anomalous when score > threshold.

    labels (n,) 0/1; scores (n,); thresholds: a scalar or (n,) (each image's bank's threshold).
    Returns {"image_precision", "image_recall", "image_f1", "image_fpr"}: precision 0 and F1 0 when no
    image is called anomalous, recall NaN without anomalous images, FPR NaN without normal images."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pred = s > np.broadcast_to(np.asarray(thresholds, dtype=np.float64), s.shape)
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    pos, neg, called = int(y.sum()), int((~y).sum()), int(pred.sum())
    precision = tp / called if called else 0.0
    recall = tp / pos if pos else float("nan")
    f1 = 2 * tp / (called + pos) if (called + pos) else 0.0
    fpr = fp / neg if neg else float("nan")
    return {"image_precision": float(precision), "image_recall": float(recall), "image_f1": float(f1),
            "image_fpr": float(fpr)}


def metric_name(base: str, policy: ThresholdPolicy) -> str:
    """'image_f1' + fpr 0.05 -> 'image_f1@fpr0.05' (the metric's name in the accuracy matrices)."""
    return f"{base}@{policy.label}"


def split_metric_name(name: str) -> tuple[str, ThresholdPolicy] | None:
    """'image_f1@fpr0.05' -> ('image_f1', ThresholdPolicy('fpr', 0.05)); None when `name` is no such metric."""
    base, sep, label = name.partition("@")
    if not sep or base not in PER_POLICY:
        return None
    if label == "valid":
        return base, ThresholdPolicy("valid")
    for kind in ("fpr", "sigma"):
        if label.startswith(kind):
            try:
                return base, ThresholdPolicy(kind, float(label[len(kind):]))
            except ValueError:
                return None
    return None


def needs_validation(sc: dict) -> bool:
    """Whether a resolved scenario asks for a `valid` threshold (the data loader then reads validation splits)."""
    return any(parse_policy(p).kind == "valid" for p in (sc.get("evaluation") or {}).get("thresholds") or ())


def alarm_rate(policy: ThresholdPolicy) -> float:
    """Share of images a scorer without information calls anomalous under `policy` (see the module docstring)."""
    if policy.kind == "fpr":
        return float(policy.value)
    if policy.kind == "sigma":
        from scipy.stats import norm

        return float(norm.sf(policy.value))
    return 1.0
