"""Scoring against independent references: scipy blur, hand-written reweighting."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from pclsim.core.scoring import anomaly_maps, identify_task, image_score


def test_anomaly_map_is_bilinear_upsample_then_scipy_gaussian():
    rng = np.random.default_rng(0)
    d = rng.random((2, 28 * 28)).astype(np.float32)
    got = anomaly_maps(d, (28, 28), 224, sigma=4)
    up = F.interpolate(torch.from_numpy(d).reshape(2, 1, 28, 28), size=(224, 224), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    for i in range(2):
        ref = ndimage.gaussian_filter(up[i].astype(np.float64), sigma=4, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(got[i], ref, atol=1e-5)
    flat = anomaly_maps(np.full((1, 16), 3.0, np.float32), (4, 4), 32)
    np.testing.assert_allclose(flat, 3.0, atol=1e-5)


def test_identify_task_picks_lowest_mean():
    assert identify_task(np.array([[3.0, 1.0, 2.0], [0.5, 0.7, 0.1]])).tolist() == [1, 2]


def test_paper_reweighting_by_hand():
    # bank of 4 points on a line in 4-D, query patches: patch 1 is the farthest
    bank = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [3, 0, 0, 0], [10, 0, 0, 0]], dtype=np.float32)
    q = np.array([[0.1, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float32)
    d = np.linalg.norm(q[:, None] - bank[None], axis=-1)
    nn = d.argmin(1)
    pd_ = d.min(1)
    s_star = pd_[1]  # = 2, nearest bank vector m* = bank[0]
    # 3 nearest of m* = bank[0] within the bank: itself, bank[1], bank[2]
    d1 = np.linalg.norm(q[1] - bank[1])
    d2 = np.linalg.norm(q[1] - bank[2])
    t = math.sqrt(4)
    w = 1 - math.exp(s_star / t) / (math.exp(d1 / t) + math.exp(d2 / t))
    assert image_score(pd_, nn, q, bank, "paper") == pytest.approx(w * s_star, rel=1e-6)
    assert image_score(pd_, nn, q, bank, "none") == pytest.approx(s_star)
    # anomalib-style: softmax over distances to the (up to) 9 neighbours of m*, weight 1 - p[0]
    dn = np.linalg.norm(q[1] - bank[[0, 1, 2, 3]], axis=1)
    p = np.exp(dn) / np.exp(dn).sum()
    assert image_score(pd_, nn, q, bank, "anomalib") == pytest.approx((1 - p[0]) * s_star, rel=1e-6)
    with pytest.raises(ValueError):
        image_score(pd_, nn, q, bank, "other")


def test_map_operators_equal_the_upsample_then_convolve_pipeline():
    """A_h @ P @ A_w^T (separable, linear) equals F.interpolate + reflect pad + two 1-D convolutions."""
    from pclsim.core.scoring import anomaly_maps_reference

    rng = np.random.default_rng(3)
    for grid, size, sigma in [((28, 28), 224, 4.0), ((8, 12), 64, 4.0), ((7, 7), 56, 2.0), ((4, 4), 32, 0.0)]:
        d = (5 * rng.random((3, grid[0] * grid[1]))).astype(np.float32)
        np.testing.assert_allclose(anomaly_maps(d, grid, size, sigma), anomaly_maps_reference(d, grid, size, sigma),
                                   rtol=1e-5, atol=1e-5)


def test_a_reweighting_registered_in_one_call_is_accepted_and_scored_everywhere():
    """A toy reweighting (w = s* / (s* + distance to m*'s nearest other bank vector)) needs one registry
    call: the scenario accepts it, image_score and the study's evaluator apply it, equal to a hand computation
    and to the brute-force reference."""
    from toy_features import make_tasks
    from brute_force import brute_evaluate
    from pclsim.study.engine import plan_study, prepare_seed, restore_evaluator
    from pclsim.errors import ScenarioError
    from pclsim.core.reweighting import REWEIGHTINGS, Reweighting, register_reweighting
    from pclsim.study.scenario import Run, resolve
    from pclsim.study.strategies import get_strategy

    with pytest.raises(ScenarioError, match="model.reweighting"):
        resolve({"name": "x", "model": {"reweighting": "toy_ratio"}})
    register_reweighting(Reweighting("toy_ratio", neighbours=2, weight=lambda s, d, dim: s / (s + d[:, 1])))
    try:
        assert resolve({"name": "x", "model": {"reweighting": "toy_ratio"}})["model"]["reweighting"] == "toy_ratio"
        bank = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [3, 0, 0, 0], [10, 0, 0, 0]], dtype=np.float32)
        q = np.array([[0.1, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float32)
        d = np.linalg.norm(q[:, None] - bank[None], axis=-1)
        s_star = 2.0  # patch 1, m* = bank[0], whose nearest other bank vector is bank[1]
        by_hand = s_star / (s_star + float(np.linalg.norm(q[1] - bank[1]))) * s_star
        assert image_score(d.min(1), d.argmin(1), q, bank, "toy_ratio") == pytest.approx(by_hand, rel=1e-6)

        coreset = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}
        tasks = make_tasks(2, seed=1, n_train=20)
        runs = [Run("multi_model", 30, 0, ("T0", "T1"))]
        sp = plan_study(runs, coreset).seeds[0]
        ev = restore_evaluator(tasks, sp, coreset, *prepare_seed(tasks, sp, coreset), reweighting="toy_ratio")
        strat = get_strategy("multi_model", 30)
        banks = strat.banks(("T0", "T1"))
        plain = restore_evaluator(tasks, sp, coreset, *prepare_seed(tasks, sp, coreset), reweighting="none")
        for t, task in tasks.items():
            chosen, _ = strat.scoring(banks, t)
            bank_t = ev.bank_vectors(chosen[0])
            per_image = (chosen[0],) * task.test.shape[0]  # every test image scored against the task's own bank
            scores, _ = ev.scores(t, per_image)
            by_hand = [image_score(*_nn(task.test[n], bank_t), task.test[n], bank_t, "toy_ratio")
                       for n in range(task.test.shape[0])]
            np.testing.assert_allclose(scores, by_hand, rtol=1e-5)
            assert not np.allclose(scores, plain.scores(t, per_image)[0])  # the weight does change the scores
            ref, _ = brute_evaluate(task, [bank_t], False, reweighting="toy_ratio")
            assert ev.evaluate(t, chosen, False)["image_auroc"] == pytest.approx(ref["image_auroc"], abs=1e-9)
    finally:
        REWEIGHTINGS.pop("toy_ratio")
    with pytest.raises(ScenarioError, match="model.reweighting"):
        resolve({"name": "x", "model": {"reweighting": "toy_ratio"}})


def _nn(patches: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest bank vector of each patch, float64: (distances (P,), indices (P,))."""
    d = np.linalg.norm(patches[:, None, :].astype(np.float64) - bank[None].astype(np.float64), axis=-1)
    return d.min(1), d.argmin(1)
