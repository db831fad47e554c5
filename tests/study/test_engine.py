"""The study core: bank resolution (authors / truncate), candidate-list evaluation against brute force,
memoization, strategies, the plan."""

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from toy_features import make_tasks
from brute_force import brute_evaluate
from pclsim import metrics as metric_fns
from pclsim.study.banks import BankBuilder, SelectionNeeds, derive_seed
from pclsim.coreset import greedy_coreset
from pclsim.study.engine import candidate_rows, plan_study, prepare_seed, restore_evaluator, simulate
from pclsim.core.knn import nn_distances
from pclsim.study.protocol import run_order
from pclsim.study.scenario import Run
from pclsim.core.scoring import anomaly_maps, identify_task, image_score
from pclsim.study.strategies import BankRef, get_strategy, per_task_size

CORESET = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}
SC = {"coreset": CORESET, "model": {"reweighting": "paper"}, "evaluation": {"pixel_metrics": True}}
ALL = ("patchcore_cl", "finetune", "joint", "multi_model", "random_cl")


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(3, seed=0, n_train=30)


# ----------------------------------------------------------------------------------------- references
def authors_bank_by_hand(train, M, arrival, step, seed, task):
    """PatchCoreCL as a user runs it: select on arrival (one projection per task, whatever its arrival
    step), re-run greedy on the stored vectors every step with a fresh projection."""
    bank_idx = greedy_coreset(train, M // (arrival + 1), projection_dim="auto",
                              seed=derive_seed(seed, "select", 0))
    for s in range(arrival + 1, step + 1):
        stored = train[bank_idx]
        keep = greedy_coreset(stored, M // (s + 1), projection_dim="auto", seed=derive_seed(seed, "rereduce", arrival, s))
        bank_idx = bank_idx[keep]
    return train[bank_idx]


# ----------------------------------------------------------------------------------------- banks
def test_authors_banks_follow_the_published_procedure(tasks):
    M = 60
    refs = [BankRef("rereduced", (t,), per_task_size(M, s + 1), arrival=a, step=s, budget=M)
            for t in tasks for a in range(3) for s in range(a, 3)]
    bb = BankBuilder(tasks, SelectionNeeds.of(refs), projection_dim="auto", seed=4)
    for r in refs:
        want = authors_bank_by_hand(tasks[r.tasks[0]].train, M, r.arrival, r.step, 4, r.tasks[0])
        np.testing.assert_array_equal(bb.bank_vectors(r), want)
        assert len(want) == M // (r.step + 1)
    # the order matters: a task's final bank differs with its arrival step
    finals = [bb.bank_vectors(BankRef("rereduced", ("T0",), 20, arrival=a, step=2, budget=M)) for a in range(3)]
    assert not np.array_equal(finals[0], finals[2])


def test_truncate_banks_are_prefixes_of_one_selection(tasks):
    refs = [BankRef("task", ("T1",), n) for n in (60, 30, 20)]
    bb = BankBuilder(tasks, SelectionNeeds.of(refs), projection_dim=4, seed=1)
    full = bb.bank_vectors(refs[0])
    for r in refs[1:]:
        np.testing.assert_array_equal(bb.bank_vectors(r), full[: r.size])
        # prefix property: re-running greedy on the stored prefix with the same projection gives it back
        stored = full[: 2 * r.size] if 2 * r.size <= 60 else full
    strat = get_strategy("patchcore_cl", 60, "truncate")
    assert {b.kind for b in strat.banks(("T0", "T1"))} == {"task"}


def test_every_rebalance_value_changes_what_runs(tasks):
    orders = list(itertools.permutations(tasks))
    finals = {}
    for rb in ("authors", "truncate"):
        sc = dict(SC, coreset=dict(CORESET, rebalance=rb))
        out = simulate([Run("patchcore_cl", 60, 0, o) for o in orders], tasks, sc)
        finals[rb] = [tuple(sorted(zip(r.order, res.matrices["image_auroc"][-1]))) for r, res in out]
    # truncate: the final state depends only on the set of tasks -> the same final row for every order
    assert len(set(finals["truncate"])) == 1
    assert len(set(finals["authors"])) > 1
    from pclsim.errors import ScenarioError
    from pclsim.study.scenario import resolve

    with pytest.raises(ScenarioError, match="coreset.rebalance"):
        resolve({"coreset": {"rebalance": "recompute"}, "dataset": {"tasks": ["a", "b"]}})


# ----------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("k", [2, 32])
def test_candidate_lists_equal_brute_force_on_every_bank(tasks, k, monkeypatch):
    """Every bank of a small sweep (all strategies, both sizes, every order): NN distances and metrics equal a
    brute-force evaluation; k=2 forces many fallbacks."""
    import pclsim.study.engine as engine

    monkeypatch.setattr(engine, "DEFAULT_K", k)
    runs = [Run(s, m, 0, o) for s in ALL for m in (30, 90) for o in itertools.permutations(tasks)]
    sp = plan_study(runs, CORESET).seeds[0]
    orders, banks, tables = prepare_seed(tasks, sp, CORESET)
    assert all(tb.k == min(k, len(tb.rows)) for tb in tables.values())
    ev = restore_evaluator(tasks, sp, CORESET, orders, banks, tables)
    for ref in sorted(sp.refs):
        vecs = ev.bank_vectors(ref)
        assert len(vecs) == ref.size
        for t, tf in tasks.items():
            d, i = ev.nn(ref, t)
            bd = cdist(tf.test.reshape(-1, tf.dim).astype(np.float64), vecs.astype(np.float64)).min(1)
            np.testing.assert_allclose(d.ravel(), bd, rtol=1e-5, atol=1e-6)
            # the reported neighbour is at that distance
            np.testing.assert_allclose(np.linalg.norm(tf.test - vecs[i], axis=-1), d, rtol=1e-4, atol=1e-4)
    if k == 2:
        assert ev.stats["fallback_queries"] > 0
    # metrics of real states equal the brute-force reference
    for strat_name in ALL:
        strat = get_strategy(strat_name, 30)
        for seen in (("T0",), ("T2", "T0"), ("T1", "T0", "T2")):
            banks_ = strat.banks(seen)
            for t, tf in tasks.items():
                sb, ident = strat.scoring(banks_, t)
                ident = ident or strat.identifies_task
                got = ev.evaluate(t, sb, ident)
                ref, chosen = brute_evaluate(tf, [ev.bank_vectors(b) for b in sb], ident)
                for key, v in ref.items():
                    assert got[key] == pytest.approx(v, abs=1e-6), (strat_name, seen, t, key)
                if ident:
                    assert got["task_id_acc"] == pytest.approx(np.mean([sb[c].tasks == (t,) for c in chosen]))


def test_memo_returns_identical_values_and_shares_states(tasks):
    out1 = simulate([Run("patchcore_cl", 60, 0, o) for o in itertools.permutations(tasks)], tasks, SC)
    out2 = simulate([Run("patchcore_cl", 60, 0, o) for o in itertools.permutations(tasks)][::-1], tasks, SC)
    by = {r: res for r, res in out2}
    for r, res in out1:
        for m, a in res.matrices.items():
            np.testing.assert_array_equal(a, by[r].matrices[m])


def test_routing_counts_add_up_and_match_task_id_acc(tasks):
    out = simulate([Run("patchcore_cl", 60, 0, o) for o in itertools.permutations(tasks)], tasks, SC)
    for r, res in out:
        pos = {t: j for j, t in enumerate(r.order)}
        for s in range(3):
            for t in r.order:
                rows = [x for x in res.routing if x[0] == s and x[1] == t]
                assert sum(c for *_, c in rows) == tasks[t].test.shape[0]
                diag = sum(c for _, _, chosen, c in rows if chosen == t) / tasks[t].test.shape[0]
                assert diag == pytest.approx(res.matrices["task_id_acc"][s, pos[t]])
                assert {chosen for _, _, chosen, _ in rows} <= set(r.order[: s + 1])


def test_strategies_behave_as_the_method_says():
    tasks = make_tasks(4, seed=3, n_test=16)
    orders = [tuple(p) for p in itertools.permutations(tasks)][:4]
    runs = [Run(s, 80, 0, o) for s in ALL for o in orders]
    res = {(r.strategy, r.order): o for r, o in simulate(runs, tasks, SC, device="cpu")}
    for o in orders:
        fin = res[("finetune", o)].matrices["image_auroc"]
        cl = res[("patchcore_cl", o)].matrices["image_auroc"]
        mm = res[("multi_model", o)].matrices["image_auroc"]
        assert metric_fns.average_forgetting(fin) > metric_fns.average_forgetting(cl) + 10
        assert not np.isnan(cl).any() and cl.shape == (4, 4)
        assert res[("patchcore_cl", o)].bank_vectors == [80, 80, 78, 80]
        assert res[("multi_model", o)].bank_vectors == [80, 160, 240, 320]
        assert res[("finetune", o)].bank_vectors == [80] * 4
        assert "task_id_acc" in res[("patchcore_cl", o)].matrices
        assert "task_id_acc" not in res[("joint", o)].matrices
    # a budget of M in all is no better than M per task, on average over orders (one order of 16 test
    # images per task can beat it by chance)
    cl_mean = np.mean([metric_fns.final_mean(res[("patchcore_cl", o)].matrices["image_auroc"]) for o in orders])
    assert metric_fns.final_mean(res[("multi_model", orders[0])].matrices["image_auroc"]) >= cl_mean - 0.02


def test_plan_counts_authors_states():
    """Six tasks, all 720 orders: 21 distinct banks per task (arrival <= step), one job per task chain."""
    tasks = tuple("abcdef")
    runs = [Run("patchcore_cl", 1000, 0, p) for p in itertools.permutations(tasks)]
    sp = plan_study(runs, CORESET).seeds[0]
    assert len(sp.refs) == 6 * 21
    assert len({(b.tasks, b.arrival) for b in sp.refs}) == 36
    assert len(sp.bank_jobs) == 6 and len(sp.sources) == 6
    sp_t = plan_study(runs, dict(CORESET, rebalance="truncate")).seeds[0]
    assert len(sp_t.refs) == 6 * 6  # one prefix per (task, per-task size)
    joint = plan_study([Run("joint", 1000, 0, p) for p in itertools.permutations(tasks)], CORESET).seeds[0]
    assert len(joint.refs) == 63  # every non-empty subset


def test_candidate_rows_hold_every_bank_of_every_strategy(tasks):
    """Tables are built from the selections alone (before the bank jobs): every row any bank holds must
    be among its source's candidates, for every bank kind and both rebalance modes."""
    for rb in ("authors", "truncate"):
        co = dict(CORESET, rebalance=rb)
        runs = [Run(s, m, 0, o) for s in ALL for m in (30, 60) for o in itertools.permutations(tasks)]
        sp = plan_study(runs, co).seeds[0]
        orders, banks, tables = prepare_seed(tasks, sp, co)
        held = {}
        for parts in banks.values():
            for src, rows in parts:
                held.setdefault(src, set()).update(rows.tolist())
        assert set(held) == set(sp.sources)
        for src, rows in held.items():
            cand = set(candidate_rows(sp.needs, orders, src).tolist())
            assert rows <= cand
            assert set(tables[src].rows.tolist()) == cand


def test_gallery_maps_score_like_the_metrics(tasks):
    runs = [Run("patchcore_cl", 60, 0, ("T0", "T1"))]
    sp = plan_study(runs, CORESET).seeds[0]
    ev = restore_evaluator(tasks, sp, CORESET, *prepare_seed(tasks, sp, CORESET))
    banks = get_strategy("patchcore_cl", 60).banks(("T0", "T1"))
    ev.evaluate("T0", banks, True)
    scores, maps = ev.maps("T0", banks, True, [0, 7])
    tf = tasks["T0"]
    chosen = ev.route("T0", banks, True)
    for k, i in enumerate([0, 7]):
        bank = ev.bank_vectors(banks[chosen[i]])
        d, nn = ev.nn(banks[chosen[i]], "T0")
        assert scores[k] == pytest.approx(image_score(d[i], nn[i], tf.test[i], bank, "paper"))
        np.testing.assert_allclose(maps[k], anomaly_maps(d[i][None], tf.grid, tf.image_size)[0], rtol=1e-5)


def test_projection_dim_auto_is_the_authors_jl_dimension():
    """floor(4 ln n / (eps^2/2 - eps^3/3)) at eps 0.9, not capped at D (a random projection up, as theirs)."""
    import math

    from pclsim.coreset import resolve_projection_dim

    assert resolve_projection_dim("auto", 30_000) == (254, True)
    assert resolve_projection_dim("auto", 1_570_000) == (352, True)
    assert resolve_projection_dim("auto", 78_400)[0] == int(4 * math.log(78_400) / (0.9**2 / 2 - 0.9**3 / 3))
    assert resolve_projection_dim(64, 10) == (64, False) and resolve_projection_dim(None, 10) == (None, False)


def test_bank_vector_cache_is_bounded_and_changes_no_value(monkeypatch):
    """The Evaluator keeps only the recently used banks' vectors (BANK_VECTOR_CACHE_BYTES): with room for
    one bank's bytes every matrix equals the run with room for all and the cache never holds more; a bank
    evicted and asked for again is read again, with the same values."""
    import pclsim.study.protocol as protocol

    tasks = make_tasks(3, seed=5, n_test=12)
    runs = [Run(s, 60, 0, tuple(tasks)) for s in ("patchcore_cl", "multi_model")]
    full = simulate(runs, tasks, SC, device="cpu")
    held = []
    real = protocol.Evaluator.bank_vectors

    def watched(self, ref):
        out = real(self, ref)
        held.append(sum(v.nbytes for v in self._vectors.values()))
        return out

    one_bank = 60 * next(iter(tasks.values())).dim * 4
    monkeypatch.setattr(protocol, "BANK_VECTOR_CACHE_BYTES", one_bank)
    monkeypatch.setattr(protocol.Evaluator, "bank_vectors", watched)
    small = simulate(runs, tasks, SC, device="cpu")
    assert held and max(held) <= one_bank  # the banks of a step and task that fit; multi_model: one bank
    for (r, a), (_, b) in zip(full, small):
        for m in a.matrices:
            np.testing.assert_array_equal(a.matrices[m], b.matrices[m], err_msg=f"{r.strategy} {m}")
    # two banks of 60 vectors asked for in turn: each evicts the other, so the first is read twice
    sp = plan_study(runs, CORESET).seeds[0]
    ev = restore_evaluator(tasks, sp, CORESET, *prepare_seed(tasks, sp, CORESET))
    a, b = [r for r in sorted(sp.refs) if r.size == 60][:2]
    reads = []
    real_read = ev.builder.bank_vectors
    monkeypatch.setattr(ev.builder, "bank_vectors", lambda ref: reads.append(ref) or real_read(ref))
    first = ev.bank_vectors(a).copy()
    ev.bank_vectors(b)
    again = ev.bank_vectors(a)
    assert reads == [a, b, a] and list(ev._vectors) == [a]
    np.testing.assert_array_equal(first, again)
