"""A scenario's orders (the `orders` key): checking them, expanding them, and the difficulty-decided ones.

`orders` is all | an order design {name: N, option: value, ...} | easy_to_hard | hard_to_easy | a list
of orders (task lists or either keyword). easy_to_hard / hard_to_easy sort the tasks by their measured
single-task image AUROC (pclsim.analysis.statistics.measure_difficulty), known only once the features
exist. Order designs are a registry: `{sample: N, seed: S}` is the built-in one; a new design is one
`register_order_design(OrderDesign(...))` call, and `orders: {its_name: N}` accepts it from then on.

`{balanced: N, seed: S}` is a Williams design (E. J. Williams, "Experimental designs balanced for the
estimation of residual effects of treatments", Australian J. Sci. Res. A 2, 1949): a Latin square whose
first row is 0, 1, T-1, 2, T-2, ... and whose row i adds i (mod T); for odd T the square plus its mirror
image (rows reversed). Every task is then equally often at every position and every ordered pair of
distinct tasks is equally often adjacent (a before b): T orders, each pair once, for even T; 2T orders,
each pair twice, for odd T (`williams_design`; tests/study/test_order_designs.py counts both). N orders
are N / base replicates of the design, each relabelled by a seeded random permutation of the tasks (a
relabelling keeps both balances), drawn until no order repeats an earlier replicate's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ScenarioError
from .scenario_checks import check_int, fail

__all__ = ["DIFFICULTY_ORDERS", "needs_difficulty", "order_entries", "difficulty_order", "describe_orders",
           "check_orders", "expand_orders", "OrderDesign", "ORDER_DESIGNS", "register_order_design",
           "williams_design", "balanced_orders", "design_balance"]


DIFFICULTY_ORDERS = ("easy_to_hard", "hard_to_easy")


@dataclass(frozen=True)
class OrderDesign:
    """An order design, written in a scenario as `orders: {name: N, option: value, ...}`.

    name: the key that names it; options: its other keys with their defaults; expand(tasks, params) ->
    the orders (tuples of task names, distinct), where params holds `name` (N, an integer >= 1) and every
    option; check(tasks, params, src): extra checks of the values, failing through
    `scenario_checks.fail` with the key (optional); scenario_check(sc, params, src): the same against the
    rest of the scenario (its strategies, memory sizes); describe(params) -> how the orders are chosen, for
    `pclsim validate`; integer: whether the value of the design's own key is an integer N >= 1 (False: its
    `check` checks it); summary(sc, params): for adaptive designs (orders decided from results:
    pclsim.study.adaptive), the most orders they may run and how, for `pclsim validate` (None: use describe).
    Adaptive designs expand to their first round.
    """

    name: str
    expand: Callable[[tuple, dict], list]
    describe: Callable[[dict], str]
    options: dict = field(default_factory=dict)
    check: Callable | None = None
    scenario_check: Callable | None = None  # (sc, params, src): checks against the rest of the scenario
    integer: bool = True  # the design's own key is an integer N >= 1 (checked before `check`)
    summary: Callable | None = None  # (sc, params) -> (at most how many orders, how) for adaptive designs, or None


ORDER_DESIGNS: dict[str, OrderDesign] = {}


def register_order_design(design: OrderDesign) -> OrderDesign:
    """Add a design to the registry; ValueError when the name is taken or is a keyword of `orders`."""
    if design.name in ORDER_DESIGNS or design.name in DIFFICULTY_ORDERS + ("all",):
        raise ValueError(f"order design {design.name!r} is already registered or is a keyword of 'orders'")
    ORDER_DESIGNS[design.name] = design
    return design


def _design_of(o: dict, src: str = "<scenario>") -> tuple[OrderDesign, dict]:
    """(design, params with defaults filled) of a mapping `orders`; ScenarioError naming the key otherwise."""
    names = [k for k in o if k in ORDER_DESIGNS]
    if len(names) != 1:
        fail(src, "orders", f"expected one order design {{name: N, ...}} with name one of "
                            f"{', '.join(sorted(ORDER_DESIGNS))}; got keys {', '.join(map(str, o)) or 'none'}")
    design = ORDER_DESIGNS[names[0]]
    for k in o:
        if k != design.name and k not in design.options:
            fail(src, f"orders.{k}", f"unknown option of the {design.name} design (valid: "
                                     f"{', '.join(sorted(design.options)) or 'none'})")
    return design, {**design.options, **o}


def _sample_check(tasks, params, src):
    check_int(src, "orders.seed", params["seed"], lo=0)
    if params["sample"] == "auto":
        return SAMPLE_AUTO["check"](tasks, params, src)
    check_int(src, "orders.sample", params["sample"], lo=1)
    for k in ("precision", "max", "batch", "metric"):
        if params[k] != _SAMPLE_OPTIONS[k]:
            fail(src, f"orders.{k}", "only with sample: auto (a fixed sample of N orders has no stopping rule)")
    if params["sample"] > math.factorial(len(tasks)):
        fail(src, "orders.sample", f"{params['sample']} exceeds the {math.factorial(len(tasks))} possible orders")


def _sample_expand(tasks, params):
    if params["sample"] == "auto":
        return SAMPLE_AUTO["expand"](tasks, params)
    return uniform_batch(tuple(tasks), params["sample"], np.random.default_rng(params["seed"]), set())


def uniform_batch(tasks: tuple, n: int, rng, seen: set) -> list[tuple]:
    """n distinct uniform random orders not in seen, drawn with rng's permutations (fewer when fewer are left);
    adds them to seen."""
    out = []
    left = math.factorial(len(tasks)) - len(seen)
    while len(out) < min(n, left):
        p = tuple(tasks[i] for i in rng.permutation(len(tasks)))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


_SAMPLE_OPTIONS = {"seed": 0, "precision": None, "max": None, "batch": None, "metric": "image_auroc"}
# {sample: auto}'s check, expand, describe and summary: filled by pclsim.study.adaptive on import (which
# pclsim.study.scenario imports), so that this module does not import the adaptive designs
SAMPLE_AUTO: dict[str, Callable] = {}


def _sample_describe(p):
    if p["sample"] == "auto":
        return SAMPLE_AUTO["describe"](p)
    return f"a seeded sample of permutations (seed {p['seed']})"


register_order_design(OrderDesign(
    "sample", _sample_expand, _sample_describe, options=dict(_SAMPLE_OPTIONS), check=_sample_check, integer=False,
    summary=lambda sc, p: SAMPLE_AUTO["summary"](sc, p) if p["sample"] == "auto" else None))


def williams_design(n_tasks: int) -> np.ndarray:
    """The Williams design of n_tasks treatments (module docstring): (R, n_tasks) int64, row = an order of the
    task indices 0..n_tasks-1; R = n_tasks for even n_tasks, 2 n_tasks for odd (the square and its mirror).

    Every index appears R / n_tasks times in every column, and every ordered pair (a, b), a != b, appears
    R / n_tasks times as adjacent entries (a then b) of a row: the R (n_tasks - 1) adjacencies cover the
    n_tasks (n_tasks - 1) ordered pairs evenly, for even and odd n_tasks alike. Raises ValueError for
    n_tasks < 1.
    """
    if n_tasks < 1:
        raise ValueError(f"a design needs at least one task, got {n_tasks}")
    first, lo, hi = [0], 1, n_tasks - 1
    while len(first) < n_tasks:  # 0, 1, T-1, 2, T-2, ...
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    square = (np.asarray(first)[None, :] + np.arange(n_tasks)[:, None]) % n_tasks
    if n_tasks % 2 and n_tasks > 1:
        square = np.concatenate([square, square[:, ::-1]])
    return square.astype(np.int64)


def design_balance(orders, tasks) -> tuple[np.ndarray, np.ndarray]:
    """(positions, adjacent) counts of a list of orders over `tasks`: positions[i, p] = how many orders
    have tasks[i] at step p (T x T); adjacent[i, j] = how many have tasks[i] immediately before tasks[j]."""
    ix = {t: i for i, t in enumerate(tasks)}
    T = len(tasks)
    pos, adj = np.zeros((T, T), np.int64), np.zeros((T, T), np.int64)
    for o in orders:
        c = [ix[t] for t in o]
        pos[c, np.arange(len(c))] += 1
        np.add.at(adj, (c[:-1], c[1:]), 1)
    return pos, adj


def _balanced_base(tasks) -> int:
    return len(williams_design(len(tasks)))


def _balanced_check(tasks, params, src):
    check_int(src, "orders.seed", params["seed"], lo=0)
    n, base = params["balanced"], _balanced_base(tasks)
    if n % base:
        fail(src, "orders.balanced", f"{n} is not a multiple of {base}: a balanced design of {len(tasks)} tasks "
                                     f"has {base} orders ({'T' if len(tasks) % 2 == 0 else '2T'}, Williams); use "
                                     f"{', '.join(str(base * k) for k in (1, 2, 3))}, ...")
    if n > math.factorial(len(tasks)):
        fail(src, "orders.balanced", f"{n} exceeds the {math.factorial(len(tasks))} possible orders")


_RELABEL_TRIES = 10_000


def balanced_orders(tasks, n: int, seed: int = 0) -> list[tuple]:
    """n orders of `tasks`: n / base replicates of the Williams design (module docstring), replicate r being
    the design with its task indices relabelled by a permutation drawn from numpy's default_rng(seed); a
    relabelling that would repeat an order of an earlier replicate is redrawn. Every replicate, the first
    included, is relabelled, so the seed chooses which balanced design runs.

    Raises ValueError when n is not a multiple of the base size or no distinct replicate is found
    in _RELABEL_TRIES draws (only for tiny T, where n is close to T!)."""
    tasks = tuple(tasks)
    design = williams_design(len(tasks))
    if n % len(design):
        raise ValueError(f"{n} is not a multiple of the design's {len(design)} orders")
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(n // len(design)):
        for _try in range(_RELABEL_TRIES):
            lab = rng.permutation(len(tasks))
            rep = [tuple(tasks[i] for i in lab[row]) for row in design]
            if not seen.intersection(rep):
                break
        else:
            raise ValueError(f"no relabelling of the design gives orders distinct from the earlier replicates "
                             f"({len(out)} orders so far)")
        seen.update(rep)
        out += rep
    return out


def _balanced_describe(p):
    return (f"a balanced (Williams) design of {p['balanced']} orders: every task equally often at every position "
            f"and every ordered pair of tasks equally often adjacent; replicates relabelled with seed {p['seed']}")


register_order_design(OrderDesign(
    "balanced", lambda tasks, p: balanced_orders(tasks, p["balanced"], p["seed"]), _balanced_describe,
    options={"seed": 0}, check=_balanced_check))


def _design_list(o) -> bool:
    """Whether `orders` is a list of order designs ({name: N, ...} mappings), run side by side."""
    return isinstance(o, list) and bool(o) and all(isinstance(x, dict) for x in o)


def needs_difficulty(sc: dict) -> bool:
    """Whether the scenario's orders are decided by each task's measured difficulty (easy_to_hard, hard_to_easy)."""
    o = sc["orders"]
    return o in DIFFICULTY_ORDERS or (isinstance(o, list) and any(x in DIFFICULTY_ORDERS for x in o
                                                                  if isinstance(x, str)))


def order_entries(sc: dict) -> list:
    """The orders as listed (a difficulty keyword stands for its order); 'all' and sample expanded."""
    o = sc["orders"]
    if o in DIFFICULTY_ORDERS:
        return [o]
    if isinstance(o, list) and not _design_list(o):
        return [x if isinstance(x, str) else tuple(x) for x in o]
    return expand_orders(sc)


def difficulty_order(tasks: list[str] | tuple[str, ...], difficulty: dict[str, float], kind: str) -> tuple[str, ...]:
    """Tasks sorted by measured difficulty: easy_to_hard = highest single-task image AUROC first.

    difficulty: {task: single-task PatchCore image AUROC} (see statistics.measure_difficulty).
    Ties keep the scenario's task order; hard_to_easy is the exact reverse of easy_to_hard.
    Raises ScenarioError when a task has no (finite) difficulty.
    """
    missing = [t for t in tasks if t not in difficulty or not np.isfinite(difficulty[t])]
    if missing:
        raise ScenarioError(f"orders: '{kind}' needs the measured difficulty of every task; missing for "
                            f"{', '.join(missing)}")
    easy = sorted(tasks, key=lambda t: (-float(difficulty[t]), list(tasks).index(t)))
    return tuple(easy) if kind == "easy_to_hard" else tuple(reversed(easy))


def describe_orders(sc: dict) -> tuple[int, str]:
    """(number of orders, how they are chosen) of a resolved scenario, without measuring anything.

    For easy_to_hard / hard_to_easy the count is an upper bound: an order that coincides with
    another one once the difficulty is measured is run once.
    """
    o = sc["orders"]
    if needs_difficulty(sc):
        entries = [o] if isinstance(o, str) else o
        kinds = sorted({x for x in entries if isinstance(x, str)})
        return len(entries), (f"{' and '.join(kinds)}: decided by each task's measured difficulty (single-task "
                              f"PatchCore image AUROC at M={max(sc['memory_sizes'])}), measured when the sweep runs")
    if _design_list(o):
        parts = [describe_orders(dict(sc, orders=x)) for x in o]
        return sum(n for n, _ in parts), "side by side: " + "; ".join(how for _, how in parts)
    if isinstance(o, dict):
        design, params = _design_of(o)
        if design.summary is not None and (found := design.summary(sc, params)) is not None:
            return found
    n = len(expand_orders(sc))
    if o == "all":
        return n, "every permutation of the tasks"
    if isinstance(o, dict):
        design, params = _design_of(o)
        return n, design.describe(params)
    return n, "listed in the scenario"


def check_orders(sc: dict, src: str) -> None:
    o = sc["orders"]
    tasks = sc["dataset"]["tasks"]
    if o in DIFFICULTY_ORDERS:
        return
    if o == "all":
        if len(tasks) > 8:
            fail(src, "orders", f"'all' over {len(tasks)} tasks is {math.factorial(len(tasks))} orders; use sample")
        return
    if isinstance(o, dict):
        design, params = _design_of(o, src)
        if design.integer:
            check_int(src, f"orders.{design.name}", params[design.name], lo=1)
        if design.check is not None:
            design.check(tuple(tasks), params, src)
        if design.scenario_check is not None:
            design.scenario_check(sc, params, src)
        return
    if _design_list(o):  # designs side by side
        for x in o:
            check_orders(dict(sc, orders=x), src)
        return
    if not isinstance(o, list) or not o:
        fail(src, "orders", "expected 'all', an order design such as {sample: N, seed: S}, easy_to_hard, "
                            "hard_to_easy, a list of orders or a list of order designs")
    for n, order in enumerate(o):
        if order in DIFFICULTY_ORDERS:
            continue
        if not isinstance(order, list) or not order:
            fail(src, f"orders[{n}]", "expected a list of task names, easy_to_hard or hard_to_easy" +
                 (" (a list of order designs holds designs only)" if isinstance(order, dict) else ""))
        for t in order:
            if t not in tasks:
                fail(src, f"orders[{n}]", f"unknown task {t!r} (tasks: {', '.join(tasks)})")
        if len(set(order)) != len(order):
            dup = next(t for t in order if order.count(t) > 1)
            fail(src, f"orders[{n}]", f"duplicate task {dup!r}")
        if order in o[:n]:
            fail(src, f"orders[{n}]", f"the same order as orders[{o.index(order)}] (each would run twice)")


def expand_orders(sc: dict, difficulty: dict[str, float] | None = None) -> list[tuple[str, ...]]:
    o = sc["orders"]
    tasks = tuple(sc["dataset"]["tasks"])
    if needs_difficulty(sc):
        if difficulty is None:
            raise ScenarioError("orders: easy_to_hard / hard_to_easy are decided by each task's measured "
                                "difficulty, which is not known yet (it is measured once the features exist)")
        out = []
        for x in (o if isinstance(o, list) else [o]):
            order = difficulty_order(tasks, difficulty, x) if isinstance(x, str) else tuple(x)
            if order not in out:  # e.g. an explicit list equal to easy_to_hard: run it once
                out.append(order)
        return out
    if o == "all":
        return list(itertools.permutations(tasks))
    if _design_list(o):  # each design's orders (adaptive ones: their first round), an order shared runs once
        out = []
        for x in o:
            out += [y for y in expand_orders(dict(sc, orders=x)) if y not in out]
        return out
    if isinstance(o, dict):
        design, params = _design_of(o)
        return [tuple(x) for x in design.expand(tasks, params)]
    return [tuple(x) for x in o]
