"""What the adaptive order designs share (pclsim.study.adaptive explains them): the plan a replay of the stored
results gives, its log rows (design.parquet), and the batches of new orders (uniform, or relabelled Williams
designs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


from .orders import uniform_batch, williams_design
from .scenario_checks import fail

__all__ = ["Plan", "Observe", "DEFAULT_BATCH", "metric_check", "uniform_batch", "balanced_batch", "log_row", "SEP"]

DEFAULT_BATCH = 10
SEP = " > "  # results.schema.ORDER_SEPARATOR, as scenario.Run.order_str writes it (a layer below results)


def metric_check(src, key, v):
    from ..core.metric_registry import METRICS

    if not isinstance(v, str) or v not in METRICS:
        fail(src, key, f"unknown metric {v!r} (valid: {', '.join(METRICS)})")
    return v


def balanced_batch(tasks: tuple, n: int, rng, seen: set) -> list[tuple] | None:
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


Observe = Callable[[list, str], "dict | None"]
# observe(orders, metric) -> {order: {(strategy, memory_size): {"final": float, "tasks": {task: float}}}}: per
# order the final value a[T-1][j] of every task and their mean, each a mean over the scenario's seeds; None
# while any run of those orders is unfinished. (The designs' own rounds see it with their metric bound.)


def log_row(design, rnd, kind, *, order=None, role="", strategy="", memory_size=0, metric="", quantity="", task=None,
         value=float("nan"), ci=float("nan"), n=0, note="") -> dict:
    return {"design": design, "round": int(rnd), "kind": kind, "order": order, "role": role, "strategy": strategy,
            "memory_size": int(memory_size), "metric": metric, "quantity": quantity, "task": task,
            "value": float(value), "ci_half_width": float(ci), "n": int(n), "note": note}
