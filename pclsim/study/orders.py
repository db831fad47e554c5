"""A scenario's orders (the `orders` key): checking them, expanding them, and the difficulty-decided ones.

`orders` is all | an order design {name: N, option: value, ...} | easy_to_hard | hard_to_easy | a list
of orders (task lists or either keyword). easy_to_hard / hard_to_easy sort the tasks by their measured
single-task image AUROC (pclsim.analysis.statistics.measure_difficulty), known only once the features
exist. Order designs are a registry: `{sample: N, seed: S}` is the built-in one; a new design is one
`register_order_design(OrderDesign(...))` call, and `orders: {its_name: N}` accepts it from then on.
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
           "check_orders", "expand_orders", "OrderDesign", "ORDER_DESIGNS", "register_order_design"]


DIFFICULTY_ORDERS = ("easy_to_hard", "hard_to_easy")


@dataclass(frozen=True)
class OrderDesign:
    """An order design, written in a scenario as `orders: {name: N, option: value, ...}`.

    name: the key that names it; options: its other keys with their defaults; expand(tasks, params) ->
    the orders (tuples of task names, distinct), where params holds `name` (N, an integer >= 1) and every
    option; check(tasks, params, src): extra checks of the values, failing through
    `scenario_checks.fail` with the key (optional); describe(params) -> how the orders are chosen, for
    `pclsim validate`.
    """

    name: str
    expand: Callable[[tuple, dict], list]
    describe: Callable[[dict], str]
    options: dict = field(default_factory=dict)
    check: Callable | None = None


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
    if params["sample"] > math.factorial(len(tasks)):
        fail(src, "orders.sample", f"{params['sample']} exceeds the {math.factorial(len(tasks))} possible orders")


def _sample_expand(tasks, params):
    rng = np.random.default_rng(params["seed"])
    seen, out = set(), []
    while len(out) < params["sample"]:
        p = tuple(tasks[i] for i in rng.permutation(len(tasks)))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


register_order_design(OrderDesign(
    "sample", _sample_expand, lambda p: f"a seeded sample of permutations (seed {p['seed']})",
    options={"seed": 0}, check=_sample_check))


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
    if isinstance(o, list):
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
        check_int(src, f"orders.{design.name}", params[design.name], lo=1)
        if design.check is not None:
            design.check(tuple(tasks), params, src)
        return
    if not isinstance(o, list) or not o:
        fail(src, "orders", "expected 'all', an order design such as {sample: N, seed: S}, easy_to_hard, "
                            "hard_to_easy or a list of orders")
    for n, order in enumerate(o):
        if order in DIFFICULTY_ORDERS:
            continue
        if not isinstance(order, list) or not order:
            fail(src, f"orders[{n}]", "expected a list of task names, easy_to_hard or hard_to_easy")
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
    if isinstance(o, dict):
        design, params = _design_of(o)
        return [tuple(x) for x in design.expand(tasks, params)]
    return [tuple(x) for x in o]
