"""Label-free threshold policies (issue 24): hand computations, ties, one calibration image, scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_curve, precision_score, recall_score

from pclsim.core.metric_registry import chance_of, get_metric
from pclsim.core.thresholds import (ThresholdPolicy, deployed_metrics, fit_fpr, fit_sigma, fit_valid, parse_policy,
                                   split_metric_name)


def test_fpr_threshold_is_the_inverted_cdf_quantile_by_hand():
    s = np.arange(1.0, 11.0)                     # 1..10
    assert fit_fpr(s, 0.1) == 9.0                # 9 of 10 at or below: 1 above (10 %)
    assert fit_fpr(s, 0.05) == 10.0              # ceil(9.5) = 10: nothing above
    assert fit_fpr(s, 0.0) == 10.0
    assert fit_fpr(s, 0.5) == 5.0
    assert fit_fpr([1.0, 1.0, 1.0, 2.0], 0.5) == 1.0   # ties: one of four above
    assert fit_fpr([3.5], 0.05) == 3.5 and fit_fpr([3.5], 0.9) == 3.5  # one calibration image: its own score


@pytest.mark.parametrize("seed", range(5))
def test_fpr_threshold_is_the_smallest_calibration_score_with_at_most_fpr_above(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=int(rng.integers(1, 60))), 1)  # rounded: ties
    for a in (0.0, 0.01, 0.05, 0.1, 0.33, 0.5, 0.9):
        ok = [c for c in np.unique(s) if np.mean(s > c) <= a]
        assert fit_fpr(s, a) == min(ok)


def test_sigma_threshold_by_hand():
    assert fit_sigma([1.0, 2.0, 3.0], 3) == pytest.approx(2.0 + 3.0 * np.sqrt(2.0 / 3.0))
    assert fit_sigma([1.0, 2.0, 3.0], 0) == pytest.approx(2.0)
    assert fit_sigma([4.0, 4.0], 3) == 4.0
    assert fit_sigma([7.25], 3) == 7.25                  # one image: std 0 (ddof 0)
    assert fit_sigma([1.0, 3.0], -1) == pytest.approx(1.0)


def test_valid_threshold_by_hand_with_ties():
    assert fit_valid([1, 2, 3, 4], [0, 0, 1, 1]) == 2.0       # > 2: both anomalies, F1 1
    assert fit_valid([1, 2, 2, 3], [0, 1, 0, 1]) == 1.0       # tied scores 2 go together: F1 0.8 at t = 1
    assert fit_valid([1, 2, 3, 4], [1, 0, 0, 1]) == 3.0       # F1 2/3 at -inf and at 3: the higher wins
    assert fit_valid([5, 5, 5], [1, 1, 0]) == -np.inf          # all tied: calling all anomalous is the only way
    with pytest.raises(ValueError, match="no anomalous image"):
        fit_valid([1, 2], [0, 0])


@pytest.mark.parametrize("seed", range(5))
def test_valid_threshold_reaches_scikit_learns_best_f1(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = np.round(rng.normal(size=n) + y, 1)
    t = fit_valid(s, y)
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.nanmax(2 * p * r / (p + r))
    assert f1_score(y, s > t) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(5))
def test_deployed_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + y
    thr = rng.choice([-0.2, 0.4, 0.9], n)                      # each image its bank's threshold
    got = deployed_metrics(y, s, thr)
    pred = s > thr
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert got["image_precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
    assert got["image_recall"] == pytest.approx(recall_score(y, pred))
    assert got["image_f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
    assert got["image_fpr"] == pytest.approx(fp / (fp + tn))


def test_deployed_metrics_edge_cases():
    got = deployed_metrics([0, 1], [1.0, 2.0], 5.0)            # nothing called anomalous
    assert got["image_precision"] == 0.0 and got["image_f1"] == 0.0 and got["image_recall"] == 0.0
    assert np.isnan(deployed_metrics([0, 0], [1.0, 2.0], 1.5)["image_recall"])
    assert np.isnan(deployed_metrics([1, 1], [1.0, 2.0], 1.5)["image_fpr"])
    assert deployed_metrics([0, 1], [1.0, 1.5], 1.5)["image_recall"] == 0.0  # equal to the threshold: normal


def test_policies_parse_and_refuse_bad_values():
    assert parse_policy({"fpr": 0.05}) == ThresholdPolicy("fpr", 0.05)
    assert parse_policy({"sigma": 3}).label == "sigma3"
    assert parse_policy("valid").label == "valid"
    for bad, msg in (({"fpr": 1.5}, "not a false-positive rate"), ({"fpr": -0.1}, "not a false-positive rate"),
                     ({"sigma": "x"}, "expected a number"), ({"sigma": float("nan")}, "expected a number"),
                     ({"quantile": 0.9}, "unknown threshold policy"), ("fpr", "expected"),
                     ({"fpr": 0.1, "sigma": 2}, "expected")):
        with pytest.raises(ValueError, match=msg):
            parse_policy(bad)
    assert split_metric_name("image_f1@fpr0.05") == ("image_f1", ThresholdPolicy("fpr", 0.05))
    assert split_metric_name("image_f1") is None and split_metric_name("image_auroc@fpr0.1") is None


@pytest.mark.parametrize("policy", [{"fpr": 0.05}, {"fpr": 0.2}, {"sigma": 1.5}])
def test_chance_levels_are_what_scores_without_information_get(policy):
    """Scores independent of the labels, threshold fitted on normal calibration scores of the same law."""
    p = parse_policy(policy)
    rng = np.random.default_rng(1)
    prevalence = 0.3
    y = rng.random(400_000) < prevalence
    s = rng.normal(size=y.size)
    thr = p.fit(rng.normal(size=200_000))
    got = deployed_metrics(y, s, thr)
    for base in ("image_precision", "image_recall", "image_f1", "image_fpr"):
        name = f"{base}@{p.label}"
        assert get_metric(name).kind == "image"
        assert got[base] == pytest.approx(chance_of(name, prevalence), abs=0.006), name
    if p.kind == "sigma":
        assert chance_of(f"image_recall@{p.label}", prevalence) == pytest.approx(norm.sf(1.5))
