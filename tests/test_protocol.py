"""Bank manager, memoized evaluation and the continual protocol on small hand-made features."""

import itertools

import numpy as np
import pytest

from helpers_features import make_tasks
from pclsim import metrics as M
from pclsim.engine import plan, simulate
from pclsim.protocol import BankManager, BankSources, Evaluator, evaluate_direct, run_order
from pclsim.scenario import Run
from pclsim.strategies import BankRef, get_strategy, per_task_size


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(3, seed=0)


def test_bank_sizes_follow_floor_budget_and_rebalance_modes_agree(tasks):
    M_ = 50
    trunc = BankManager(M_, "truncate", projection_dim=4, seed=1, device="cpu")
    reco = BankManager(M_, "recompute", projection_dim=4, seed=1, device="cpu")
    for t, (name, tf) in enumerate(tasks.items()):
        sizes = trunc.add_task(name, tf.train)
        reco.add_task(name, tf.train)
        assert set(sizes.values()) == {M_ // (t + 1)}
        assert sum(sizes.values()) <= M_
        for n in trunc.banks:
            np.testing.assert_array_equal(trunc.banks[n], reco.banks[n])
    with pytest.raises(ValueError):
        trunc.add_task("T0", tasks["T0"].train)
    with pytest.raises(ValueError):
        BankManager(10, "sometimes")


def test_sources_banks_equal_bank_manager(tasks):
    M_ = 60
    src = BankSources(tasks, {"task": {per_task_size(M_, s) for s in (1, 2, 3)}}, projection_dim=4, seed=1,
                      device="cpu")
    bm = BankManager(M_, "truncate", projection_dim=4, seed=1, device="cpu")
    for name, tf in tasks.items():
        bm.add_task(name, tf.train)
    for name, bank in bm.banks.items():
        np.testing.assert_array_equal(src.vectors(BankRef("task", (name,), len(bank))), bank)


def test_memoized_evaluation_equals_direct(tasks):
    src = BankSources(tasks, {"task": {20, 30, 60}}, projection_dim=4, seed=0, device="cpu")
    ev = Evaluator(src, device="cpu")
    banks = tuple(BankRef("task", (t,), 30) for t in ("T0", "T1"))
    for task in ("T0", "T1", "T2"):
        got = ev.evaluate(task, banks, True)
        ref = evaluate_direct(tasks[task], [src.vectors(b) for b in banks], True)
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, abs=1e-6), k
        assert got is ev.evaluate(task, banks, True)  # memo hit
        fresh = Evaluator(src, device="cpu").evaluate(task, banks, True)
        assert fresh == got  # bit-identical to evaluating again
    assert "pixel_auroc" in ev.evaluate("T0", banks, True)
    assert "pixel_auroc" not in ev.evaluate("T1", banks, True)
    assert ev.evaluate("T0", banks, True)["task_id_acc"] > 0.9


def test_two_orders_with_the_same_seen_set_share_evaluations(tasks):
    src = BankSources(tasks, {"task": {per_task_size(60, s) for s in (1, 2, 3)}}, projection_dim=4, device="cpu")
    ev = Evaluator(src, device="cpu")
    strat = get_strategy("patchcore_cl", 60)
    a = run_order(strat, ("T0", "T1", "T2"), ev)
    n_metric = ev.stats["metric_computations"]
    b = run_order(strat, ("T1", "T0", "T2"), ev)
    # final step has the same set of tasks: its 3 evaluations are memo hits
    assert ev.stats["state_hits"] >= 3
    assert ev.stats["metric_computations"] < 2 * n_metric
    pos_a = {t: i for i, t in enumerate(a.order)}
    pos_b = {t: i for i, t in enumerate(b.order)}
    for t in tasks:
        assert a.matrices["image_auroc"][2, pos_a[t]] == b.matrices["image_auroc"][2, pos_b[t]]


def test_strategies_behave_as_the_method_says():
    tasks = make_tasks(4, seed=3, n_test=16)
    sc = {"coreset": {"projection": "jl", "projection_dim": 4, "joint": "composable"},
          "model": {"reweighting": "paper"}, "evaluation": {"pixel_metrics": True}}
    orders = [tuple(p) for p in itertools.permutations(tasks)][:4]
    runs = [Run(s, 80, 0, o) for s in ("patchcore_cl", "finetune", "joint", "multi_model", "random_cl") for o in orders]
    res = {(r.strategy, r.order): o for r, o in simulate(runs, tasks, sc, device="cpu")}
    for o in orders:
        fin = res[("finetune", o)].matrices["image_auroc"]
        cl = res[("patchcore_cl", o)].matrices["image_auroc"]
        mm = res[("multi_model", o)].matrices["image_auroc"]
        assert M.average_forgetting(fin) > M.average_forgetting(cl) + 10
        assert M.final_mean(mm) >= M.final_mean(cl) - 1e-9
        # full T x T matrices, every metric
        assert not np.isnan(cl).any() and cl.shape == (4, 4)
        assert res[("patchcore_cl", o)].bank_vectors == [80, 80, 78, 80]
        assert res[("multi_model", o)].bank_vectors == [80, 160, 240, 320]
        assert res[("finetune", o)].bank_vectors == [80] * 4
        assert "task_id_acc" in res[("patchcore_cl", o)].matrices
        assert "task_id_acc" not in res[("joint", o)].matrices


def test_plan_lists_each_source_once():
    runs = [Run("patchcore_cl", 12, 0, p) for p in itertools.permutations(("a", "b", "c"))]
    runs += [Run("joint", 12, 0, p) for p in itertools.permutations(("a", "b", "c"))]
    p = plan(runs)
    assert p.sizes[0]["task"] == {12, 6, 4}
    assert p.sizes[0]["joint"] == {12}
    joint = [s for s in p.sources[0] if s[0] == "joint"]
    assert len(joint) == 7  # every non-empty subset of 3 tasks
    assert p.sources[0][:3] == [("task", ("a",)), ("task", ("b",)), ("task", ("c",))]


def test_gallery_maps_score_like_the_metrics(tasks):
    from pclsim.scoring import anomaly_maps, image_score

    src = BankSources(tasks, {"task": {30}}, projection_dim=4, seed=0, device="cpu")
    ev = Evaluator(src, device="cpu")
    banks = tuple(BankRef("task", (t,), 30) for t in ("T0", "T1"))
    ev.evaluate("T0", banks, True)  # fills the neighbour cache the gallery then reuses
    scores, maps = ev.maps("T0", banks, True, [0, 7])
    tf = tasks["T0"]
    bank = src.vectors(banks[0])  # T0's images pick T0's bank
    for k, i in enumerate([0, 7]):
        d, nn = ev._bank_dists(banks[0], "T0")
        assert scores[k] == pytest.approx(image_score(d[i], nn[i], tf.test[i], bank, "paper"))
        np.testing.assert_allclose(maps[k], anomaly_maps(d[i][None], tf.grid, tf.image_size)[0], rtol=1e-5)
