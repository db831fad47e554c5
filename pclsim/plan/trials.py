"""pclsim plan's trials stage: one job per Tune trial, its counts (FAMILIES["trial"] in pclsim.plan.work) and memory.

Imports: pclsim.plan.jobs (the job types), the study's strategies, banks and protocol (what a trial evaluates and
keeps), the runner's memory constants; no Ray.
"""

from __future__ import annotations

from .jobs import RESULT_BYTES_PER_CELL, Job, StageWork, matrix_cells

__all__ = ["trial_stage", "search_macs"]

_NN_MEMO_BYTES = 12  # a trial keeps, per (bank, task) it scored, each test patch's distance (f32) and position (i64)


def search_macs(queries: int, bank, seed: int, dim: int, c_of: dict) -> float:
    """The exact fallback's expected work for one (bank, task) pair, up to the fitted rate: an exact search of
    every looked-up patch (queries x part x D a part of the bank, its parts an equal share of its size) times the
    share of the part's candidate set the part lacks (1 - part / C). A bank holding its source's whole candidate
    set never falls back (every listed candidate is its own); the smaller its share of the candidates, the more
    of a patch's K nearest candidates it lacks."""
    from ..study.banks import bank_sources

    sources = bank_sources(bank)
    part = bank.size / max(1, len(sources))
    return sum(float(queries) * part * dim * max(0.0, 1.0 - part / max(1, c_of.get((seed, src), part)))
               for src in sources)


def trial_stage(sc: dict, sz, groups: dict, k_of: dict, c_of: dict) -> StageWork:
    """One job per Tune trial; terms (FAMILIES["trial"]) count what its memoized evaluator computes: its distinct
    states (eval task, banks, routing), the (bank, task) pairs it looks up in the candidate tables (test patches x K a bank part; a task routed among
    several banks is looked up in each), the reweighting's neighbour search in the bank a task's images are
    scored with (its own where it has one: images x bank x D), the pixels of each distinct state's anomaly maps
    (tasks with masks), and the exact fallback's search (`search_macs`: patches none of whose K candidates a
    bank holds; how many depends on the data, its fitted rate is the calibration's average)."""
    from ..core.reweighting import get_reweighting
    from ..runner.memory import WORKER_BASE_BYTES
    from ..study.banks import bank_sources
    from ..study.engine import strategy_for
    from ..study.protocol import BANK_VECTOR_CACHE_BYTES

    coreset, P, D, S = sc["coreset"], sz.patches, sz.dim, sz.image_size
    pixel = bool(sc["evaluation"].get("pixel_metrics", True))
    reweight = get_reweighting(sc["model"]["reweighting"]).neighbours > 0
    stage = StageWork("trials")
    for name, runs in groups.items():
        states, pairs, chosen = set(), set(), set()
        for r in runs:
            strat = strategy_for(r, coreset)
            for s in range(len(r.order)):
                banks = strat.banks(tuple(r.order[: s + 1]))
                for task in r.order:
                    sb, ident = strat.scoring(banks, task)
                    ident = ident or strat.identifies_task
                    if (task, sb, ident) in states:
                        continue
                    states.add((task, sb, ident))
                    routed = ident and len(sb) > 1
                    pairs.update((b, r.seed, task) for b in (sb if routed else sb[:1]))
                    own = [b for b in sb if b.tasks == (task,)] if routed else []
                    chosen.add(((own or sb)[0], task))
        lookups = sum(sz.tasks[t].test * P * sum(k_of.get((seed, src), 1) for src in bank_sources(b))
                      for b, seed, t in pairs)
        rw = sum(min(sz.tasks[t].test, b.size) * float(b.size) * D for b, t in chosen) if reweight else 0.0
        pix = sum(sz.tasks[t].test * S * S for t, _, _ in states if pixel and sz.tasks[t].masks)
        search = sum(search_macs(sz.tasks[t].test * P, b, seed, D, c_of) for b, seed, t in pairs)
        memo = sum(sz.tasks[t].test * P * _NN_MEMO_BYTES for _, _, t in pairs)
        # the bank vectors the reweighting reads, the recently used up to BANK_VECTOR_CACHE_BYTES, and the exact
        # fallback's read of a bank part and its centred copy
        largest = max((b.size * D * 4 for b, _ in chosen), default=0)
        vectors = (min(sum(b.size * D * 4 for b in {b for b, _ in chosen}), BANK_VECTOR_CACHE_BYTES + largest)
                   if reweight else 0) + 2 * largest
        maps = max((t.test * S * S * 4 * 3 for t in sz.tasks.values() if t.masks and pixel), default=0)
        stage.jobs.append(Job(float(lookups), WORKER_BASE_BYTES + memo + vectors + maps,
                              terms=(1.0, float(len(states)), float(lookups), rw, float(pix), search), name=name,
                              family="trial"))
        stage.disk += sum(matrix_cells(sc, sz, r) for r in runs) * RESULT_BYTES_PER_CELL
    return stage

