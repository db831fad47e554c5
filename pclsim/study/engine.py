"""The study core: one plan, one function per kind of job, one way to restore an evaluator.

A study is planned once (`plan_study`): every bank its runs hold, the selection orders those banks
need (independent jobs), the bank jobs that carry out PatchCoreCL's re-reductions and the joint
selections (the bank manager's work), and one candidate-table job per source. `run_selection`,
`run_banks` and `run_table` each compute one job from task features and the results of the jobs
before it; `restore_evaluator` builds the memoized evaluator from those results; `run_group` runs
a group of runs against it. `simulate` chains them in one process; the Ray layer (`pclsim.runner.sweep`)
only places the same calls on workers, so both give identical values (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .banks import BankBuilder, SelectionNeeds, bank_sources, selection_source
from ..core.candidates import DEFAULT_K, CandidateTable, build_table
from .protocol import Evaluator, OrderResult, TaskFeatures, run_order
from .scenario import Run
from .strategies import BankRef, get_strategy

__all__ = ["StudyPlan", "SeedPlan", "plan_study", "run_selection", "run_banks", "run_table", "stored_table", "candidate_rows",
           "restore_evaluator", "evaluator_options", "run_group", "simulate", "strategy_for", "job_name"]


def strategy_for(run: Run, coreset: dict):
    return get_strategy(run.strategy, run.memory_size, coreset.get("rebalance", "authors"),
                        coreset.get("joint", "composable"))


@dataclass
class SeedPlan:
    """Everything one seed's runs need, in dependency order.

    refs: every bank any run holds; needs: selection lengths; selections: selection-order jobs
    (independent); bank_jobs: lists of BankRefs resolved together (one per task for per-task banks
    and their re-reduction chains, one per joint set); sources: one candidate table each.
    """

    seed: int
    refs: set = field(default_factory=set)
    needs: SelectionNeeds | None = None
    selections: list = field(default_factory=list)
    bank_jobs: list = field(default_factory=list)
    sources: list = field(default_factory=list)


@dataclass
class StudyPlan:
    seeds: dict[int, SeedPlan]

    @property
    def n_jobs(self) -> int:
        return sum(len(p.selections) + len(p.bank_jobs) + len(p.sources) for p in self.seeds.values())


def plan_study(runs: list[Run], coreset: dict) -> StudyPlan:
    """The bank-source jobs of a list of runs. States are keyed by what a bank depends on, so each
    distinct bank is resolved once however many runs reach it."""
    seeds: dict[int, SeedPlan] = {}
    for r in runs:
        sp = seeds.setdefault(r.seed, SeedPlan(r.seed))
        strat = strategy_for(r, coreset)
        for step in range(len(r.order)):
            seen = tuple(r.order[: step + 1])
            for b in strat.banks(seen):
                sp.refs.add(b)
            # multi_model scores unseen tasks with the existing banks: same refs, nothing new
    for sp in seeds.values():
        sp.needs = SelectionNeeds.of(sp.refs)
        # joint orders select from the members' selections: they are made in the bank jobs
        sp.selections = sorted((k for k in sp.needs.sizes if k[0] != "joint"), key=str)
        per_task: dict = {}
        joint: dict = {}
        for b in sorted(sp.refs):
            if b.kind in ("joint", "pool"):
                joint.setdefault((b.kind, b.tasks), []).append(b)  # one job per set: one selection, prefixes
            else:
                per_task.setdefault(b.tasks[0], []).append(b)
        sp.bank_jobs = [per_task[t] for t in sorted(per_task)] + [joint[k] for k in sorted(joint)]
        sp.sources = sorted({s for b in sp.refs for s in bank_sources(b)}, key=str)
    return StudyPlan(seeds)


def _builder(tasks, needs, coreset, seed, orders=None, banks=None, device=None) -> BankBuilder:
    pdim = coreset.get("projection_dim", "auto") if coreset.get("projection", "jl") == "jl" else None
    bb = BankBuilder(tasks, needs, projection_dim=pdim, seed=seed, device=device)
    for key, order in (orders or {}).items():
        bb.set_order(key, order)
    for ref, parts in (banks or {}).items():
        bb.install(ref, parts)
    return bb


def run_selection(tasks: dict, needs: SelectionNeeds, coreset: dict, seed: int, key: tuple, device=None) -> np.ndarray:
    """One selection order (greedy k-center of a task's patches, or a random permutation)."""
    return _builder(tasks, needs, coreset, seed, device=device).order(*key)


def run_banks(tasks: dict, needs: SelectionNeeds, coreset: dict, seed: int, orders: dict, refs: list[BankRef],
              device=None) -> dict:
    """Resolve banks (the bank manager's work: re-reductions, joint selections) -> {ref: parts}."""
    bb = _builder(tasks, needs, coreset, seed, orders, device=device)
    return {r: bb.resolve(r) for r in refs}


def job_name(seed: int, job: str, what) -> str:
    """The name of one bank-stage job in the sweep's --debug timing lines and `pclsim plan`'s work model.

    job: "selection" (what: the selection key), "banks" (what: the job's BankRefs), "table" (what: the source).
    E.g. "s0 selection select Brain_AD", "s0 banks joint Brain_AD+Liver_AD", "s0 table task Chest_AD"."""
    def names(x):
        return x if isinstance(x, str) else "+".join(x)

    if job == "selection":
        return f"s{seed} selection {what[0]} {names(what[1])}"
    if job == "banks":
        kind = what[0].kind if what[0].kind in ("joint", "pool") else "task"
        return f"s{seed} banks {kind} {names(what[0].tasks)}"
    return f"s{seed} table {what[0]} {names(what[1])}"


def candidate_rows(needs: SelectionNeeds, orders: dict, source: tuple) -> np.ndarray:
    """The candidate set of a source (sorted, unique): the planned prefixes of its selection orders.

    Every bank of the study holds rows of these prefixes only (prefixes, re-reductions of prefixes,
    joint selections from the members' prefixes), so the set is known once the selections are,
    before any bank job: candidate tables then run alongside the bank jobs. Raises KeyError when a
    planned selection of the source is missing from `orders`."""
    rows = [orders[k][: needs.sizes[k]] for k in needs.sizes if k[0] != "joint" and selection_source(k) == source]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def run_table(tasks: dict, needs: SelectionNeeds, coreset: dict, seed: int, source: tuple, rows: np.ndarray,
              k: int | None = None, device=None) -> CandidateTable:
    """The candidate table of one source against every task's test patches (k: list length, DEFAULT_K)."""
    bb = _builder(tasks, needs, coreset, seed, device=device)
    return build_table(source, rows, bb.vectors(source, rows), tasks, k=k or DEFAULT_K, device=device)


def stored_table(tasks: dict, needs: SelectionNeeds, coreset: dict, seed: int, source: tuple, rows: np.ndarray,
                 k: int | None = None, device=None):
    """`run_table` into the on-disk store beside the tasks' features -> a TableRef (pclsim.store.tables).

    tasks: {name: TaskFeatures} read from the feature store (each with its `ref`); the table is looked up by
    its content address first (a stored one is reused, never recomputed) and otherwise streamed to disk
    chunk by chunk. Tasks not from the store (no `ref`): the table in memory (`run_table`), as before."""
    from ..store.tables import TableWriter, lookup_table, table_key

    refs = {n: getattr(tf, "ref", None) for n, tf in tasks.items()}
    if any(r is None for r in refs.values()):
        return run_table(tasks, needs, coreset, seed, source, rows, k=k, device=device)
    k = int(min(k or DEFAULT_K, len(rows))) if len(rows) else int(k or DEFAULT_K)
    root = next(iter(refs.values())).root
    key = table_key(source, rows, k, {n: r.key for n, r in refs.items()})
    found = lookup_table(root, key)
    if found is not None:
        return found
    bb = _builder(tasks, needs, coreset, seed, device=device)
    patches = int(next(iter(tasks.values())).test.shape[1])
    sink = TableWriter(root, key, source, rows, patches, k)
    try:
        return build_table(source, rows, bb.vectors(source, rows), tasks, k=k, device=device, sink=sink)
    except BaseException:
        sink.abort()
        raise


def evaluator_options(scenario: dict) -> dict:
    """The Evaluator's keyword arguments a resolved scenario sets: model.reweighting, evaluation.pixel_metrics,
    evaluation.thresholds (parsed, pclsim.core.thresholds) and evaluation.threshold_refit."""
    from ..core.thresholds import parse_policy

    ev = scenario.get("evaluation", {})
    return {"reweighting": scenario["model"]["reweighting"], "pixel": ev.get("pixel_metrics", True),
            "thresholds": tuple(parse_policy(p) for p in ev.get("thresholds") or ()),
            "refit": ev.get("threshold_refit", True)}


def restore_evaluator(tasks: dict, sp: SeedPlan, coreset: dict, orders: dict, banks: dict, tables: dict, *,
                      reweighting: str = "paper", pixel: bool = True, device=None, thresholds=(),
                      refit: bool = True) -> Evaluator:
    """An evaluator over prepared bank sources (no selection or search is recomputed); the keyword
    arguments as `Evaluator`'s (`evaluator_options(scenario)` gives a scenario's). tables: {source:
    CandidateTable or its stored handle (TableRef)}."""
    from ..store.tables import open_table

    bb = _builder(tasks, sp.needs, coreset, sp.seed, orders, banks, device=device)
    tables = {s: open_table(t) for s, t in tables.items()}  # stored tables: mapped, read block by block
    return Evaluator(tasks, bb, tables, reweighting=reweighting, pixel=pixel, device=device, thresholds=thresholds,
                     refit=refit)


def run_group(runs: list[Run], ev: Evaluator, coreset: dict, categories=None) -> list[tuple[Run, OrderResult]]:
    """Every run of a group against one shared, memoized evaluator.

    categories: {merged task: [(category, n_test), ...]} (pclsim.data.merge.category_parts); each result
    then carries `.categories`, a CategoryResult of per-category values."""
    if categories:
        from ..data.merge import add_category_views, run_categories

        add_category_views(ev, categories)
    out = []
    for r in runs:
        strat = strategy_for(r, coreset)
        res = run_order(strat, r.order, ev)
        if categories:
            res.categories = run_categories(strat, r.order, ev, categories)
        out.append((r, res))
    return out


def prepare_seed(tasks: dict, sp: SeedPlan, coreset: dict, device=None, progress=None):
    """(orders, banks, tables) of one seed, computed in this process, jobs in dependency order."""
    orders = {}
    for key in sp.selections:
        orders[key] = run_selection(tasks, sp.needs, coreset, sp.seed, key, device)
        if progress:
            progress()
    banks = {}
    for refs in sp.bank_jobs:
        banks.update(run_banks(tasks, sp.needs, coreset, sp.seed, orders, refs, device))
        if progress:
            progress()
    tables = {}
    for src in sp.sources:
        tables[src] = run_table(tasks, sp.needs, coreset, sp.seed, src, candidate_rows(sp.needs, orders, src),
                                device=device)
        if progress:
            progress()
    return orders, banks, tables


def simulate(runs: list[Run], tasks: dict[str, TaskFeatures], scenario: dict, device=None, categories=None):
    """The whole study in this process, one seed after another -> [(run, OrderResult)] in run order.

    The scenario's evaluation.maskless_pixels policy is applied to the tasks first (pclsim.study.maskless);
    categories: as in `run_group`."""
    from .maskless import apply_maskless_policy

    tasks = apply_maskless_policy(tasks, scenario.get("evaluation", {}).get("maskless_pixels", "skip"),
                                  scenario.get("dataset", {}).get("seed", 0))
    coreset = scenario["coreset"]
    plan = plan_study(runs, coreset)
    results = {}
    for seed, sp in plan.seeds.items():
        orders, banks, tables = prepare_seed(tasks, sp, coreset, device)
        ev = restore_evaluator(tasks, sp, coreset, orders, banks, tables, device=device,
                               **evaluator_options(scenario))
        for r, res in run_group([r for r in runs if r.seed == seed], ev, coreset, categories):
            results[r] = res
    return [(r, results[r]) for r in runs]


def single_task_metrics(tf: TaskFeatures, memory_size: int, *, reweighting: str = "paper", coreset: dict | None = None,
                        seed: int = 0, pixel: bool = True) -> dict[str, float]:
    """Plain PatchCore on one task: a bank of `memory_size` from its training patches, its own test set.

    The single-task difficulty of a task (benchmarks, easy_to_hard orders). coreset: the scenario's
    coreset section (default: JL "auto" projection)."""
    coreset = coreset or {"projection": "jl", "projection_dim": "auto", "rebalance": "authors"}
    sc = {"coreset": coreset, "model": {"reweighting": reweighting}, "evaluation": {"pixel_metrics": pixel}}
    (_, res), = simulate([Run("multi_model", int(memory_size), seed, (tf.name,))], {tf.name: tf}, sc)
    return {m: float(a[0, 0]) for m, a in res.matrices.items()}
