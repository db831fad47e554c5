"""Issue 23: order designs for real streams. The balanced (Williams) design: its balance, its replicates,
its key's checks and what `validate` says; the statistics' note on the design."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from pclsim.errors import ScenarioError
from pclsim.study.orders import balanced_orders, design_balance, williams_design
from pclsim.study.scenario import describe_orders, expand_runs, load_scenario


def write(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body))
    return p


def names(T):
    return [f"T{i}" for i in range(T)]


@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 7, 12, 15])
def test_williams_design_is_balanced_for_positions_and_ordered_adjacent_pairs(T):
    """Counted, not assumed: every task at every step equally often; every ordered pair (a then b, a != b)
    adjacent equally often. Even T: T orders, each pair once; odd T: 2T orders (square + mirror), each twice."""
    d = williams_design(T)
    assert d.shape == ((T if T % 2 == 0 else 2 * T), T)
    assert len({tuple(r) for r in d}) == len(d)  # distinct orders
    assert all(sorted(r) == list(range(T)) for r in d)  # each row a permutation
    pos, adj = design_balance([tuple(r) for r in d], list(range(T)))
    assert (pos == len(d) // T).all()
    off = adj[~np.eye(T, dtype=bool)]
    assert (off == len(d) // T).all() and np.diag(adj).sum() == 0
    assert off.sum() == len(d) * (T - 1)  # every adjacency is counted once


def test_a_single_latin_square_does_not_balance_odd_carryover():
    """Why odd T needs the mirror: the square alone (first T rows) leaves ordered pairs uneven for T = 5."""
    d = williams_design(5)[:5]
    _, adj = design_balance([tuple(r) for r in d], list(range(5)))
    off = adj[~np.eye(5, dtype=bool)]
    assert off.min() == 0 and off.max() == 2


@pytest.mark.parametrize("T,n", [(5, 30), (6, 24), (7, 28), (12, 36), (15, 60), (4, 24)])
def test_replicates_stay_balanced_and_distinct(T, n):
    tasks = names(T)
    orders = balanced_orders(tasks, n, seed=1)
    assert len(orders) == n and len(set(orders)) == n
    pos, adj = design_balance(orders, tasks)
    assert (pos == n // T).all()
    assert (adj[~np.eye(T, dtype=bool)] == n // T).all()
    if n == math.factorial(T):  # 4 tasks, 24 orders: every permutation once
        assert set(orders) == set(itertools.permutations(tasks))


def test_seed_relabels_the_design():
    a, b = balanced_orders(names(6), 6, seed=0), balanced_orders(names(6), 6, seed=1)
    assert a != b and balanced_orders(names(6), 6, seed=0) == a
    assert set(a) != set(b)


def _sc(tmp_path, orders, T=6, name="s.yaml"):
    tasks = ["Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD"][:T]
    return load_scenario(write(tmp_path, {"dataset": {"tasks": tasks}, "orders": orders,
                                          "strategies": ["patchcore_cl"], "memory_sizes": [100]}, name))


def test_balanced_key_changes_what_runs(tmp_path):
    runs = {r.order for r in expand_runs(_sc(tmp_path, {"balanced": 12}))}
    assert len(runs) == 12
    assert runs != {r.order for r in expand_runs(_sc(tmp_path, {"balanced": 12, "seed": 5}, name="b.yaml"))}
    assert runs != {r.order for r in expand_runs(_sc(tmp_path, {"sample": 12}, name="c.yaml"))}
    n, how = describe_orders(_sc(tmp_path, {"balanced": 18}, name="d.yaml"))
    assert n == 18 and "balanced (Williams)" in how


@pytest.mark.parametrize("orders,T,key,msg", [
    ({"balanced": 7}, 6, "orders.balanced", "not a multiple of 6"),
    ({"balanced": 5}, 5, "orders.balanced", "not a multiple of 10"),
    ({"balanced": 12}, 3, "orders.balanced", "exceeds the 6 possible"),
    ({"balanced": 0}, 6, "orders.balanced", ">= 1"),
    ({"balanced": 6, "seed": -1}, 6, "orders.seed", ">= 0"),
    ({"balanced": 6, "budget": 3}, 6, "orders.budget", "unknown option"),
])
def test_bad_balanced_values_name_the_key(tmp_path, orders, T, key, msg):
    with pytest.raises(ScenarioError, match=rf"key '{key}'.*{msg}"):
        _sc(tmp_path, orders, T)


def test_validate_says_the_design_and_its_size(tmp_path):
    from tests.study.test_orders import _validate

    body = {"dataset": {"tasks": ["Brain_AD", "Liver_AD", "Chest_AD"], "image_size": 64,
                        "synthetic": {"train": 2, "test": 2}},
            "strategies": ["patchcore_cl"], "memory_sizes": [30], "orders": {"balanced": 6}}
    r = _validate(write(tmp_path, body))
    assert r.returncode == 0, r.stderr
    assert "orders: 6 " in r.stdout and "balanced (Williams) design of 6 orders" in r.stdout
    r = _validate(write(tmp_path, dict(body, orders={"balanced": 4}), "b.yaml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    assert "orders.balanced" in r.stderr


def _study(orders, rng):
    """matrices rows of one patchcore_cl study over `orders` whose final value of task t arriving at step p is
    level_t + slope_t * p + noise; the diagonal is 1.0."""
    T = len(orders[0])
    tasks = sorted(orders[0])
    level = dict(zip(tasks, np.linspace(0.6, 0.9, T)))
    slope = dict(zip(tasks, np.linspace(-0.02, 0.03, T)))
    rows, summ = [], []
    for k, o in enumerate(orders):
        rid = f"r{k}"
        finals = []
        for p, t in enumerate(o):
            v = level[t] + slope[t] * p + 0.01 * rng.standard_normal()
            finals.append(v)
            for step in sorted({p, T - 1}):
                rows.append(dict(run_id=rid, strategy="patchcore_cl", memory_size=100, seed=0, order=" > ".join(o),
                                 step=step, train_task=o[step], eval_task=t, metric="image_auroc",
                                 value=1.0 if step == p and p < T - 1 else v))
        summ.append(dict(run_id=rid, strategy="patchcore_cl", memory_size=100, seed=0, order=" > ".join(o),
                         metric="image_auroc", final_mean=float(np.mean(finals)), avg_forgetting_pct=1.0))
    return pd.DataFrame(summ), pd.DataFrame(rows)


def test_statistics_say_when_the_orders_are_a_balanced_design():
    """A balanced design's per-task slope is the contrast of the position means (computed here by hand)
    and its method says so; a seeded sample of the same size is not balanced and does not say it."""
    from pclsim.analysis.statistics import statistics_table

    rng = np.random.default_rng(0)
    orders = balanced_orders(names(6), 12, seed=2)
    summ, mat = _study(orders, rng)
    st = statistics_table(summ, mat, metrics=["image_auroc"])
    rows = st[(st.statistic == "position_slope") & (st.quantity == "final_value") & st.task.notna()]
    assert len(rows) == 6 and rows.method.str.contains("orders balanced").all()
    fin = mat[mat.step == 5]
    for t in names(6):
        f = fin[fin.eval_task == t]
        pos = np.array([o.split(" > ").index(t) for o in f.order])
        means = np.array([f.value.to_numpy()[pos == p].mean() for p in range(6)])
        c = np.arange(6) - 2.5
        assert rows[rows.task == t].value.iloc[0] == pytest.approx((c * means).sum() / (c * c).sum(), abs=1e-12)
    from pclsim.study.orders import _sample_expand

    summ2, mat2 = _study(_sample_expand(tuple(names(6)), {"sample": 12, "seed": 0}), rng)
    st2 = statistics_table(summ2, mat2, metrics=["image_auroc"])
    m2 = st2[(st2.statistic == "position_slope") & (st2.quantity == "final_value") & st2.task.notna()].method
    assert not m2.str.contains("balanced").any()
