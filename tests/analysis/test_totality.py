"""Issue 27: every summary and statistic is total over the matrices the engine can write.

Property-based (hypothesis): random T x T matrices with zeros, ones, ties, constant rows, NaN columns
(mask-less tasks), T = 1; random small results tables (one or several orders, seeds, runs). Nothing
raises; every value is finite or null with its reason; the known identities hold.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pclsim import metrics as metric_fns
from pclsim.analysis import order_tests, statistics
from pclsim.analysis.summary import QUANTITIES, build_summary, summarise
from pclsim.core.metric_registry import metric_names
from pclsim.results.schema import ORDER_SEPARATOR, SUMMARY_COLUMNS

CELL = st.one_of(st.just(0.0), st.just(1.0), st.just(0.5), st.floats(0.0, 1.0, allow_nan=False))


@st.composite
def matrices(draw, t_max=5):
    """What the engine writes: values in [0, 1] with zeros, ones and ties; optionally constant rows and
    columns of NaN (a pixel metric's task without masks)."""
    T = draw(st.integers(1, t_max))
    a = np.array(draw(st.lists(CELL, min_size=T * T, max_size=T * T)), float).reshape(T, T)
    if draw(st.booleans()):
        a[draw(st.integers(0, T - 1))] = draw(CELL)  # a constant row
    if T > 1 and draw(st.integers(0, 3)) == 0:
        a[:, draw(st.integers(0, T - 1))] = np.nan  # a task without masks
    if draw(st.booleans()):
        np.fill_diagonal(a, draw(st.sampled_from([0.0, 1.0])))  # every task at 0 (or 1) at its own step
    return a


METRIC = st.sampled_from(metric_names() + ["not_registered"])


def check_row(out: dict):
    reasons = out["undefined"] if isinstance(out["undefined"], str) else ""
    for q in QUANTITIES:
        v = out[q]
        assert isinstance(v, float)
        assert np.isfinite(v) or (np.isnan(v) and f"{q}: " in reasons), (q, v, reasons)
        if np.isfinite(v):
            assert f"{q}: " not in reasons


@settings(max_examples=300, deadline=None, derandomize=True)
@given(matrices(), METRIC)
def test_summarise_is_total_and_every_null_has_its_reason(a, metric):
    T = a.shape[0]
    base = np.full(T, 0.5)
    out = summarise(a, base, metric)
    check_row(out)
    if np.isfinite(a).all():
        assert out["bwt"] == pytest.approx(np.mean(a[-1, :-1] - np.diag(a)[:-1]) if T > 1 else 0.0)
        assert out["max_forgetting"] == pytest.approx(metric_fns.max_forgetting(a))
        if metric != "task_id_acc":
            try:  # the strict public function: the same value, or the same reason as its error
                ref = metric_fns.average_forgetting(a)
            except metric_fns.Undefined as e:
                assert f"avg_forgetting_pct: {e}" in out["undefined"]
                if (np.diag(a)[:-1] == 0).any():
                    j = int(np.flatnonzero(np.diag(a)[:-1] == 0)[0])
                    assert f"avg_forgetting_pct: matrix[{j}][{j}] is 0" in out["undefined"]
            else:
                assert out["avg_forgetting_pct"] == pytest.approx(ref)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.lists(CELL, min_size=5, max_size=5), METRIC)
def test_an_unchanged_matrix_forgets_nothing(T, col, metric):
    a = np.tile(np.array(col[:T]), (T, 1))  # every task keeps one value at every step
    out = summarise(a, np.full(T, 0.5), metric)
    check_row(out)
    assert out["bwt"] == 0.0 and out["max_forgetting"] == 0.0
    assert out["final_mean"] == pytest.approx(np.mean(col[:T]))
    if metric != "task_id_acc":
        assert out["avg_forgetting_pct"] == 0.0 or (np.isnan(out["avg_forgetting_pct"])
                                                    and "is 0: relative forgetting" in out["undefined"])


def test_routing_accuracy_keeps_its_meaningful_quantities_only():
    a = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])  # task 2 routed to task 1's bank
    out = summarise(a, np.full(3, 1 / 3), "task_id_acc")
    assert out["final_mean"] == pytest.approx(2 / 3) and out["bwt"] == 0.0
    assert np.isnan(out["avg_forgetting_pct"]) and np.isnan(out["fwt"])
    assert "avg_forgetting_pct: not defined for task_id_acc" in out["undefined"]
    # the same matrix as an image metric: the relative forgetting is undefined, named by its cell
    out = summarise(a, np.full(3, 0.5), "image_auroc")
    assert "avg_forgetting_pct: matrix[1][1] is 0: relative forgetting is undefined" in out["undefined"]
    assert out["fwt"] == pytest.approx(np.mean([0.0 - 0.5, 0.0 - 0.5]))


# ----------------------------------------------------------------------------- results tables

TASKS = ["a", "b", "c", "d"]


@st.composite
def studies(draw):
    """matrices.parquet rows of a small random study: 1-4 tasks, one or several orders and seeds, two
    strategies, an image metric, a pixel metric with a mask-less task, routing accuracy; optionally
    constant (every cell the same value)."""
    T = draw(st.integers(1, 4))
    tasks = TASKS[:T]
    perms = list(itertools.permutations(tasks))
    orders = draw(st.lists(st.sampled_from(perms), min_size=1, max_size=min(6, len(perms)), unique=True))
    seeds = draw(st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True))
    strategies = draw(st.lists(st.sampled_from(["patchcore_cl", "joint", "finetune"]), min_size=1, max_size=2,
                               unique=True))
    constant = draw(st.booleans())
    maskless = draw(st.sampled_from([None] + tasks)) if T > 1 else None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for s, seed, order in itertools.product(strategies, seeds, orders):
        run = f"{s}-{seed}-{''.join(order)}"
        for metric in ("image_auroc", "pixel_auroc", "task_id_acc"):
            for step in range(T):
                for t in order:
                    if constant:
                        v = 0.5
                    else:
                        v = float(rng.choice([0.0, 1.0, 0.5, rng.random()]))
                    if metric == "pixel_auroc" and t == maskless:
                        v = np.nan
                    rows.append((run, s, 100, seed, ORDER_SEPARATOR.join(order), step, order[step], t, metric, v))
    mat = pd.DataFrame(rows, columns=["run_id", "strategy", "memory_size", "seed", "order", "step", "train_task",
                                      "eval_task", "metric", "value"])
    steps = mat[["run_id", "step"]].drop_duplicates().assign(bank_mb=1.0)
    return mat, steps, constant


@pytest.fixture()
def quick_resampling(monkeypatch):
    monkeypatch.setattr(order_tests, "N_RESAMPLES", 199)
    monkeypatch.setattr(order_tests, "N_PERMUTATIONS", 99)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(studies())
def test_summary_and_statistics_are_total_on_random_studies(quick_resampling, study):
    mat, steps, constant = study
    base = {(t, m): 0.5 for t in TASKS for m in ("image_auroc", "pixel_auroc", "task_id_acc")}
    summary = build_summary(mat, steps, base, arch_mb=1.0)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == mat.groupby(["run_id", "metric"]).ngroups
    for row in summary.to_dict("records"):
        check_row(row)
        assert np.isfinite(row["relative_gap"]) or "relative_gap: " in row["undefined"], row
    stats = statistics.statistics_table(summary, mat)
    for r in stats.to_dict("records"):
        assert np.isfinite(r["value"]) or r["note"] or r["statistic"] in ("order_share",), r
        assert np.isnan(r["p_value"]) or 0.0 <= r["p_value"] <= 1.0, r
        if constant and r["statistic"] == "order_test" and np.isfinite(r["p_value"]):
            assert r["p_value"] == 1.0, r  # a constant study: the order has no effect
