"""The order-robustness statistics against scipy.stats, brute force and hand computations, on fabricated
studies whose answer is known (no order effect; a planted position effect), plus the routing tables."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from pclsim import metrics as metric_fns
from pclsim.analysis import statistics as S
from pclsim.study.protocol import OrderResult
from pclsim.results.tables import (MATRIX_SCHEMA, ROUTED_SCHEMA, ROUTING_SCHEMA, STATISTICS_SCHEMA, routed_metrics_table,
                            routing_table)
from pclsim.study.scenario import Run

TASKS4 = ("A", "B", "C", "D")


# ----------------------------------------------------------------------------- fabricated studies

def make_study(tasks, orders, seeds, cell, strategy="patchcore_cl", memory_size=100, metric="image_auroc"):
    """matrices and summary frames of a study whose matrix entries are cell(order, seed, step, pos, task).

    The summary's continual metrics come from pclsim.metrics on the same matrices (as the sweep does).
    """
    mat_rows, summ_rows = [], []
    for seed in seeds:
        for order in orders:
            T = len(order)
            a = np.array([[cell(order, seed, s, p, order[p]) for p in range(T)] for s in range(T)], float)
            run = Run(strategy, memory_size, seed, tuple(order))
            for s in range(T):
                for p in range(T):
                    mat_rows.append((run.run_id, strategy, memory_size, seed, run.order_str, s, order[s], order[p],
                                     metric, a[s, p]))
            summ_rows.append({"run_id": run.run_id, "strategy": strategy, "memory_size": memory_size, "seed": seed,
                              "order": run.order_str, "metric": metric, "final_mean": metric_fns.final_mean(a),
                              "avg_forgetting_pct": metric_fns.average_forgetting(a)})
    mat = pd.DataFrame(mat_rows, columns=MATRIX_SCHEMA.names)
    return mat, pd.DataFrame(summ_rows)


def noise(*key) -> float:
    """A reproducible N(0, 1) draw per key (order, seed, step, position)."""
    h = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")
    return float(np.random.default_rng(h).normal())


BASE = {"A": 0.95, "B": 0.90, "C": 0.85, "D": 0.80, "E": 0.75}


def no_order_effect(order, seed, s, p, t):
    """Seen tasks: the task's level plus seed-level and cell noise; unseen tasks: chance.
    Neither a run's values nor a task's final value depends on the order."""
    if p > s:
        return 0.5
    return BASE[t] + 0.01 * noise(seed) + 0.02 * noise(order, seed, s, p)


def planted_position(slope):
    """A task's final value rises by `slope` per later arrival step (plus noise)."""
    def cell(order, seed, s, p, t):
        if p > s:
            return 0.5
        v = BASE[t] + 0.005 * noise(order, seed, s, p)
        return v + slope * p if s == len(order) - 1 else v
    return cell


def _get(st, statistic, quantity, task=None, **kw):
    s = st[(st.statistic == statistic) & (st.quantity == quantity)]
    s = s[s.task.isna()] if task is None else s[s.task == task]
    for k, v in kw.items():
        s = s[s[k] == v]
    assert len(s) == 1, (statistic, quantity, task, len(s))
    return s.iloc[0]


# ----------------------------------------------------------------------------- building blocks vs scipy

def test_bootstrap_interval_is_scipy_bca():
    x = np.random.default_rng(3).gamma(2.0, size=40)
    (lo, hi), note = S.bootstrap_mean_ci(x)
    ref = stats.bootstrap((x,), np.mean, n_resamples=S.N_RESAMPLES, method="BCa", rng=np.random.default_rng(S.SEED))
    assert (lo, hi) == (ref.confidence_interval.low, ref.confidence_interval.high) and note == ""
    assert lo < x.mean() < hi
    assert S.bootstrap_mean_ci(np.full(7, 0.8)) == ((0.8, 0.8), "constant: every value is the same")
    (lo, hi), note = S.bootstrap_mean_ci(np.array([0.3]))
    assert np.isnan(lo) and np.isnan(hi) and "one value" in note


def test_random_effects_anova_by_hand_and_f_oneway():
    rng = np.random.default_rng(1)
    groups = [rng.normal(mu, 1.0, size=3) for mu in (0.0, 0.5, 2.0, 1.0, -1.0)]
    an = S.random_effects_anova(groups)
    allv = np.concatenate(groups)
    ssb = sum(3 * (g.mean() - allv.mean()) ** 2 for g in groups)
    ssw = sum(((g - g.mean()) ** 2).sum() for g in groups)
    msb, msw = ssb / 4, ssw / 10
    assert an["ms_between"] == pytest.approx(msb) and an["ms_within"] == pytest.approx(msw)
    assert an["eta2"] == pytest.approx(ssb / (ssb + ssw))
    var_b = (msb - msw) / 3
    assert an["share"] == pytest.approx(var_b / (var_b + msw))
    F = stats.f_oneway(*groups).statistic  # the same decomposition through scipy
    assert an["share"] == pytest.approx((F - 1) / (F - 1 + 3))
    # no between-group signal: the share is clipped at 0, not negative
    flat = [np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([0.5, 0.5])]
    assert S.random_effects_anova(flat)["share"] == 0.0
    # unbalanced groups use n0 = (N - sum n_i^2 / N) / (k - 1)
    ub = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0]), np.array([9.0, 9.5, 10.0, 8.5])]
    a2 = S.random_effects_anova(ub)
    N, n_i = 9, np.array([3, 2, 4])
    n0 = (N - (n_i ** 2).sum() / N) / 2
    assert a2["n0"] == pytest.approx(n0)
    assert a2["var_between"] == pytest.approx((a2["ms_between"] - a2["ms_within"]) / n0)


def test_kruskal_is_scipy_and_epsilon_squared():
    rng = np.random.default_rng(2)
    groups = [rng.normal(k * 0.3, 1, size=4) for k in range(6)]
    h, p, eps, note = S.kruskal_orders(groups)
    ref = stats.kruskal(*groups)
    assert (h, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue)) and note == ""
    assert eps == pytest.approx(ref.statistic / (24 - 1))  # Tomczak & Tomczak (2014): H / (n - 1)
    assert S.kruskal_orders([np.ones(3), np.ones(3)])[:3] == (0.0, 1.0, 0.0)


def test_linregress_interval_uses_the_t_quantile():
    rng = np.random.default_rng(4)
    x = np.repeat(np.arange(5), 6).astype(float)
    y = 0.8 + 0.03 * x + rng.normal(0, 0.02, x.size)
    slope, (lo, hi), p, n, note = S.linregress_ci(x, y)
    # by hand: OLS slope, residual variance with n - 2 degrees of freedom, t quantile
    X = np.column_stack([np.ones_like(x), x])
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    se = math.sqrt(rss[0] / (x.size - 2) * np.linalg.inv(X.T @ X)[1, 1])
    q = stats.t.ppf(0.975, x.size - 2)
    assert slope == pytest.approx(beta[1])
    assert (lo, hi) == (pytest.approx(beta[1] - q * se), pytest.approx(beta[1] + q * se))
    assert p == pytest.approx(2 * stats.t.sf(abs(beta[1] / se), x.size - 2))
    assert n == 30 and lo < 0.03 < hi


def test_pooled_slope_equals_ols_with_task_dummies():
    rng = np.random.default_rng(5)
    task = np.repeat(list("ABC"), 8)
    x = np.tile(np.arange(8) % 3, 3).astype(float)
    y = np.array([{"A": 0.9, "B": 0.7, "C": 0.5}[t] for t in task]) - 0.02 * x + rng.normal(0, 0.01, x.size)
    got = S.pooled_position_slope(task, x, y)
    X = np.column_stack([x] + [(task == t).astype(float) for t in "ABC"])  # one intercept per task
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = x.size - 3 - 1
    se = math.sqrt(rss[0] / dof * np.linalg.inv(X.T @ X)[0, 0])
    q = stats.t.ppf(0.975, dof)
    assert got["slope"] == pytest.approx(beta[0])
    assert got["ci"] == (pytest.approx(beta[0] - q * se), pytest.approx(beta[0] + q * se))
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(beta[0] / se), dof))
    yc = y - pd.Series(y).groupby(task).transform("mean").to_numpy()
    assert got["r2"] == pytest.approx(1 - rss[0] / (yc @ yc))
    assert got["slope"] < 0 and got["ci"][1] < 0


def test_position_permutation_test_is_exact_against_brute_force():
    """6 orders: 720 re-pairings < the resample count, so scipy enumerates them all; a brute-force
    enumeration gives the same p."""
    orders = [list(o) for o in itertools.permutations("ABC")]
    P = np.array([[o.index(t) for t in "ABC"] for o in orders], float)
    rng = np.random.default_rng(6)
    V = 0.8 + 0.05 * P + rng.normal(0, 0.04, P.shape)
    stat, p, note = S.position_permutation_test(P, V)
    Vc = V - V.mean(0)
    obs = abs((P * Vc).sum())
    null = [abs((P * Vc[list(perm)]).sum()) for perm in itertools.permutations(range(6))]
    assert stat == pytest.approx(obs)
    assert p == pytest.approx(np.mean(np.array(null) >= obs - 1e-12 * obs))
    # forgetting-like NaN cells are left out of the covariance
    V2 = V.copy()
    V2[P == 2] = np.nan
    stat2, p2, _ = S.position_permutation_test(P, V2)
    ok = np.isfinite(V2)
    Vc2 = np.where(ok, V2 - np.nanmean(V2, 0), 0.0)
    assert stat2 == pytest.approx(abs((P * Vc2).sum()))
    null2 = [abs((P * Vc2[list(perm)]).sum()) for perm in itertools.permutations(range(6))]
    assert p2 == pytest.approx(np.mean(np.array(null2) >= stat2 - 1e-12 * stat2))
    assert S.position_permutation_test(P, np.ones_like(V)) == (0.0, 1.0, "constant: the value does not depend on "
                                                                         "the arrival step")


def test_r2_permutation_test_matches_a_plain_scipy_call():
    """The R^2 test against scipy.stats.permutation_test over a straightforward R^2 from numpy's
    least squares, with the same seed and batch (so the same permutations): the same p."""
    orders = [list(o) for o in itertools.permutations("ABCD")]
    X = np.array([[o.index(t) for t in "ABC"] for o in orders], float)

    def plain_r2(yp):
        A = np.column_stack([np.ones(len(yp)), X])
        _, rss, *_ = np.linalg.lstsq(A, yp, rcond=None)
        return 1 - rss[0] / ((yp - yp.mean()) ** 2).sum()

    for seed, effect in ((2, 0.0), (7, 0.002)):
        y = 0.8 + effect * X[:, 0] + np.random.default_rng(seed).normal(0, 0.01, len(orders))
        r2, p = S.r2_permutation_test(y, X)
        ref = stats.permutation_test((y,), plain_r2, permutation_type="pairings", vectorized=False,
                                     batch=100_000 // len(orders), n_resamples=S.N_PERMUTATIONS,
                                     alternative="greater", rng=np.random.default_rng(S.SEED))
        assert r2 == pytest.approx(plain_r2(y)) and r2 == pytest.approx(ref.statistic)
        assert p == ref.pvalue
    assert S.r2_permutation_test(np.full(24, 0.7), X) == (0.0, 1.0)


def test_permutation_tests_hold_their_level_under_the_null():
    """Pure noise: p-values spread over (0, 1]; few fall below 0.05."""
    orders = [list(o) for o in itertools.permutations("ABCD")]
    X = np.array([[o.index(t) for t in "ABC"] for o in orders], float)
    P = np.array([[o.index(t) for t in "ABCD"] for o in orders], float)
    p_r2 = [S.r2_permutation_test(np.random.default_rng(k).normal(size=24), X)[1] for k in range(20)]
    p_pos = [S.position_permutation_test(P, np.random.default_rng(100 + k).normal(size=P.shape))[1]
             for k in range(20)]
    for ps in (p_r2, p_pos):
        assert sum(p < 0.05 for p in ps) <= 3 and np.median(ps) > 0.25


def test_stacked_permutation_jobs_equal_one_call_each():
    orders = [list(o) for o in itertools.permutations("ABCD")]
    P = np.array([[o.index(t) for t in "ABCD"] for o in orders], float)
    rng = np.random.default_rng(8)
    Vs = [0.8 + k * 0.004 * P + rng.normal(0, 0.02, P.shape) for k in range(4)]
    jobs, rows = S.PermutationJobs(), [{} for _ in Vs]
    for V, row in zip(Vs, rows):
        jobs.add(range(len(orders)), S.PositionStatistic(P, V), row)
    jobs.run()
    for V, row in zip(Vs, rows):
        assert row["p_value"] == S.position_permutation_test(P, V)[1]
    assert rows[0]["p_value"] > 0.05 and rows[3]["p_value"] < 0.01


def test_per_task_values_by_hand():
    orders = [("A", "B", "C"), ("C", "A", "B")]
    mats = {("A", "B", "C"): np.array([[0.9, 0.5, 0.5], [0.8, 0.7, 0.5], [0.6, 0.65, 0.8]]),
            ("C", "A", "B"): np.array([[0.8, 0.5, 0.5], [0.75, 0.9, 0.5], [0.7, 0.85, 0.7]])}
    mat, _ = make_study("ABC", orders, [0], lambda o, seed, s, p, t: mats[tuple(o)][s, p])
    pt = S.per_task_values(mat).set_index(["order", "task"])
    r = pt.loc[("A > B > C", "A")]
    assert (r.position, r.n_tasks, r.final_value) == (0, 3, 0.6)
    assert r.forgetting_pct == pytest.approx(100 * (0.9 - 0.6) / 0.9)
    r = pt.loc[("C > A > B", "A")]
    assert r.position == 1 and r.forgetting_pct == pytest.approx(100 * (0.9 - 0.85) / 0.9)
    assert np.isnan(pt.loc[("C > A > B", "B")].forgetting_pct)  # the last task forgets nothing
    assert len(pt) == 6
    with pytest.raises(ValueError, match="not in its order"):
        S.per_task_values(mat.assign(eval_task="Z"))


# ----------------------------------------------------------------------------- studies with a known answer

@pytest.fixture(scope="module")
def null_study():
    orders = [list(o) for o in itertools.permutations(TASKS4)]
    mat, summ = make_study(TASKS4, orders, [0, 1, 2], no_order_effect)
    return mat, summ, S.statistics_table(summ, mat)


def test_no_order_effect_gives_large_p(null_study):
    _, summ, st = null_study
    test = _get(st, "order_test", "final_mean")
    ref = stats.kruskal(*[g.final_mean.to_numpy() for _, g in summ.groupby("order")])
    assert test.value == pytest.approx(ref.statistic) and test.p_value == pytest.approx(ref.pvalue)
    assert test.p_value > 0.2 and "kruskal" in test.method
    assert _get(st, "order_share", "final_mean").value < 0.15
    pos = _get(st, "position_test", "final_value")
    assert pos.p_value > 0.05
    # the per-task slopes are compatible with 0
    for t in TASKS4:
        r = _get(st, "position_slope", "final_value", t)
        assert r.ci_low < 0 < r.ci_high or abs(r.value) < 0.005


def test_mean_interval_and_seed_noise(null_study):
    _, summ, st = null_study
    m = _get(st, "mean", "final_mean")
    assert m.value == pytest.approx(summ.final_mean.mean()) and m.n == len(summ)
    runs = summ.sort_values(["order", "seed"]).final_mean.to_numpy()
    ref = stats.bootstrap((runs,), np.mean, n_resamples=S.N_RESAMPLES, method="BCa",
                          rng=np.random.default_rng(S.SEED))
    assert (m.ci_low, m.ci_high) == (pytest.approx(ref.confidence_interval.low),
                                     pytest.approx(ref.confidence_interval.high))
    sd = _get(st, "seed_std", "final_mean")
    within = summ.groupby("order").final_mean.var(ddof=1).mean()  # balanced: pooled variance = mean of variances
    assert sd.value == pytest.approx(math.sqrt(within))


def test_best_worst_orders_and_gap(null_study):
    _, summ, st = null_study
    om = summ.groupby("order").final_mean.mean()
    best, worst = _get(st, "best_order", "final_mean"), _get(st, "worst_order", "final_mean")
    assert best.order == om.idxmax() and best.value == pytest.approx(om.max()) and best.n == 3
    assert worst.order == om.idxmin() and worst.value == pytest.approx(om.min())
    gap = _get(st, "best_worst_gap", "final_mean")
    assert gap.value == pytest.approx(om.max() - om.min())
    assert gap.effect_size == pytest.approx(gap.value / _get(st, "seed_std", "final_mean").value)
    fo = summ.groupby("order").avg_forgetting_pct.mean()
    assert _get(st, "best_order", "avg_forgetting_pct").order == fo.idxmin()  # less forgetting is better
    assert _get(st, "worst_order", "avg_forgetting_pct").order == fo.idxmax()


@pytest.mark.parametrize("slope", [0.01, -0.01])
def test_planted_position_effect_is_detected_with_its_sign(slope):
    orders = [list(o) for o in itertools.permutations(TASKS4)]
    mat, summ = make_study(TASKS4, orders, [0], planted_position(slope))
    st = S.statistics_table(summ, mat)
    pooled = _get(st, "position_slope", "final_value")
    assert pooled.ci_low < slope < pooled.ci_high and np.sign(pooled.value) == np.sign(slope)
    assert pooled.p_value < 1e-6
    assert _get(st, "position_test", "final_value").p_value < 0.001
    for t in TASKS4:
        r = _get(st, "position_slope", "final_value", t)
        assert np.sign(r.value) == np.sign(slope) and r.p_value < 0.01
        rr = _get(st, "rereduction_slope", "final_value", t)  # T - 1 - step: the same line, mirrored
        assert rr.value == pytest.approx(-r.value) and rr.p_value == pytest.approx(r.p_value)
    # one seed: no seed noise, the order test goes through the order's structure
    assert np.isnan(_get(st, "order_share", "final_mean").value)
    assert "one seed" in _get(st, "order_share", "final_mean").note


def test_one_seed_structure_test_finds_a_task_that_likes_to_come_last():
    """The run's final mean rises when task A arrives late: the R^2 test on arrival steps sees it,
    and does not see anything in a study without it."""
    orders = [list(o) for o in itertools.permutations(TASKS4)]

    def cell(order, seed, s, p, t):
        v = no_order_effect(order, seed, s, p, t)
        return v + (0.06 * p if (t == "A" and s == len(order) - 1) else 0.0)

    _, summ = make_study(TASKS4, orders, [0], cell)
    st = S.statistics_table(summ)
    test = _get(st, "order_test", "final_mean")
    assert "permutation_test" in test.method and test.p_value < 0.01 and test.value > 0.3
    _, summ0 = make_study(TASKS4, orders, [0], no_order_effect)
    assert _get(S.statistics_table(summ0), "order_test", "final_mean").p_value > 0.05


def test_constant_values_give_p_one_not_a_crash():
    """patchcore_cl under rebalance truncate: the final state depends on the set of tasks only."""
    orders = [list(o) for o in itertools.permutations("ABC")]
    # plus last-bit noise, as when the same bank state is summed over its tasks in another order
    const = lambda o, seed, s, p, t: (BASE[t] + 1e-16 * noise(o, s, p) if p <= s else 0.5)  # noqa: E731
    for seeds in ([0], [0, 1]):
        mat, summ = make_study("ABC", orders, seeds, const)
        st = S.statistics_table(summ, mat)
        test = _get(st, "order_test", "final_mean")
        assert test.p_value == 1.0 and test.note.startswith("constant")
        assert _get(st, "best_order", "final_mean").note == "all orders tie"
        assert _get(st, "position_test", "final_value").p_value == 1.0
        assert _get(st, "position_slope", "final_value", "A").value == 0.0
        assert "the final mean image auroc is the same for every order" in S.order_sentence(
            st, "patchcore_cl", 100, "image_auroc")


def test_sentence_reports_forgetting_when_final_values_do_not_move():
    """rebalance truncate: final values depend on the set of tasks only, forgetting on the arrival step."""
    orders = [list(o) for o in itertools.permutations(TASKS4)]

    def cell(order, seed, s, p, t):
        if p > s:
            return 0.5
        if s == len(order) - 1:
            return BASE[t]                                  # the same final state for every order
        return BASE[t] + 0.02 * (len(order) - 1 - p) + 0.002 * noise(order, seed, s, p)  # early tasks forget more

    mat, summ = make_study(TASKS4, orders, [0, 1], cell)
    st = S.statistics_table(summ, mat)
    text = S.order_sentence(st, "patchcore_cl", 100, "image_auroc")
    assert "a task's final value does not depend on when it arrived" in text
    f = _get(st, "position_slope", "forgetting_pct")
    assert f.value < 0 and f.ci_high < 0
    assert f"tasks arriving one step later forget {abs(f.value):.2f} % less" in text
    assert "permutation p < 0.001" in text
    # all orders tie by final mean: the best and worst orders are named by forgetting
    best = _get(st, "best_order", "avg_forgetting_pct")
    assert f"best order by forgetting {best.order} ({best.value:.2f} %)" in text


def test_single_order_and_single_value_are_labelled():
    mat, summ = make_study("ABC", [["A", "B", "C"]], [0, 1], no_order_effect)
    st = S.statistics_table(summ, mat)
    assert np.isnan(_get(st, "order_test", "final_mean").p_value)
    assert _get(st, "order_test", "final_mean").note.startswith("one order")
    assert not (st.statistic == "best_order").any()
    assert "single order" in S.order_sentence(st, "patchcore_cl", 100, "image_auroc")


def test_table_schema_and_determinism(null_study):
    mat, summ, st = null_study
    assert list(st.columns) == [f.name for f in STATISTICS_SCHEMA]
    pa.Table.from_pandas(st, schema=STATISTICS_SCHEMA, preserve_index=False)  # types fit the Parquet schema
    again = S.statistics_table(summ, mat)
    pd.testing.assert_frame_equal(st, again)
    assert set(st.quantity) == {"final_mean", "avg_forgetting_pct", "final_value", "forgetting_pct"}
    assert not st[["strategy", "memory_size", "metric", "quantity", "statistic", "task"]].astype(str).duplicated().any()
    # old folders: a trial_id column works the same
    old = S.statistics_table(summ.rename(columns={"run_id": "trial_id"}), mat.rename(columns={"run_id": "trial_id"}))
    pd.testing.assert_frame_equal(st, old)


def test_sentence_states_share_p_slope_and_orders(null_study):
    _, _, st = null_study
    text = S.order_sentence(st, "patchcore_cl", 100, "image_auroc", label="CL M=100")
    share = _get(st, "order_share", "final_mean").value
    assert text.startswith(f"CL M=100: order explains {100 * share:.0f} % of the variance")
    assert "Kruskal-Wallis p = " in text and "best order" in text and "points" in text


# ----------------------------------------------------------------------------- routing tables

def _result_with_routing():
    res = OrderResult("patchcore_cl", 100, ("A", "B"), {"image_auroc": np.full((2, 2), 0.8)}, [100, 100])
    res.routing = [(0, "A", "A", 10), (0, "B", "A", 12), (1, "A", "A", 9), (1, "A", "B", 1), (1, "B", "B", 12)]
    res.routed = [(1, "A", "correct", "image_auroc", 0.9), (1, "A", "wrong", "image_auroc", float("nan"))]
    return Run("patchcore_cl", 100, 0, ("A", "B")), res


def test_routing_table_rows_and_counts():
    run, res = _result_with_routing()
    t = routing_table([(run, res)])
    assert t.schema == ROUTING_SCHEMA
    df = t.to_pandas()
    assert (df.run_id == run.run_id).all() and (df.order == "A > B").all()
    per = df.groupby(["step", "true_task"]).images.sum()
    assert per.to_dict() == {(0, "A"): 10, (0, "B"): 12, (1, "A"): 10, (1, "B"): 12}
    diag = df[df.true_task == df.chosen_task].groupby(["step", "true_task"]).images.sum() / per
    assert diag[(1, "A")] == pytest.approx(0.9)
    r = routed_metrics_table([(run, res)]).to_pandas()
    assert list(r.columns) == [f.name for f in ROUTED_SCHEMA]
    assert r.value.iloc[0] == 0.9 and np.isnan(r.value.iloc[1])
    res.routed = [(1, "A", "maybe", "image_auroc", 0.5)]
    with pytest.raises(ValueError, match="correct"):
        routed_metrics_table([(run, res)])
    res.routing = [(0, "A", "A", -1)]
    with pytest.raises(ValueError, match="negative"):
        routing_table([(run, res)])


# ----------------------------------------------------------------------------- with the engine

SC = {"coreset": {"projection": "jl", "projection_dim": 4, "joint": "composable"}, "model": {"reweighting": "paper"},
      "evaluation": {"pixel_metrics": False}, "memory_sizes": [20, 45], "seeds": [0, 1]}


@pytest.fixture(scope="module")
def tasks():
    from toy_features import make_tasks

    return make_tasks(3, seed=5)


def test_measure_difficulty_is_single_task_patchcore(tasks):
    """Against the reference path: each task's own greedy bank at the largest M, plain k-NN, no memo."""
    from brute_force import brute_evaluate
    from pclsim.study.banks import BankBuilder, SelectionNeeds
    from pclsim.study.scenario import difficulty_order
    from pclsim.study.strategies import BankRef

    d = S.measure_difficulty(tasks, SC)
    assert d["memory_size"] == 45 and d["seeds"] == [0, 1]
    for t in tasks:
        ref = []
        for seed in (0, 1):
            refs = [BankRef("task", (t,), 45)]
            bank = BankBuilder(tasks, SelectionNeeds.of(refs), projection_dim=SC["coreset"]["projection_dim"],
                               seed=seed).bank_vectors(refs[0])
            ref.append(brute_evaluate(tasks[t], [bank], identify=False)[0]["image_auroc"])
        assert d["values"][t] == pytest.approx(np.mean(ref))
    easy = difficulty_order(list(tasks), d["values"], "easy_to_hard")
    assert easy[0] == max(d["values"], key=d["values"].get)
    rows = pd.DataFrame(S.difficulty_rows(d))
    assert set(rows.task) == set(tasks) and (rows.statistic == "difficulty").all()
    assert rows.set_index("task").value.to_dict() == pytest.approx(d["values"])


def test_engine_routing_adds_up_and_matches_task_id_acc(tasks):
    """The lead's engine fills OrderResult.routing: counts add up to each task's test images, the
    diagonal share is task_id_acc, and the counts equal a brute-force routing (lowest mean NN distance)."""
    from pclsim.study.banks import BankBuilder, SelectionNeeds
    from pclsim.study.engine import simulate, strategy_for

    orders = list(itertools.permutations(tasks))[:2]
    runs = [Run("patchcore_cl", 45, 0, o) for o in orders]
    pairs = simulate(runs, tasks, SC)
    if not any(res.routing for _, res in pairs):
        pytest.skip("the engine does not fill OrderResult.routing yet")
    df = routing_table(pairs).to_pandas()
    all_refs = [b for run, _ in pairs for s in range(len(run.order))
                for b in strategy_for(run, SC["coreset"]).banks(run.order[: s + 1])]
    src = BankBuilder(tasks, SelectionNeeds.of(all_refs), projection_dim=SC["coreset"]["projection_dim"], seed=0)
    for run, res in pairs:
        r = df[df.run_id == run.run_id]
        for s in range(len(run.order)):
            banks = strategy_for(run, SC["coreset"]).banks(run.order[: s + 1])
            for j, t in enumerate(run.order):
                got = r[(r.step == s) & (r.true_task == t)].set_index("chosen_task").images
                q = tasks[t].test
                assert got.sum() == q.shape[0]
                assert got.get(t, 0) / q.shape[0] == pytest.approx(res.matrices["task_id_acc"][s, j])
                dist = [np.sqrt(((q[:, :, None, :] - src.bank_vectors(b)[None, None]) ** 2).sum(-1)) for b in banks]
                mean_d = np.stack([d.min(-1).mean(1) for d in dist], axis=1)  # (images, banks)
                chosen = [banks[k].tasks[0] for k in np.argmin(mean_d, axis=1)]
                want = pd.Series(chosen).value_counts()
                assert got.sort_index().to_dict() == want.sort_index().to_dict()


@pytest.mark.parametrize("metric, best_is", [("image_fpr@fpr0.05", "idxmin"), ("image_f1@fpr0.05", "idxmax"),
                                             ("threshold@sigma3", "idxmax")])
def test_best_order_follows_the_metrics_direction(metric, best_is):
    """A false-positive rate is better LOWER; a threshold level has no better side (labelled as such). Fresh
    names: built on first lookup, so this holds in any process (issue 24's review)."""
    orders = [list(o) for o in itertools.permutations(TASKS4)][:8]
    mat, summ = make_study(TASKS4, orders, [0, 1], no_order_effect, metric=metric)
    st = S.statistics_table(summ, mat)
    om = summ.groupby("order").final_mean.mean()
    best = _get(st, "best_order", "final_mean")
    assert best.order == getattr(om, best_is)()
    assert ("no better direction" in best.note) == metric.startswith("threshold@")
