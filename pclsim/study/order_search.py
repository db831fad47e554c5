"""The order search of `orders: {search: worst | best, budget: N, ...}` (pclsim.study.adaptive explains the
design): an additive task x position model of the evaluated orders, its extreme order found as an assignment,
and swap / insertion neighbours of the most extreme orders found so far, screened by the model. The model's
cells come from the tasks' own final values (`cell_table`: an order's final mean is the mean of its tasks'
final values, each observed at its step), or, without them, from a ridge fit to the orders' final means
(`additive_fit`).

Why this search: an order's final mean is largely a sum of per-task position effects (the headline stream's
arrival steps explain about a fifth of its variance, and the rest is mostly adjacency and noise), so a
model fitted on a few dozen orders points to the extreme assignment directly, and local moves around the
best orders found pick up what the additive model misses. benchmarks/bench_order_designs.py measures it
against uniform sampling of the same budget on all 720 orders of the headline stream.
"""

from __future__ import annotations

import math

import numpy as np

from .order_rounds import DEFAULT_BATCH, SEP, Plan, balanced_batch, log_row, metric_check, uniform_batch
from .orders import OrderDesign, register_order_design, williams_design
from .scenario_checks import check_int, fail

__all__ = ["additive_fit", "cell_table", "extreme_assignment", "neighbours", "search", "resolve_params", "ORDER_SEARCH", "RIDGE",
           "CELL_RIDGE", "ELITE"]

RIDGE = 1e-3  # ridge penalty of a task's position slope in the additive model (values are fractions, ~1)
CELL_RIDGE = 1e-2  # ridge penalty of a free (task, position) cell (pclsim.study.order_search.additive_fit)
ELITE = 3  # most extreme orders whose neighbours a search round proposes


def resolve_params(sc: dict, o: dict) -> dict:
    """The search's options with their defaults resolved against the scenario (first strategy, first memory
    size, batch min(10, budget))."""
    p = {**ORDER_SEARCH.options, **o}
    p["strategy"] = p["strategy"] or sc["strategies"][0]
    p["memory_size"] = p["memory_size"] or sc["memory_sizes"][0]
    p["batch"] = p["batch"] or min(DEFAULT_BATCH, p["budget"])
    return p


def additive_fit(orders: list[tuple], values: np.ndarray, tasks: tuple) -> np.ndarray:
    """beta (T, T): a ridge fit of values (n,) centred on their mean, beta[t, p] = slope[t] * (p - pbar) +
    cell[t, p]: one linear position slope per task (penalty RIDGE) plus a free (task, position) cell (penalty
    CELL_RIDGE), numpy least squares on the stacked system. With few orders the slopes carry the fit (T
    unknowns); the cells take over as the orders pin them down (a mean over seeds counts as one value).
    Returns beta[t, p] (the mean goes into no cell: only differences matter)."""
    T = len(tasks)
    ix = {t: i for i, t in enumerate(tasks)}
    centre = np.arange(T) - (T - 1) / 2
    X = np.zeros((len(orders), T + T * T))
    for r, o in enumerate(orders):
        for p, t in enumerate(o):
            X[r, ix[t]] = centre[p]
            X[r, T + ix[t] * T + p] = 1.0
    y = np.asarray(values, float) - float(np.mean(values))
    pen = np.concatenate([np.full(T, math.sqrt(RIDGE)), np.full(T * T, math.sqrt(CELL_RIDGE))])
    A = np.vstack([X, np.diag(pen)])
    b = np.concatenate([y, np.zeros(len(pen))])
    coef = np.linalg.lstsq(A, b, rcond=None)[0]
    return coef[:T, None] * centre[None, :] + coef[T:].reshape(T, T)


def cell_table(orders: list[tuple], task_values: dict, tasks: tuple) -> np.ndarray | None:
    """beta (T, T) from the tasks' own final values: beta[t, p] = mean final value of task t over the evaluated
    orders that put it at step p, divided by T (so that sum_t beta[t, pos t] is the order's final mean when a
    task's final value depends on its step alone); a cell no order observed gets the task's linear fit on the
    step (numpy least squares; its mean with one observed step). task_values: {order: {task: value}}; NaN
    values are left out (a task without the metric adds nothing). None when no value is finite."""
    T = len(tasks)
    ix = {t: i for i, t in enumerate(tasks)}
    total, count = np.zeros((T, T)), np.zeros((T, T))
    for o in orders:
        for p, t in enumerate(o):
            v = task_values.get(o, {}).get(t, np.nan)
            if np.isfinite(v):
                total[ix[t], p] += v
                count[ix[t], p] += 1
    if not count.any():
        return None
    beta = np.zeros((T, T))
    steps = np.arange(T, dtype=float)
    for i in range(T):
        seen = count[i] > 0
        if not seen.any():
            continue
        mean = total[i, seen] / count[i, seen]
        if seen.sum() > 1:
            slope, icept = np.polyfit(steps[seen], mean, 1, w=np.sqrt(count[i, seen]))
            beta[i] = icept + slope * steps
        else:
            beta[i] = mean[0]
        beta[i, seen] = mean
    return beta / T


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


def search(sc: dict, p: dict, observe) -> Plan:
    """The search's rounds from the stored results (pclsim.study.adaptive.replay calls it with resolved params)."""
    tasks = tuple(sc["dataset"]["tasks"])
    worst = p["search"] == "worst"
    sign = 1.0 if worst else -1.0  # minimise sign * value
    key = (p["strategy"], int(p["memory_size"]))
    plan = Plan("search")
    sep = SEP
    rng0 = np.random.default_rng([p["seed"], 0])
    evaluated: list[tuple] = []
    first = _first_round(tasks, min(p["batch"], p["budget"]), rng0)
    rounds = [first]
    uniform = []
    if p["uniform"]:
        uniform = uniform_batch(tasks, p["budget"], np.random.default_rng([p["seed"], 1]), set())
    plan.rounds.append(first + [o for o in uniform if o not in set(first)])
    values: dict[tuple, float] = {}
    task_values: dict[tuple, dict] = {}
    best_so_far = math.inf
    for k in range(10 ** 6):
        obs = observe(plan.orders)
        if obs is None:
            return plan
        for o in rounds[k]:
            v = obs[o][key]["final"]
            values[o] = v
            task_values[o] = obs[o][key].get("tasks", {})
            evaluated.append(o)
            best_so_far = min(best_so_far, sign * v)
            plan.log.append(log_row("search", k, "order", order=sep.join(o), role="search", strategy=key[0],
                                    memory_size=key[1], metric=p["metric"], quantity="final_mean", value=v,
                                    n=len(evaluated), note=f"{p['search']} so far {sign * best_so_far:.6g}"))
        if k == 0:
            for o in uniform:
                plan.log.append(log_row("search", 0, "order", order=sep.join(o), role="uniform", strategy=key[0],
                                        memory_size=key[1], metric=p["metric"], quantity="final_mean",
                                        value=obs[o][key]["final"], note="uniform sample of the same budget"))
        left = p["budget"] - len(evaluated)
        if left <= 0 or len(evaluated) >= math.factorial(len(tasks)):
            plan.finished = True
            plan.stop = f"budget of {p['budget']} orders evaluated"
            break
        nxt = _search_round(tasks, evaluated, values, task_values, sign, min(p["batch"], left),
                            np.random.default_rng([p["seed"], 2, k]))
        if not nxt:
            plan.finished, plan.stop = True, "no unevaluated order left"
            break
        rounds.append(nxt)
        done = set(plan.orders)
        plan.rounds.append([o for o in nxt if o not in done])  # an order of the uniform sample runs once
    ext = min(evaluated, key=lambda o: (sign * values[o], sep.join(o)))
    plan.log.append(log_row("search", len(rounds) - 1, "result", order=sep.join(ext), role="search", strategy=key[0],
                            memory_size=key[1], metric=p["metric"], quantity="final_mean", value=values[ext],
                            n=len(evaluated), note=f"most extreme ({p['search']}) order found; {plan.stop}"))
    if uniform:
        uv = {o: observe(uniform)[o][key]["final"] for o in uniform}
        for label, o in (("uniform best", max(uv, key=uv.get)), ("uniform worst", min(uv, key=uv.get))):
            plan.log.append(log_row("search", 0, "result", order=sep.join(o), role="uniform", strategy=key[0],
                                    memory_size=key[1], metric=p["metric"], quantity="final_mean", value=uv[o],
                                    n=len(uniform), note=label))
    return plan


def _first_round(tasks: tuple, n: int, rng) -> list[tuple]:
    """Round 0: as many whole relabelled Williams designs as fit in n (every task once at every step per
    design: the model's slopes and cells are observed evenly), the rest uniform."""
    base = len(williams_design(len(tasks)))
    seen: set = set()
    out = balanced_batch(tasks, n // base * base, rng, seen) if n >= base else None
    out = out or []
    return out + uniform_batch(tasks, n - len(out), rng, seen | set(out))


def _search_round(tasks, evaluated, values, task_values, sign, n, rng) -> list[tuple]:
    seen = set(evaluated)
    cells = cell_table(evaluated, task_values, tasks)
    if cells is not None:  # the tasks' own final values: every step of every task seen after one Williams design
        beta = sign * cells
    else:  # only the orders' final means: the additive model fitted to them
        beta = additive_fit(evaluated, np.array([sign * values[o] for o in evaluated]), tasks)
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
        out += uniform_batch(tasks, n - len(out), rng, seen)
    return out[:n]


def _search_check(tasks, params, src):
    if params["search"] not in ("worst", "best"):
        fail(src, "orders.search", f"expected worst or best, got {params['search']!r}")
    check_int(src, "orders.budget", params["budget"], lo=1)
    if params["budget"] > math.factorial(len(tasks)):
        fail(src, "orders.budget", f"{params['budget']} exceeds the {math.factorial(len(tasks))} possible orders "
                                   "(use orders: all)")
    metric_check(src, "orders.metric", params["metric"])
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
    first = _first_round(tuple(tasks), min(batch, params["budget"]), np.random.default_rng([params["seed"], 0]))
    uni = uniform_batch(tuple(tasks), params["budget"], np.random.default_rng([params["seed"], 1]), set()) \
        if params["uniform"] else []
    return first + [o for o in uni if o not in set(first)]


def _search_describe(p):
    return (f"an adaptive search for the {p['search']} order (final mean of {p['metric']}, "
            f"{p['strategy'] or 'the first strategy'} at M={p['memory_size'] or 'the first memory size'}): "
            f"at most {p['budget']} orders in rounds of {p['batch'] or min(DEFAULT_BATCH, p['budget'])} "
            "(round 0 balanced where the batch holds a Williams design; then the additive task x position "
            f"model's extreme order and swap / insertion neighbours of the {ELITE} most extreme orders), "
            f"seed {p['seed']}" + (f", next to a uniform sample of {p['budget']} orders" if p["uniform"] else ""))


ORDER_SEARCH = register_order_design(OrderDesign(
    "search", _search_expand, _search_describe,
    options={"budget": None, "metric": "image_auroc", "strategy": None, "memory_size": None, "seed": 0,
             "batch": None, "uniform": True},
    check=_search_check, scenario_check=_search_scenario_check, integer=False,
    summary=lambda sc, p: (2 * p["budget"] if p["uniform"] else p["budget"],
                           f"at most {2 * p['budget'] if p['uniform'] else p['budget']} (adaptive): "
                           + _search_describe(resolve_params(sc, p)))))


