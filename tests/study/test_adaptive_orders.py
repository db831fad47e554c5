"""Issue 23: adaptive order designs, `{search: worst|best, budget: N, ...}` and `{sample: auto, precision: X,
max: N}`, decided in rounds from results. The results here come from a planted objective (an additive task x
position effect, an adjacency effect and noise) over all 720 orders of six tasks, so every claim is checked
against the known truth; tests/runner/test_adaptive_sweep.py runs them as a sweep."""

import itertools
import math

import numpy as np
import pytest
import yaml

from pclsim.errors import ScenarioError
from pclsim.study.adaptive import replay
from pclsim.study.order_search import additive_fit, extreme_assignment, neighbours
from pclsim.study.orders import design_balance, williams_design
from pclsim.study.scenario import describe_orders, expand_runs, load_scenario, resolve

TASKS = ["Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD"]


class Planted:
    """observe() of a known objective: task t at step p of an order ends at 0.7 + T beta[t, p] + T pair[a, t]
    (a: the task just before it) + noise (one draw per order); the final mean is the mean over tasks,
    0.7 + sum_t beta[t, pos] + sum of adjacent pair[a, b] + noise. `stop_after`: the number of observe calls
    that answer, later ones return None (an interrupted sweep)."""

    def __init__(self, seed=0, noise=0.0, keys=(("patchcore_cl", 100),), stop_after=None, scale=1.0):
        rng = np.random.default_rng(seed)
        self.beta = rng.normal(0, 0.02, (6, 6)) * scale
        self.pair = rng.normal(0, 0.01, (6, 6)) * scale
        self.keys, self.calls, self.stop_after, self.asked = keys, 0, stop_after, []
        self.values, self.tasks = {}, {}
        nrng = np.random.default_rng(seed + 100)
        for o in itertools.permutations(TASKS):
            ix = [TASKS.index(t) for t in o]
            e = noise * nrng.standard_normal()
            tv = {t: 0.7 + 6 * self.beta[i, p] + (6 * self.pair[ix[p - 1], i] if p else 0.0) + e
                  for p, (t, i) in enumerate(zip(o, ix))}
            self.tasks[o] = tv
            self.values[o] = float(np.mean(list(tv.values())))
        self.ranked = sorted(self.values, key=self.values.get)  # worst first

    def __call__(self, orders, metric=None):
        self.calls += 1
        self.asked.append(list(orders))
        if self.stop_after is not None and self.calls > self.stop_after:
            return None
        return {o: {k: {"final": self.values[o] + 0.001 * j,
                        "tasks": {t: v + 0.001 * j for t, v in self.tasks[o].items()}}
                    for j, k in enumerate(self.keys)} for o in orders}

    def rank(self, order_str, worst=True):
        o = tuple(order_str.split(" > "))
        return (self.ranked if worst else self.ranked[::-1]).index(o) + 1


def sc_of(orders, strategies=("patchcore_cl",), memory_sizes=(100,), tasks=TASKS):
    return resolve({"dataset": {"tasks": list(tasks)}, "strategies": list(strategies),
                    "memory_sizes": list(memory_sizes), "orders": orders})


def results(plan):
    return {r["note"]: r for r in plan.log if r["kind"] == "result"} | \
        {"found": next(r for r in plan.log if r["kind"] == "result" and r["role"] == "search")}


# ----------------------------------------------------------------------------- building blocks

def test_neighbours_are_every_swap_and_insertion():
    o = tuple("ABCD")
    nb = neighbours(o)
    assert len(nb) == len(set(nb)) and o not in nb
    swaps = {tuple(x) for i, j in itertools.combinations(range(4), 2)
             for x in [list(o[:i]) + [o[j]] + list(o[i + 1:j]) + [o[i]] + list(o[j + 1:])]}
    inserts = set()
    for i in range(4):
        rest = [t for k, t in enumerate(o) if k != i]
        for j in range(4):
            inserts.add(tuple(rest[:j] + [o[i]] + rest[j:]))
    assert set(nb) == (swaps | inserts) - {o}


def test_additive_fit_and_assignment_recover_a_planted_extreme():
    """With an exactly additive objective the fitted model's assignment is the true worst (and best) order,
    checked against brute force over all 720."""
    rng = np.random.default_rng(3)
    beta = rng.normal(0, 1, (6, 6))
    val = {o: sum(beta[TASKS.index(t), p] for p, t in enumerate(o)) for o in itertools.permutations(TASKS)}
    sample = [o for o in list(val)[::7]]
    b = additive_fit(sample, np.array([val[o] for o in sample]), tuple(TASKS))
    assert extreme_assignment(b, tuple(TASKS), worst=True) == min(val, key=val.get)
    assert extreme_assignment(b, tuple(TASKS), worst=False) == max(val, key=val.get)


# ----------------------------------------------------------------------------- search

@pytest.mark.parametrize("goal", ["worst", "best"])
def test_search_beats_uniform_sampling_on_a_planted_objective(goal):
    """Budget 60 of 720, five seeds: the search's median rank of its extreme order is better than the uniform
    sample's of the same budget, and it never evaluates more than the budget."""
    obj = Planted(seed=1, noise=0.003)
    s_ranks, u_ranks = [], []
    for seed in range(5):
        plan = replay(sc_of({"search": goal, "budget": 60, "seed": seed}), obj)
        assert plan.finished and "budget" in plan.stop
        res = results(plan)
        own = [r for r in plan.log if r["kind"] == "order" and r["role"] == "search"]
        assert len(own) == 60 == len({r["order"] for r in own})
        s_ranks.append(obj.rank(res["found"]["order"], goal == "worst"))
        u_ranks.append(obj.rank(res[f"uniform {goal}"]["order"], goal == "worst"))
        assert res["found"]["value"] == (min if goal == "worst" else max)(r["value"] for r in own)
    assert np.median(s_ranks) < np.median(u_ranks), (s_ranks, u_ranks)


def test_search_replays_the_same_decisions_from_stored_results():
    """A sweep interrupted after round k resumes with the same orders: every prefix of answers gives a prefix
    of the full plan, and the last round asked for is the one to run next."""
    full = replay(sc_of({"search": "worst", "budget": 30, "batch": 6}), Planted())
    assert len(full.rounds) == 5
    for k in range(1, 5):
        part = replay(sc_of({"search": "worst", "budget": 30, "batch": 6}), Planted(stop_after=k))
        assert not part.finished and part.rounds == full.rounds[: k + 1]


@pytest.mark.parametrize("change", [
    {"budget": 24}, {"batch": 4}, {"seed": 1}, {"search": "best"}, {"uniform": False}, {"metric": "image_f1"},
    {"strategy": "joint"}, {"memory_size": 300},
])
def test_every_search_key_changes_what_runs(change):
    """Each option changes the orders run (metric, strategy and memory size: which values the search reads,
    so which orders it proposes next)."""
    base = {"search": "worst", "budget": 30, "batch": 6}
    keys = (("patchcore_cl", 100), ("patchcore_cl", 300), ("joint", 100), ("joint", 300))

    class ByMetric(Planted):  # image_f1 reads another objective
        def __init__(self, metric):
            super().__init__(seed=0 if metric == "image_auroc" else 7, keys=keys)

    def plan(o):
        sc = sc_of(o, strategies=("patchcore_cl", "joint"), memory_sizes=(100, 300))
        by = {m: ByMetric(m) for m in ("image_auroc", "image_f1")}
        obs = lambda orders, metric: by[metric](orders)  # noqa: E731
        if "strategy" in o or "memory_size" in o:  # another (strategy, M): another objective
            j = keys.index((o.get("strategy", "patchcore_cl"), o.get("memory_size", 100)))
            other = Planted(seed=11, keys=keys)
            obs = lambda orders, metric: {x: {k: (other(orders)[x][k] if i == j else v) for i, (k, v)  # noqa: E731
                                              in enumerate(ByMetric("image_auroc")(orders)[x].items())}
                                          for x in orders}
        return replay(sc, obs).orders

    assert plan(dict(base, **change)) != plan(base)


# ----------------------------------------------------------------------------- sample: auto

def test_sample_auto_stops_at_the_precision_with_balanced_batches():
    obj = Planted(seed=2, noise=0.0, scale=0.2)
    plan = replay(sc_of({"sample": "auto", "precision": 0.01, "max": 120}), obj)
    assert plan.finished and plan.stop.startswith("precision reached")
    stop = [r for r in plan.log if r["kind"] == "stop"]
    assert len(stop) == 1 and stop[0]["ci_half_width"] <= 0.01 and len(plan.orders) < 120
    base = len(williams_design(6))
    assert all(len(r) == base for r in plan.rounds)
    for r in plan.rounds:  # every batch is a balanced design
        pos, adj = design_balance(r, TASKS)
        assert (pos == 1).all() and (adj[~np.eye(6, dtype=bool)] == 1).all()
    assert len(set(plan.orders)) == len(plan.orders)
    # the stopping check, recomputed here: t interval of the mean over orders (scipy.stats.t)
    from scipy import stats

    fin = np.array([obj.values[o] for o in plan.orders])
    h = stats.t.ppf(0.975, len(fin) - 1) * fin.std(ddof=1) / math.sqrt(len(fin))
    last = [r for r in plan.log if r["kind"] == "check" and r["quantity"] == "final_mean"][-1]
    assert last["ci_half_width"] == pytest.approx(h, rel=1e-9)
    # a tighter precision needs more orders; an unreachable one stops at max
    more = replay(sc_of({"sample": "auto", "precision": 0.005, "max": 120}), Planted(seed=2, scale=0.2))
    assert len(more.orders) > len(plan.orders)
    cap = replay(sc_of({"sample": "auto", "precision": 1e-6, "max": 30}), Planted(seed=2, scale=0.2))
    assert cap.finished and cap.stop.startswith("max of 30") and len(cap.orders) == 30


@pytest.mark.parametrize("change", [{"precision": 0.005}, {"max": 6}, {"batch": 4}, {"seed": 3},
                                    {"metric": "image_f1"}])
def test_every_sample_auto_key_changes_what_runs(change):
    """precision, max and metric: when it stops (image_f1 reads a noisier objective); batch, seed: which orders."""
    base = {"sample": "auto", "precision": 0.01, "max": 120}

    by = {"image_auroc": Planted(seed=2, scale=0.2), "image_f1": Planted(seed=2, scale=1.0)}

    def plan(o):
        return replay(sc_of(o), lambda orders, metric: by[metric](orders)).orders

    assert plan(dict(base, **change)) != plan(base)


# ----------------------------------------------------------------------------- checks and validate

def write(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body))
    return p


@pytest.mark.parametrize("orders,key,msg", [
    ({"search": "worst", "budget": 0}, "orders.budget", ">= 1"),
    ({"search": "worst"}, "orders.budget", "integer"),
    ({"search": "worst", "budget": 800}, "orders.budget", "exceeds the 720"),
    ({"search": "middle", "budget": 5}, "orders.search", "worst or best"),
    ({"search": "worst", "budget": 5, "metric": "image_aurok"}, "orders.metric", "unknown metric"),
    ({"search": "worst", "budget": 5, "strategy": "joint"}, "orders.strategy", "not one of the scenario"),
    ({"search": "worst", "budget": 5, "memory_size": 7}, "orders.memory_size", "not one of the scenario"),
    ({"search": "worst", "budget": 5, "uniform": "yes"}, "orders.uniform", "true or false"),
    ({"search": "worst", "budget": 5, "precision": 0.1}, "orders.precision", "unknown option"),
    ({"sample": "auto", "max": 30}, "orders.precision", "needs a precision"),
    ({"sample": "auto", "precision": -1, "max": 30}, "orders.precision", "needs a precision"),
    ({"sample": "auto", "precision": 0.01}, "orders.max", "integer"),
    ({"sample": "auto", "precision": 0.01, "max": 30, "metric": "nope"}, "orders.metric", "unknown metric"),
    ({"sample": 5, "precision": 0.01}, "orders.precision", "only with sample: auto"),
    ({"sample": "lots"}, "orders.sample", "integer"),
])
def test_bad_adaptive_values_name_the_key(tmp_path, orders, key, msg):
    with pytest.raises(ScenarioError, match=rf"key '{key}'.*{msg}"):
        load_scenario(write(tmp_path, {"dataset": {"tasks": TASKS}, "orders": orders,
                                       "strategies": ["patchcore_cl"], "memory_sizes": [100]}))


def test_validate_says_how_the_search_and_the_sampling_run(tmp_path):
    from tests.study.test_orders import _validate

    body = {"dataset": {"tasks": TASKS[:4], "image_size": 64, "synthetic": {"train": 2, "test": 2}},
            "strategies": ["patchcore_cl"], "memory_sizes": [30, 60]}
    r = _validate(write(tmp_path, dict(body, orders={"search": "best", "budget": 8, "memory_size": 60})))
    assert r.returncode == 0, r.stderr
    assert "orders: 16 " in r.stdout and "adaptive search for the best order" in r.stdout
    assert "runs: at most 32 (in rounds of Tune trials, 2 in round 0)" in r.stdout
    assert "patchcore_cl at M=60" in r.stdout and "at most 8 orders in rounds of 8" in r.stdout
    r = _validate(write(tmp_path, dict(body, orders={"sample": "auto", "precision": 0.01, "max": 20}), "b.yaml"))
    assert r.returncode == 0, r.stderr
    assert "orders: 20 " in r.stdout and "<= 0.01, or 20 orders ran" in r.stdout
    r = _validate(write(tmp_path, dict(body, orders={"search": "worst", "budget": 0}), "c.yaml"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "orders.budget" in r.stderr


def test_round_zero_is_what_expand_runs_gives():
    sc = sc_of({"search": "worst", "budget": 12, "batch": 4})
    plan = replay(sc, Planted(stop_after=0))
    assert [r.order for r in expand_runs(sc)] == plan.rounds[0] and len(plan.rounds[0]) == len(set(plan.rounds[0]))
    n, how = describe_orders(sc)
    assert n == 24 and "uniform sample of 12" in how


def test_designs_side_by_side_share_rounds_and_runs():
    """orders: [{sample: auto, ...}, {search: worst, ...}] (scenarios/long_stream.yaml): round k holds both
    designs' k-th rounds, an order both propose runs once, each design decides exactly as it would alone."""
    auto = {"sample": "auto", "precision": 0.01, "max": 60}
    search = {"search": "worst", "budget": 20, "batch": 6, "uniform": False}
    both = replay(sc_of([auto, search]), Planted(seed=2, scale=0.2))
    alone = [replay(sc_of(x), Planted(seed=2, scale=0.2)) for x in (auto, search)]
    assert both.finished and "sample_auto: precision reached" in both.stop and "search: budget" in both.stop
    assert set(both.orders) == set(alone[0].orders) | set(alone[1].orders)
    assert len(both.orders) == len(set(both.orders))
    for k, r in enumerate(both.rounds):
        want = set().union(*(set(a.rounds[k]) for a in alone if k < len(a.rounds)))
        assert set(r) == want - set(o for rr in both.rounds[:k] for o in rr)
    assert {r["design"] for r in both.log} == {"sample_auto", "search"}
    n, how = describe_orders(sc_of([auto, search]))
    assert n == 80 and how.startswith("side by side") and "search for the worst" in how
    assert [r.order for r in expand_runs(sc_of([auto, search]))] == both.rounds[0]


def test_a_list_of_designs_is_checked_entry_by_entry(tmp_path):
    with pytest.raises(ScenarioError, match=r"key 'orders.budget'"):
        load_scenario(write(tmp_path, {"dataset": {"tasks": TASKS}, "memory_sizes": [100],
                                       "orders": [{"sample": "auto", "precision": 0.01, "max": 12},
                                                  {"search": "worst", "budget": 0}]}))
    with pytest.raises(ScenarioError, match=r"key 'orders\[0\]'.*designs only"):
        load_scenario(write(tmp_path, {"dataset": {"tasks": TASKS}, "memory_sizes": [100],
                                       "orders": [{"balanced": 6}, TASKS]}, "b.yaml"))


def test_search_round_zero_is_balanced_where_the_batch_holds_a_williams_design():
    plan = replay(sc_of({"search": "worst", "budget": 24, "batch": 12, "uniform": False}), Planted(stop_after=0))
    pos, adj = design_balance(plan.rounds[0], TASKS)
    assert len(plan.rounds[0]) == 12 and (pos == 2).all() and (adj[~np.eye(6, dtype=bool)] == 2).all()
    odd = replay(sc_of({"search": "worst", "budget": 24, "batch": 8, "uniform": False}), Planted(stop_after=0))
    pos, _ = design_balance(odd.rounds[0][:6], TASKS)  # one design of 6, then 2 uniform orders
    assert len(odd.rounds[0]) == 8 and (pos == 1).all()


def test_cell_table_reads_each_task_at_its_step():
    """After one Williams design every (task, step) cell is observed once: the table holds the tasks' values / T;
    an unseen cell gets the task's linear fit; a task without values adds nothing."""
    from pclsim.study.order_search import cell_table

    obj = Planted(seed=4)
    orders = [tuple(TASKS[i] for i in row) for row in williams_design(6)]
    beta = cell_table(orders, obj.tasks, tuple(TASKS))
    for o in orders:
        assert sum(beta[TASKS.index(t), p] for p, t in enumerate(o)) == pytest.approx(obj.values[o], abs=1e-12)
    part = cell_table(orders[:2], {o: {**obj.tasks[o], "Liver_AD": float("nan")} for o in orders[:2]}, tuple(TASKS))
    i = TASKS.index("Brain_AD")
    seen = [orders[0].index("Brain_AD"), orders[1].index("Brain_AD")]
    fit = np.polyfit(seen, [obj.tasks[o]["Brain_AD"] for o in orders[:2]], 1)
    assert part[i] == pytest.approx(np.polyval(fit, np.arange(6)) / 6, abs=1e-12)
    assert (part[TASKS.index("Liver_AD")] == 0).all()
