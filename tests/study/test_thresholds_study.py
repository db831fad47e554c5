"""Issue 24 in the study: thresholds fitted per bank on held-out calibration images, never on test data."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from pclsim.core.task_features import TaskFeatures
from pclsim.core.thresholds import deployed_metrics, fit_fpr, fit_sigma
from pclsim.data import load_stream
from pclsim.data.calibration import calibration_count, split_calibration
from pclsim.errors import DataError, ScenarioError
from pclsim.study.engine import evaluator_options, plan_study, prepare_seed, restore_evaluator, simulate
from pclsim.study.scenario import Run, resolve
from pclsim.store.entry import store_key
from toy_features import make_tasks

CORESET = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}
POLICIES = [{"fpr": 0.05}, {"sigma": 3}]
P = 16


def sc(refit=True, reweighting="paper", thresholds=POLICIES):
    return {"coreset": CORESET, "model": {"reweighting": reweighting},
            "evaluation": {"pixel_metrics": True, "thresholds": thresholds, "threshold_refit": refit}}


def with_calibration(tasks, n_cal=4):
    """The last n_cal training images of each toy task as its calibration set (as the store opens them)."""
    out = {}
    for n, tf in tasks.items():
        keep = len(tf.train) - n_cal * P
        out[n] = dataclasses.replace(tf, train=tf.train[:keep],
                                     calibration=tf.train[keep:].reshape(n_cal, P, tf.train.shape[1]))
    return out


@pytest.fixture(scope="module")
def tasks():
    return with_calibration(make_tasks(3, seed=0, n_train=24))


ALL = ("patchcore_cl", "multi_model", "joint", "finetune")


def runs(tasks, strategies=ALL, m=60):
    return [Run(s, m, 0, o) for s in strategies for o in itertools.permutations(tasks)]


def evaluator(tasks, scenario):
    (sp,) = plan_study(runs(tasks), CORESET).seeds.values()
    orders, banks, tables = prepare_seed(tasks, sp, CORESET)
    return sp, orders, banks, restore_evaluator(tasks, sp, CORESET, orders, banks, tables,
                                                **evaluator_options(scenario))


def brute_image_scores(queries, bank):
    """Image scores without reweighting: the largest over patches of the nearest bank distance (brute force)."""
    q = np.asarray(queries, dtype=np.float64)
    d = np.sqrt(((q[:, :, None, :] - np.asarray(bank, np.float64)[None, None]) ** 2).sum(-1)).min(-1)
    return d.max(1)


def test_thresholds_are_fitted_on_the_banks_calibration_images_by_brute_force(tasks):
    s = sc(reweighting="none")
    sp, _, _, ev = evaluator(tasks, s)
    for ref in sorted(sp.refs):
        bank = ev.bank_vectors(ref)
        cal = np.concatenate([brute_image_scores(tasks[t].calibration, bank) for t in ref.tasks])
        got = ev.threshold(ref)
        assert got["fpr0.05"] == pytest.approx(fit_fpr(cal, 0.05), rel=1e-5)
        assert got["sigma3"] == pytest.approx(fit_sigma(cal, 3), rel=1e-5)


def test_deployed_metrics_use_the_bank_each_image_was_scored_with(tasks):
    """patchcore_cl routes each image to a bank: its threshold is that bank's (a routing error shows)."""
    s = sc(reweighting="none")
    out = simulate(runs(tasks, ("patchcore_cl", "finetune")), tasks, s)
    sp, _, _, ev = evaluator(tasks, s)
    from pclsim.study.engine import strategy_for

    checked = 0
    for run, res in out[:: 3]:
        strat = strategy_for(run, CORESET)
        for step in range(len(run.order)):
            banks = strat.banks(run.order[: step + 1])
            for j, task in enumerate(run.order):
                sb, ident = strat.scoring(banks, task)
                chosen = ev.route(task, sb, ident or strat.identifies_task)
                refs = [sb[c] for c in chosen]
                scores = np.array([brute_image_scores(tasks[task].test[i:i + 1], ev.bank_vectors(r))[0]
                                   for i, r in enumerate(refs)])
                thr = np.array([ev.threshold(r)["fpr0.05"] for r in refs])
                want = deployed_metrics(tasks[task].labels, scores, thr)
                assert res.matrices["image_f1@fpr0.05"][step, j] == pytest.approx(want["image_f1"])
                assert res.matrices["image_fpr@fpr0.05"][step, j] == pytest.approx(want["image_fpr"])
                assert res.matrices["threshold@fpr0.05"][step, j] == pytest.approx(thr.mean())
                checked += 1
    assert checked > 20


def test_poisoned_test_labels_and_images_leave_banks_and_thresholds_unchanged(tasks):
    rng = np.random.default_rng(7)
    poisoned = {n: dataclasses.replace(tf, labels=1 - tf.labels,
                                       test=rng.normal(size=tf.test.shape).astype(np.float32) * 50)
                for n, tf in tasks.items()}
    s = sc()
    sp, orders, banks, ev = evaluator(tasks, s)
    _, orders2, banks2, ev2 = evaluator(poisoned, s)
    assert orders.keys() == orders2.keys() and all(np.array_equal(orders[k], orders2[k]) for k in orders)
    for ref in sp.refs:
        assert np.array_equal(ev.bank_vectors(ref), ev2.bank_vectors(ref))
        assert ev.threshold(ref) == ev2.threshold(ref)
    # and the calibration images do change them: they are what the thresholds read
    moved = {n: dataclasses.replace(tf, calibration=tf.calibration * 1.5) for n, tf in tasks.items()}
    _, _, _, ev3 = evaluator(moved, s)
    assert all(ev3.threshold(r) != ev.threshold(r) for r in sp.refs)


def test_calibration_images_are_in_no_bank(tasks):
    sp, _, _, ev = evaluator(tasks, sc())
    for ref in sp.refs:
        bank = ev.bank_vectors(ref).astype(np.float32)
        for t in ref.tasks:
            cal = tasks[t].calibration.reshape(-1, tasks[t].calibration.shape[-1])
            d = np.sqrt(((cal[:, None] - bank[None]) ** 2).sum(-1)).min(1)
            assert d.min() > 1e-4


def test_threshold_refit_changes_what_runs_and_drift_is_measured_from_the_tasks_step(tasks):
    refit = {(r.strategy, r.order): res for r, res in simulate(runs(tasks), tasks, sc(refit=True))}
    kept = {(r.strategy, r.order): res for r, res in simulate(runs(tasks), tasks, sc(refit=False))}
    order = tuple(tasks)
    for strat in ALL:
        thr, drift = refit[strat, order].matrices["threshold@sigma3"], refit[strat, order].matrices["threshold_drift@sigma3"]
        for j in range(3):
            assert np.isnan(drift[:j + 1, j]).all()  # none before the task nor on its own step (0 there)
            assert drift[j + 1:, j] == pytest.approx((thr[j + 1:, j] - thr[j, j]) / abs(thr[j, j]))
        # the oracle metrics do not depend on the threshold policy
        assert np.array_equal(refit[strat, order].matrices["image_f1"], kept[strat, order].matrices["image_f1"],
                              equal_nan=True)
    # joint: one bank, refitted on every step's pooled calibration images; kept: the first step's threshold
    kthr = kept["joint", order].matrices["threshold@sigma3"]
    assert np.allclose(kthr, kthr[0, 0])
    assert not np.allclose(refit["joint", order].matrices["threshold@sigma3"], kthr)
    # patchcore_cl re-reduces every bank at every step: refitted thresholds move, kept ones do not
    assert np.nanmax(np.abs(refit["patchcore_cl", order].matrices["threshold_drift@sigma3"])) > 0
    for o in itertools.permutations(tasks):
        # kept: every task keeps the threshold of its own bank at its own step, whatever the task names' order
        k = kept["patchcore_cl", o].matrices
        assert np.nanmax(np.abs(k["threshold_drift@sigma3"])) == 0
        for j in range(3):
            assert k["threshold@sigma3"][j:, j] == pytest.approx(refit["patchcore_cl", o].matrices["threshold@sigma3"][j, j])


def test_each_policy_adds_its_metrics_and_only_those(tasks):
    (_, res), = simulate([Run("patchcore_cl", 60, 0, tuple(tasks))], tasks, sc(thresholds=[{"sigma": 2}]))
    added = {m for m in res.matrices if "@" in m}
    assert added == {f"{b}@sigma2" for b in ("image_precision", "image_recall", "image_f1", "image_fpr", "threshold",
                                             "threshold_drift")}
    (_, none), = simulate([Run("patchcore_cl", 60, 0, tuple(tasks))], tasks, sc(thresholds=[]))
    assert not any("@" in m for m in none.matrices)
    assert np.array_equal(res.matrices["image_auroc"], none.matrices["image_auroc"])


def test_calibration_split_is_seeded_per_task_and_moves_images_last():
    ds = {"kind": "synthetic", "tasks": ["Brain_AD", "Liver_AD"], "synthetic": {"train": 20, "test": 4, "seed": 0},
          "seed": 3, "calibration": 0.25}
    a = load_stream(ds)
    b = load_stream(dict(ds, calibration=0))
    c = load_stream(dict(ds, seed=4))
    for ta, tb, tc in zip(a, b, c):
        assert ta.n_calibration == 5 == calibration_count(20, 0.25) and tb.n_calibration == 0
        assert sorted(s.key for s in ta.train) == sorted(s.key for s in tb.train)   # the same images, reordered
        held = [s.key for s in ta.train[-5:]]
        assert held != [s.key for s in tb.train[-5:]] and held != [s.key for s in tc.train[-5:]]
        assert all(s.label == 0 for s in ta.train)
        assert store_key("x", ta) != store_key("x", tb)   # held-out images: another feature entry
    assert [s.key for s in a[0].train[-5:]] != [s.key for s in a[1].train[-5:]]
    assert [s.key for s in load_stream(ds)[0].train] == [s.key for s in a[0].train]  # deterministic
    with pytest.raises(DataError, match="dataset.calibration.*Brain_AD"):
        split_calibration(dataclasses.replace(a[0], train=a[0].train[:1], n_calibration=0), 0.5, 0)
    assert calibration_count(3, 0.01) == 1 and calibration_count(3, 0) == 0


@pytest.mark.parametrize("over, key, msg", [
    ({"evaluation": {"thresholds": [{"fpr": 1.5}]}, "dataset": {"calibration": 0.1}}, "evaluation.thresholds[0]",
     "not a false-positive rate"),
    ({"evaluation": {"thresholds": [{"fpr": 0.05}]}}, "dataset.calibration", "set a share"),
    ({"evaluation": {"thresholds": [{"fpr": 0.05}]}, "dataset": {"calibration": 0}}, "dataset.calibration",
     "set a share"),
    ({"dataset": {"calibration": 1.0}}, "dataset.calibration", "in \\[0, 1\\)"),
    ({"dataset": {"calibration": True}}, "dataset.calibration", "in \\[0, 1\\)"),
    ({"evaluation": {"thresholds": ["valid"]}, "dataset": {"calibration": 0.1}}, "evaluation.thresholds[0]",
     "validation split"),
    ({"evaluation": {"thresholds": [{"sigma": 3}, {"sigma": 3.0}]}, "dataset": {"calibration": 0.1}},
     "evaluation.thresholds[1]", "duplicate"),
    ({"evaluation": {"thresholds": {"fpr": 0.1}}, "dataset": {"calibration": 0.1}}, "evaluation.thresholds",
     "expected a list"),
    ({"evaluation": {"threshold_refit": "yes"}}, "evaluation.threshold_refit", "true or false"),
])
def test_bad_threshold_keys_name_the_key(over, key, msg):
    with pytest.raises(ScenarioError, match=f"key '{key.replace('[', chr(92) + '[').replace(']', chr(92) + ']')}'.*{msg}"):
        resolve(over)


def test_task_features_pickle_keeps_the_calibration_split(tasks):
    import pickle

    tf = pickle.loads(pickle.dumps(tasks["T0"]))
    assert isinstance(tf, TaskFeatures) and np.array_equal(tf.calibration, tasks["T0"].calibration)
