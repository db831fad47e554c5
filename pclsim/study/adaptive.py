"""Adaptive order designs: orders decided in rounds, each round from the results of the rounds before.

Two designs (registered with pclsim.study.orders, written in a scenario's `orders`):

- `{search: worst | best, budget: N, metric: M, strategy: S, memory_size: K, seed: s, batch: B, uniform: true}`:
  a search over permutations for the order with the lowest (worst) or highest (best) final mean of metric M
  (mean over tasks of a[T-1][j], then over the scenario's seeds) of strategy S at memory size K. It evaluates
  at most N distinct orders, B per round. Round 0: as many relabelled Williams designs as fit in B (the
  rest uniform). Every later round builds an additive model, final mean ~ sum_t beta[t, position of t],
  from the tasks' own final values at their steps (order_search.cell_table; without them, a ridge fit to
  the orders' final means: order_search.additive_fit), and proposes (1) the order the
  model rates most extreme, found exactly as an assignment of tasks to positions
  (scipy.optimize.linear_sum_assignment), then (2) swap and insertion neighbours of the ELITE most extreme
  orders found so far, those the model rates most extreme first, a quarter of the batch drawn at random
  among them (exploration). `uniform: true` also runs a seeded uniform sample of N orders in round 0, the
  comparison the search must beat (the search never reads it). Orders are evaluated for every strategy and
  memory size of the scenario; the objective reads one of them. The search itself: pclsim.study.order_search.
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

import numpy as np

from . import order_search
from .order_rounds import (DEFAULT_BATCH, SEP, Observe, Plan, balanced_batch, log_row, metric_check,
                           uniform_batch)
from .orders import SAMPLE_AUTO, _balanced_base, williams_design
from .scenario_checks import check_int, fail

__all__ = ["is_adaptive", "design_params", "entries", "replay", "Plan", "sample_auto_check", "sample_auto_expand",
           "sample_auto_describe"]


def design_params(sc: dict) -> tuple[str, dict] | tuple[None, None]:
    """("search" | "sample_auto", params with every default resolved against the scenario) of an adaptive
    `orders` mapping, else (None, None). (A list of designs: `entries`.)"""
    o = sc.get("orders")
    if not isinstance(o, dict):
        return None, None
    if "search" in o:
        return "search", order_search.resolve_params(sc, o)
    if o.get("sample") == "auto":
        p = {**_SAMPLE_AUTO, **o}
        tasks = sc["dataset"]["tasks"]
        base = _balanced_base(tasks) if tasks else DEFAULT_BATCH
        p["batch"] = p["batch"] or (base if base <= p["max"] else min(DEFAULT_BATCH, p["max"]))
        return "sample_auto", p
    return None, None


def entries(sc: dict) -> list[dict]:
    """The scenario once per design of its `orders` (a list of design mappings runs them side by side)."""
    o = sc.get("orders")
    if isinstance(o, list) and o and all(isinstance(x, dict) for x in o):
        return [dict(sc, orders=x) for x in o]
    return [sc]


def is_adaptive(sc: dict) -> bool:
    """Whether the scenario's orders are decided in rounds from results (search, sample: auto, or a list of
    designs holding one)."""
    return any(design_params(e)[0] is not None for e in entries(sc))


# ----------------------------------------------------------------------------- building blocks

def replay(sc: dict, observe: Observe) -> Plan:
    """Every decision of the scenario's adaptive design from the stored results (module docstring).

    observe(orders, metric): the stored values (pclsim.study.order_rounds.Observe). Stops at the first round
    whose runs are not all finished (the sweep runs it, then calls again), or when the design is done
    (Plan.finished). A list of designs runs side by side: round k holds every design's k-th round (an order
    two designs share runs once); a fixed design (e.g. {balanced: N}) is one round. Raises ValueError for a
    scenario that is not adaptive."""
    if not is_adaptive(sc):
        raise ValueError("the scenario's orders are not an adaptive design")
    plans = []
    for e in entries(sc):
        kind, p = design_params(e)
        if kind == "search":
            plans.append(order_search.search(e, p, lambda orders, m=p["metric"]: observe(orders, m)))
        elif kind == "sample_auto":
            plans.append(_sample_auto(e, p, lambda orders, m=p["metric"]: observe(orders, m)))
        else:
            from .orders import expand_orders

            plans.append(Plan("fixed", rounds=[expand_orders(e)], finished=True, stop="a fixed design"))
    if len(plans) == 1:
        return plans[0]
    out = Plan("+".join(p.design for p in plans), finished=all(p.finished for p in plans),
               stop="; ".join(f"{p.design}: {p.stop}" for p in plans if p.stop))
    for k in range(max(len(p.rounds) for p in plans)):
        done = set(out.orders)
        new = []
        for p in plans:
            new += [o for o in (p.rounds[k] if k < len(p.rounds) else []) if o not in done and o not in new]
        out.rounds.append(new)
    out.log = [r for p in plans for r in p.log]
    return out


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
    sep = SEP
    seen: set = set()
    keys = [(s, int(m)) for s in sc["strategies"] for m in sc["memory_sizes"]]
    total = min(p["max"], math.factorial(len(tasks)))
    for k in range(10 ** 6):
        rng = np.random.default_rng([p["seed"], k])
        n = min(p["batch"], total - len(plan.orders))
        batch = balanced_batch(tasks, n, rng, seen) or uniform_batch(tasks, n, rng, seen)
        plan.rounds.append(batch)
        obs = observe(plan.orders)
        if obs is None:
            return plan
        orders = plan.orders
        plan.log += [log_row("sample_auto", k, "order", order=sep.join(o), role="sample", metric=p["metric"],
                             n=len(orders)) for o in batch]
        widest, widest_at = -math.inf, ""
        for key in keys:
            hw = _half_widths(obs, orders, key, tasks)
            for (q, t), h in hw.items():
                plan.log.append(log_row("sample_auto", k, "check", strategy=key[0], memory_size=key[1],
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
            plan.log.append(log_row("sample_auto", k, "stop", metric=p["metric"], ci=widest, n=len(orders),
                                    note=plan.stop))
            return plan
    return plan  # pragma: no cover


# ----------------------------------------------------------------------------- registration and checks

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
    metric_check(src, "orders.metric", params["metric"])


def sample_auto_expand(tasks, params):
    """Round 0 of sample: auto (what validate and the preflight see)."""
    p = {**_SAMPLE_AUTO, **params}
    base = _balanced_base(tasks)
    n = p["batch"] or (base if base <= p["max"] else min(DEFAULT_BATCH, p["max"]))
    n = min(n, p["max"], math.factorial(len(tasks)))
    rng = np.random.default_rng([p["seed"], 0])
    return balanced_batch(tuple(tasks), n, rng, set()) or uniform_batch(tuple(tasks), n, rng, set())


def sample_auto_describe(p):
    return (f"sampled in rounds (balanced batches where the batch is a multiple of the Williams design) until "
            f"every 95 % half-width (mean final {p['metric']} over orders, each task's position slope, for every "
            f"strategy and memory size) is <= {p['precision']:g}, or {p['max']} orders ran; seed {p['seed']}")



def _summary(sc, params):
    _, p = design_params(dict(sc, orders=params))
    return p["max"], f"at most {p['max']} (adaptive): " + sample_auto_describe(p)


SAMPLE_AUTO.update(check=sample_auto_check, expand=sample_auto_expand, describe=sample_auto_describe,
                   summary=_summary)
