"""Adaptive order designs: orders decided in rounds, each round from the results of the rounds before.

Two designs (registered with pclsim.study.orders, written in a scenario's `orders`):

- `{search: worst | best, budget: N, metric: M, strategy: S, memory_size: K, seed: s, batch: B, uniform: true}`:
  a search over permutations for the order with the lowest (worst) or highest (best) final mean of metric M
  (mean over tasks of a[T-1][j], then over the scenario's seeds) of strategy S at memory size K. It evaluates
  at most N distinct orders, B per round. Round 0: a seeded uniform sample of B orders. Every later round
  fits an additive model of the evaluated orders' values, value ~ sum_t beta[t, position of t] (ridge,
  lambda = RIDGE, numpy least squares on one-hot task x position columns), and proposes (1) the order the
  model rates most extreme, found exactly as an assignment of tasks to positions
  (scipy.optimize.linear_sum_assignment), then (2) swap and insertion neighbours of the ELITE most extreme
  orders found so far, those the model rates most extreme first, a quarter of the batch drawn at random
  among them (exploration). `uniform: true` also runs a seeded uniform sample of N orders in round 0, the
  comparison the search must beat (the search never reads it). Orders are evaluated for every strategy and
  memory size of the scenario; the objective reads one of them.
- `{sample: auto, precision: X, max: N, metric: M, seed: s, batch: B}`: orders in batches until, for every
  (strategy, memory size) of the scenario, the 95 % interval half-width of the mean final metric over orders
  (t interval of the order means: scipy.stats.t) and of every task's position slope (scipy.stats.linregress,
  t interval with n - 2 degrees of freedom) are at most X, or N orders ran. A batch is a replicate of the
  balanced (Williams) design of pclsim.study.orders, relabelled at random, where B is a multiple of its size
  and no earlier order repeats; otherwise a uniform sample.

`replay(sc, observe)` recomputes every decision from the stored results: round k's orders depend only on the
seed and the values of rounds 0..k-1, so a resumed sweep proposes the same orders and skips the finished runs
(pclsim.runner.sweep). Its log rows are design.parquet (pclsim.results.schema.DESIGN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .orders import OrderDesign, _balanced_base, register_order_design, williams_design
from .scenario_checks import check_int, fail

__all__ = ["is_adaptive", "design_params", "replay", "Plan", "additive_fit", "extreme_assignment", "neighbours",
           "RIDGE", "ELITE"]

RIDGE = 1e-3  # ridge penalty of the additive task x position model (values are fractions, ~1)
ELITE = 3  # most extreme orders whose neighbours a search round proposes
DEFAULT_BATCH = 10


def _metric_check(src, key, v):
    from ..core.metric_registry import METRICS

    if not isinstance(v, str) or v not in METRICS:
        fail(src, key, f"unknown metric {v!r} (valid: {', '.join(METRICS)})")
    return v


def design_params(sc: dict) -> tuple[str, dict] | tuple[None, None]:
    """("search" | "sample_auto", params with every default resolved against the scenario) of an adaptive
    `orders`, else (None, None)."""
    o = sc.get("orders")
    if not isinstance(o, dict):
        return None, None
    if "search" in o:
        p = {**ORDER_SEARCH.options, **o}
        p["strategy"] = p["strategy"] or sc["strategies"][0]
        p["memory_size"] = p["memory_size"] or sc["memory_sizes"][0]
        p["batch"] = p["batch"] or min(DEFAULT_BATCH, p["budget"])
        return "search", p
    if o.get("sample") == "auto":
        p = {**_SAMPLE_AUTO, **o}
        tasks = sc["dataset"]["tasks"]
        base = _balanced_base(tasks) if tasks else DEFAULT_BATCH
        p["batch"] = p["batch"] or (base if base <= p["max"] else min(DEFAULT_BATCH, p["max"]))
        return "sample_auto", p
    return None, None


def is_adaptive(sc: dict) -> bool:
    """Whether the scenario's orders are decided in rounds from results (search, sample: auto)."""
    return design_params(sc)[0] is not None


# ----------------------------------------------------------------------------- building blocks

def additive_fit(orders: list[tuple], values: np.ndarray, tasks: tuple) -> np.ndarray:
    """beta (T, T): ridge least squares of values (n,) on one-hot (task, position) columns of the orders,
    after removing their mean; returns beta[t, p] (the mean goes into no cell: only differences matter)."""
    T = len(tasks)
    ix = {t: i for i, t in enumerate(tasks)}
    X = np.zeros((len(orders), T * T))
    for r, o in enumerate(orders):
        for p, t in enumerate(o):
            X[r, ix[t] * T + p] = 1.0
    y = np.asarray(values, float) - float(np.mean(values))
    A = np.vstack([X, math.sqrt(RIDGE) * np.eye(T * T)])
    b = np.concatenate([y, np.zeros(T * T)])
    return np.linalg.lstsq(A, b, rcond=None)[0].reshape(T, T)


def extreme_assignment(beta: np.ndarray, tasks: tuple, worst: bool) -> tuple:
    """The order minimising (worst) or maximising (best) sum_t beta[t, position of t]: an assignment problem
    (scipy.optimize.linear_sum_assignment; rows tasks, columns positions)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(beta if worst else -beta)
    out = [None] * len(tasks)
    for r, c in zip(rows, cols):
        out[c] = tasks[r]
    return tuple(out)


def neighbours(order: tuple) -> list[tuple]:
    """Every swap (two positions exchanged) and insertion (one task moved elsewhere) neighbour, distinct,
    the order itself left out, in a fixed order."""
    o = list(order)
    n = len(o)
    out, seen = [], {tuple(o)}
    for i in range(n):
        for j in range(i + 1, n):
            x = o.copy()
            x[i], x[j] = x[j], x[i]
            if tuple(x) not in seen:
                seen.add(tuple(x))
                out.append(tuple(x))
    for i in range(n):
        rest = o[:i] + o[i + 1:]
        for j in range(n):
            if j != i:
                x = tuple(rest[:j] + [o[i]] + rest[j:])
                if x not in seen:
                    seen.add(x)
                    out.append(x)
    return out


def _uniform(tasks: tuple, n: int, rng, seen: set) -> list[tuple]:
    """n distinct uniform random orders not in seen (fewer when fewer are left)."""
    out = []
    left = math.factorial(len(tasks)) - len(seen)
    while len(out) < min(n, left):
        p = tuple(tasks[i] for i in rng.permutation(len(tasks)))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _balanced_batch(tasks: tuple, n: int, rng, seen: set) -> list[tuple] | None:
    """n orders made of relabelled Williams designs that repeat no order of seen; None when n is not a
    multiple of the design or no such relabelling is found in 200 draws."""
    design = williams_design(len(tasks))
    if n % len(design):
        return None
    out: list[tuple] = []
    for _ in range(n // len(design)):
        for _try in range(200):
            lab = rng.permutation(len(tasks))
            rep = [tuple(tasks[i] for i in lab[row]) for row in design]
            if not seen.intersection(rep) and not set(out).intersection(rep):
                break
        else:
            return None
        out += rep
    seen.update(out)
    return out


# ----------------------------------------------------------------------------- the rounds

@dataclass
class Plan:
    """What the stored results decide. rounds: the orders each round added, in order (a round's last entry
    may still be running); finished: the design stopped (no round left to run); stop: why; log: the rows
    of design.parquet (pclsim.results.schema.DESIGN)."""

    design: str
    rounds: list[list[tuple]] = field(default_factory=list)
    finished: bool = False
    stop: str = ""
    log: list[dict] = field(default_factory=list)

    @property
    def orders(self) -> list[tuple]:
        return [o for r in self.rounds for o in r]


Observe = Callable[[list[tuple]], "dict | None"]
# observe(orders) -> {order: {(strategy, memory_size): {"final": float, "tasks": {task: float}}}} over the
# scenario's seeds (means), for the design's metric; None while any run of those orders is unfinished.


def _log(design, rnd, kind, *, order=None, role="", strategy="", memory_size=0, metric="", quantity="", task=None,
         value=float("nan"), ci=float("nan"), n=0, note="") -> dict:
    return {"design": design, "round": int(rnd), "kind": kind, "order": order, "role": role, "strategy": strategy,
            "memory_size": int(memory_size), "metric": metric, "quantity": quantity, "task": task,
            "value": float(value), "ci_half_width": float(ci), "n": int(n), "note": note}


def replay(sc: dict, observe: Observe) -> Plan:
    """Every decision of the scenario's adaptive design from the stored results (module docstring).

    Stops at the first round whose runs are not all finished (the sweep runs it, then calls again), or when
    the design is done (Plan.finished). Raises ValueError for a scenario that is not adaptive."""
    kind, p = design_params(sc)
    if kind == "search":
        return _search(sc, p, observe)
    if kind == "sample_auto":
        return _sample_auto(sc, p, observe)
    raise ValueError("the scenario's orders are not an adaptive design")


def _sep():
    from ..results.schema import ORDER_SEPARATOR

    return ORDER_SEPARATOR


def _search(sc, p, observe) -> Plan:
    tasks = tuple(sc["dataset"]["tasks"])
    worst = p["search"] == "worst"
    sign = 1.0 if worst else -1.0  # minimise sign * value
    key = (p["strategy"], int(p["memory_size"]))
    plan = Plan("search")
    sep = _sep()
    rng0 = np.random.default_rng([p["seed"], 0])
    evaluated: list[tuple] = []
    first = _uniform(tasks, min(p["batch"], p["budget"]), rng0, set())
    rounds = [first]
    uniform = []
    if p["uniform"]:
        uniform = _uniform(tasks, p["budget"], np.random.default_rng([p["seed"], 1]), set())
    plan.rounds.append(first + [o for o in uniform if o not in set(first)])
    values: dict[tuple, float] = {}
    best_so_far = math.inf
    for k in range(10 ** 6):
        obs = observe(plan.orders)
        if obs is None:
            return plan
        for o in rounds[k]:
            v = obs[o][key]["final"]
            values[o] = v
            evaluated.append(o)
            best_so_far = min(best_so_far, sign * v)
            plan.log.append(_log("search", k, "order", order=sep.join(o), role="search", strategy=key[0],
                                 memory_size=key[1], metric=p["metric"], quantity="final_mean", value=v,
                                 n=len(evaluated), note=f"{p['search']} so far {sign * best_so_far:.6g}"))
        if k == 0:
            for o in uniform:
                plan.log.append(_log("search", 0, "order", order=sep.join(o), role="uniform", strategy=key[0],
                                     memory_size=key[1], metric=p["metric"], quantity="final_mean",
                                     value=obs[o][key]["final"], note="uniform sample of the same budget"))
        left = p["budget"] - len(evaluated)
        if left <= 0 or len(evaluated) >= math.factorial(len(tasks)):
            plan.finished = True
            plan.stop = f"budget of {p['budget']} orders evaluated"
            break
        nxt = _search_round(tasks, evaluated, values, sign, min(p["batch"], left),
                            np.random.default_rng([p["seed"], 2, k]))
        if not nxt:
            plan.finished, plan.stop = True, "no unevaluated order left"
            break
        rounds.append(nxt)
        done = set(plan.orders)
        plan.rounds.append([o for o in nxt if o not in done])  # an order of the uniform sample runs once
    ext = min(evaluated, key=lambda o: (sign * values[o], sep.join(o)))
    plan.log.append(_log("search", len(rounds) - 1, "result", order=sep.join(ext), role="search", strategy=key[0],
                         memory_size=key[1], metric=p["metric"], quantity="final_mean", value=values[ext],
                         n=len(evaluated), note=f"most extreme ({p['search']}) order found; {plan.stop}"))
    if uniform:
        uv = {o: observe(uniform)[o][key]["final"] for o in uniform}
        for label, o in (("uniform best", max(uv, key=uv.get)), ("uniform worst", min(uv, key=uv.get))):
            plan.log.append(_log("search", 0, "result", order=sep.join(o), role="uniform", strategy=key[0],
                                 memory_size=key[1], metric=p["metric"], quantity="final_mean", value=uv[o],
                                 n=len(uniform), note=label))
    return plan


def _search_round(tasks, evaluated, values, sign, n, rng) -> list[tuple]:
    seen = set(evaluated)
    y = np.array([sign * values[o] for o in evaluated])
    beta = additive_fit(evaluated, y, tasks)
    out: list[tuple] = []
    a = extreme_assignment(beta, tasks, worst=True)  # minimises sign * value
    if a not in seen:
        out.append(a)
        seen.add(a)
    elite = sorted(evaluated, key=lambda o: (sign * values[o], " ".join(o)))[:ELITE]
    cand = []
    for e in elite:
        cand += [c for c in neighbours(e) if c not in seen and c not in cand]
    if cand:
        pred = np.array([sum(beta[tasks.index(t), i] for i, t in enumerate(c)) for c in cand])
        ranked = [cand[i] for i in np.argsort(pred, kind="stable")]
        n_explore = (n - len(out)) // 4
        greedy = ranked[: max(0, n - len(out) - n_explore)]
        out += greedy
        rest = ranked[len(greedy):]
        if rest and n_explore:
            out += [rest[i] for i in sorted(rng.choice(len(rest), min(n_explore, len(rest)), replace=False))]
    seen.update(out)
    if len(out) < n:  # the neighbourhood is used up: fresh random orders
        out += _uniform(tasks, n - len(out), rng, seen)
    return out[:n]


def _half_widths(obs: dict, orders: list[tuple], key, tasks) -> dict:
    """{("final_mean", None): h, ("position_slope", task): h}: 95 % t-interval half-widths (NaN: too few)."""
    from scipy import stats

    fin = np.array([obs[o][key]["final"] for o in orders], float)
    fin = fin[np.isfinite(fin)]
    out = {}
    n = len(fin)
    out[("final_mean", None)] = (stats.t.ppf(0.975, n - 1) * fin.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    for t in tasks:
        x = np.array([o.index(t) for o in orders], float)
        y = np.array([obs[o][key]["tasks"].get(t, np.nan) for o in orders], float)
        ok = np.isfinite(y)
        if ok.sum() > 2 and np.ptp(x[ok]) > 0:
            r = stats.linregress(x[ok], y[ok])
            out[("position_slope", t)] = stats.t.ppf(0.975, ok.sum() - 2) * r.stderr
        else:
            out[("position_slope", t)] = math.nan
    return out


def _sample_auto(sc, p, observe) -> Plan:
    tasks = tuple(sc["dataset"]["tasks"])
    plan = Plan("sample_auto")
    sep = _sep()
    seen: set = set()
    keys = [(s, int(m)) for s in sc["strategies"] for m in sc["memory_sizes"]]
    total = min(p["max"], math.factorial(len(tasks)))
    for k in range(10 ** 6):
        rng = np.random.default_rng([p["seed"], k])
        n = min(p["batch"], total - len(plan.orders))
        batch = _balanced_batch(tasks, n, rng, seen) or _uniform(tasks, n, rng, seen)
        plan.rounds.append(batch)
        obs = observe(plan.orders)
        if obs is None:
            return plan
        orders = plan.orders
        widest, widest_at = -math.inf, ""
        for key in keys:
            hw = _half_widths(obs, orders, key, tasks)
            for (q, t), h in hw.items():
                plan.log.append(_log("sample_auto", k, "check", strategy=key[0], memory_size=key[1],
                                     metric=p["metric"], quantity=q, task=t, ci=h, n=len(orders),
                                     value=float(np.mean([obs[o][key]["final"] for o in orders])) if t is None
                                     else math.nan, note="balanced batch" if len(batch) and
                                     len(batch) % len(williams_design(len(tasks))) == 0 else "uniform batch"))
                h = math.inf if not np.isfinite(h) else h
                if h > widest:
                    widest, widest_at = h, f"{key[0]} M={key[1]} {q}" + (f" of {t}" if t else "")
        if widest <= p["precision"]:
            plan.finished = True
            plan.stop = (f"precision reached: every 95 % half-width <= {p['precision']:g} after {len(orders)} orders "
                         f"(widest {widest:.4g}: {widest_at})")
        elif len(orders) >= total:
            plan.finished = True
            plan.stop = (f"max of {total} orders reached; widest 95 % half-width {widest:.4g} ({widest_at}) > "
                         f"precision {p['precision']:g}")
        if plan.finished:
            plan.log.append(_log("sample_auto", k, "stop", metric=p["metric"], ci=widest, n=len(orders),
                                 note=plan.stop))
            return plan
    return plan  # pragma: no cover


# ----------------------------------------------------------------------------- registration and checks

def _search_check(tasks, params, src):
    if params["search"] not in ("worst", "best"):
        fail(src, "orders.search", f"expected worst or best, got {params['search']!r}")
    check_int(src, "orders.budget", params["budget"], lo=1)
    if params["budget"] > math.factorial(len(tasks)):
        fail(src, "orders.budget", f"{params['budget']} exceeds the {math.factorial(len(tasks))} possible orders "
                                   "(use orders: all)")
    _metric_check(src, "orders.metric", params["metric"])
    check_int(src, "orders.seed", params["seed"], lo=0)
    if params["batch"] is not None:
        check_int(src, "orders.batch", params["batch"], lo=1)
    if not isinstance(params["uniform"], bool):
        fail(src, "orders.uniform", f"expected true or false, got {params['uniform']!r}")


def _search_scenario_check(sc, params, src):
    if params["strategy"] is not None and params["strategy"] not in sc["strategies"]:
        fail(src, "orders.strategy", f"{params['strategy']!r} is not one of the scenario's strategies "
                                     f"({', '.join(sc['strategies'])})")
    if params["memory_size"] is not None and params["memory_size"] not in sc["memory_sizes"]:
        fail(src, "orders.memory_size", f"{params['memory_size']!r} is not one of the scenario's memory_sizes "
                                        f"({', '.join(map(str, sc['memory_sizes']))})")


def _search_expand(tasks, params):
    """Round 0 (what validate and the preflight see): the search's first batch and the uniform sample."""
    batch = params["batch"] or min(DEFAULT_BATCH, params["budget"])
    first = _uniform(tuple(tasks), min(batch, params["budget"]), np.random.default_rng([params["seed"], 0]), set())
    uni = _uniform(tuple(tasks), params["budget"], np.random.default_rng([params["seed"], 1]), set()) \
        if params["uniform"] else []
    return first + [o for o in uni if o not in set(first)]


def _search_describe(p, sc=None):
    if sc is not None:
        p = design_params(sc)[1]
    return (f"an adaptive search for the {p['search']} order (final mean of {p['metric']}, "
            f"{p['strategy'] or 'the first strategy'} at M={p['memory_size'] or 'the first memory size'}): at most "
            f"{p['budget']} orders in rounds of {p['batch'] or min(DEFAULT_BATCH, p['budget'])} (round 0 uniform; then "
            f"the additive task x position model's extreme order and swap / insertion neighbours of the {ELITE} most "
            f"extreme orders), seed {p['seed']}"
            + (f", next to a uniform sample of {p['budget']} orders" if p["uniform"] else ""))


ORDER_SEARCH = register_order_design(OrderDesign(
    "search", _search_expand, _search_describe,
    options={"budget": None, "metric": "image_auroc", "strategy": None, "memory_size": None, "seed": 0,
             "batch": None, "uniform": True},
    check=_search_check, scenario_check=_search_scenario_check, integer=False))


_SAMPLE_AUTO = {"seed": 0, "precision": None, "max": None, "batch": None, "metric": "image_auroc"}


def sample_auto_check(tasks, params, src):
    """The checks of `{sample: auto, precision: X, max: N, ...}` (called by the sample design's check)."""
    prec = params["precision"]
    if isinstance(prec, bool) or not isinstance(prec, (int, float)) or not prec > 0:
        fail(src, "orders.precision", f"sample: auto needs a precision > 0 (a 95 % half-width in the metric's "
                                      f"units, e.g. 0.005), got {prec!r}")
    check_int(src, "orders.max", params["max"], lo=2)
    if params["batch"] is not None:
        check_int(src, "orders.batch", params["batch"], lo=2)
    _metric_check(src, "orders.metric", params["metric"])


def sample_auto_expand(tasks, params):
    """Round 0 of sample: auto (what validate and the preflight see)."""
    p = {**_SAMPLE_AUTO, **params}
    base = _balanced_base(tasks)
    n = p["batch"] or (base if base <= p["max"] else min(DEFAULT_BATCH, p["max"]))
    n = min(n, p["max"], math.factorial(len(tasks)))
    rng = np.random.default_rng([p["seed"], 0])
    return _balanced_batch(tuple(tasks), n, rng, set()) or _uniform(tuple(tasks), n, rng, set())


def sample_auto_describe(p):
    return (f"sampled in rounds (balanced batches where the batch is a multiple of the Williams design) until "
            f"every 95 % half-width (mean final {p['metric']} over orders, each task's position slope, for every "
            f"strategy and memory size) is <= {p['precision']:g}, or {p['max']} orders ran; seed {p['seed']}")
