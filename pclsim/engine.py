"""Planning and running a study in-process: the pure work the Ray layer distributes.

`plan` lists every bank source the runs need (and at which prefix sizes), `source_order` and
`source_tables` compute one source each, `run_group` runs a group of orders against prepared
sources. `simulate` chains them in one process (tests, the GPU check, small studies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import BankSources, Evaluator, OrderResult, TaskFeatures, run_order
from .scenario import Run
from .strategies import get_strategy

__all__ = ["Plan", "plan", "make_sources", "source_order", "source_tables", "run_group", "simulate"]


@dataclass
class Plan:
    sizes: dict[int, dict[str, set[int]]]              # seed -> kind -> prefix sizes
    sources: dict[int, list[tuple[str, tuple[str, ...]]]]  # seed -> (kind, tasks) in dependency order


def plan(runs: list[Run]) -> Plan:
    sizes: dict[int, dict[str, set[int]]] = {}
    srcs: dict[int, set] = {}
    seen_states: set = set()
    for r in runs:
        strat = get_strategy(r.strategy, r.memory_size)
        sz = sizes.setdefault(r.seed, {})
        for step in range(len(r.order)):
            state = (r.strategy, r.memory_size, r.seed, frozenset(r.order[: step + 1]), r.order[step])
            if state in seen_states:
                continue
            seen_states.add(state)
            for b in strat.banks(tuple(r.order[: step + 1])):
                sz.setdefault(b.kind, set()).add(b.size)
                srcs.setdefault(r.seed, set()).add((b.kind, b.tasks))
    order_kind = {"task": 0, "random": 1, "joint": 2}
    return Plan(sizes, {s: sorted(v, key=lambda x: (order_kind[x[0]], len(x[1]), x[1])) for s, v in srcs.items()})


def make_sources(tasks: dict[str, TaskFeatures], sizes: dict[str, set[int]], coreset: dict, seed: int,
                 device=None) -> BankSources:
    pdim = coreset.get("projection_dim", 128) if coreset.get("projection", "jl") == "jl" else None
    return BankSources(tasks, sizes, projection_dim=pdim, seed=seed, joint=coreset.get("joint", "composable"),
                       device=device)


def source_order(sources: BankSources, kind: str, src: tuple[str, ...]) -> np.ndarray:
    return sources.order(kind, src)


def source_tables(sources: BankSources, kind: str, src: tuple[str, ...], device=None):
    ev = Evaluator(sources, device=device)
    return ev.tables(kind, src)


def run_group(runs: list[Run], sources: BankSources, tables: dict, *, reweighting: str = "paper",
              pixel: bool = True, device=None, categories=None) -> tuple[list[tuple[Run, OrderResult]], dict]:
    """Run every order of a group with one shared, memoized evaluator (categories: as in `simulate`)."""
    if categories:
        sources.tasks = dict(sources.tasks)  # the category views go into this group's own mapping
    ev = Evaluator(sources, reweighting=reweighting, pixel=pixel, device=device)
    for (kind, src), tb in tables.items():
        ev.put_tables(kind, src, tb)
    if categories:
        from .data.merge import add_category_views

        add_category_views(ev, categories, plan(runs).sources.get(sources.seed, []))
    out = []
    for r in runs:
        strat = get_strategy(r.strategy, r.memory_size)
        res = run_order(strat, r.order, ev)
        if categories:
            from .data.merge import run_categories

            res.categories = run_categories(strat, r.order, ev, categories)
        out.append((r, res))
    return out, dict(ev.stats)


def simulate(runs: list[Run], tasks: dict[str, TaskFeatures], scenario: dict, device=None, categories=None):
    """The whole study in this process, one seed after another.

    categories: {merged task: [(category, n_test), ...]} (pclsim.data.merge.category_parts); each result
    then carries `.categories`, a CategoryResult of per-category values.
    """
    from .maskless import apply_maskless_policy

    tasks = apply_maskless_policy(tasks, scenario.get("evaluation", {}).get("maskless_pixels", "skip"),
                                  scenario.get("dataset", {}).get("seed", 0))
    p = plan(runs)
    out = []
    for seed, sizes in p.sizes.items():
        sources = make_sources(dict(tasks), sizes, scenario["coreset"], seed, device)
        ev = Evaluator(sources, reweighting=scenario["model"]["reweighting"],
                       pixel=scenario["evaluation"]["pixel_metrics"], device=device)
        if categories:
            from .data.merge import add_category_views, run_categories

            add_category_views(ev, categories, p.sources[seed])
        for r in runs:
            if r.seed == seed:
                strat = get_strategy(r.strategy, r.memory_size)
                res = run_order(strat, r.order, ev)
                if categories:
                    res.categories = run_categories(strat, r.order, ev, categories)
                out.append((r, res))
    return out
