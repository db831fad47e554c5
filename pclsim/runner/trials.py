"""The sweep's Tune trials: one per group of runs, each restoring an evaluator from the prepared jobs.

A trial's deterministic error (bad input, a bug) is reported once through Tune instead of being
retried (`guarded_trial`); each trial hands its Parquet tables to the writer actor.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import Interrupted, PclsimError
from ..study.scenario import expand_runs, group_runs
from .control import (DETERMINISTIC as _DETERMINISTIC, fit_catching_sigint as _fit_catching_sigint,
                            get_or_recover as _get_or_recover, interrupted, root_cause as _root_cause,
                            unwrap as _unwrap)

__all__ = ["run_trials", "guarded_trial"]


def guarded_trial(config, **kw):
    """`_trial`, with a deterministic error reported through Tune (metric `pclsim_error`) instead of raised:
    Tune then neither retries it nor prints its traceback, and the driver raises it once, naming the trial."""
    from ray import tune

    from ..errors import file_system_error

    try:
        return _trial(config, **kw)
    except Exception as e:
        root = _root_cause(e)
        fs = file_system_error(root)  # a full or read-only disk: retrying cannot help either
        if fs is None and not (isinstance(e, _DETERMINISTIC) and isinstance(root, _DETERMINISTIC)):
            raise
        text = str(fs) if fs is not None else str(_unwrap(e))
        tune.report({"pclsim_error": text or type(root).__name__,
                     "pclsim_user_error": fs is not None or isinstance(root, PclsimError)})


def run_trials(ray, sc, todo, out_dir, task_refs, prepared, dim, feature_keys, max_concurrent, quiet,
                track=None, categories=None):
    """One Tune trial per group of runs; each hands its tables to a writer on this node."""
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm import tqdm

    from .actors import ResultsWriter
    from .tracking import tracker_callbacks

    writer = ResultsWriter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote(str(out_dir))
    trainable = tune.with_parameters(guarded_trial, groups=todo, task_refs=task_refs, prepared=prepared,
                                     scenario=sc, writer=writer, dim=dim, feature_keys=feature_keys,
                                     categories=categories or None)
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="runs", unit="run", disable=quiet, file=sys.stderr)
    if quiet:  # Tune's own log lines and tracebacks (a failed sync, a retried trial): the error line says it all
        import logging

        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    class _Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            bar.update(len(todo[trial.config["group"]]))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("pclsim_progress") and not quiet:  # a trial waits on a slow object: say so
                bar.write(result["pclsim_progress"], file=sys.stderr)

    class _StopOnError(tune.stopper.Stopper):  # a deterministic error in one trial ends the sweep
        failed = False

        def __call__(self, trial_id, result):
            self.failed = self.failed or bool(result.get("pclsim_error"))
            return False

        def stop_all(self):
            return self.failed

    cpus = int(ray.cluster_resources().get("CPU", 1))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"group": tune.grid_search(sorted(todo))},
        # reused trial actors: a new one per trial re-imports torch (seconds each on 2 cores)
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or max(1, cpus), reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(out_dir / ".tune"), verbose=0, stop=_StopOnError(),
                                  callbacks=[_Progress(), *tracker_callbacks(track, out_dir, sc, todo, quiet)],
                                  failure_config=tune.FailureConfig(max_failures=3)),
    )
    grid = _fit_catching_sigint(tuner)
    bar.close()
    _record_recomputations(out_dir, {(r.config or {}).get("group"): int((r.metrics or {}).get("tables_recomputed", 0))
                                     for r in grid})
    for r in grid:  # a deterministic error, reported once by _guarded_trial (not retried)
        err = (r.metrics or {}).get("pclsim_error")
        if err:
            cls = PclsimError if (r.metrics or {}).get("pclsim_user_error") else RuntimeError
            raise cls(f"trial {(r.config or {}).get('group')}: {err}")
    from ..results.tables import done_groups

    finished = done_groups(out_dir)
    left = sorted(set(todo) - finished)
    errors = [(r.config or {}, r.error) for r in grid if r.error is not None]
    if errors and not interrupted():
        cfg, e = errors[0]
        raise _unwrap(e, f"trial {cfg.get('group')}")
    if left:
        total = len(group_runs(expand_runs(sc)))
        if not interrupted():
            raise RuntimeError(f"Tune ended with {len(left)} of {total} trials unfinished (e.g. {left[0]}) and no error")
        raise Interrupted(f"interrupted after {total - len(left)} of {total} trials; rerun the same command to resume")


def _progress_line(line: str) -> None:
    """A wait line of a trial: on the trial's stderr and, through Tune, on the driver's (run_trials prints it)."""
    from ray import tune

    print(line, file=sys.stderr, flush=True)
    tune.report({"pclsim_progress": line})


def _trial(config, groups, task_refs, prepared, scenario, writer, dim, feature_keys, categories=None):
    import ray
    from ray import tune

    from ..results.tables import routed_metrics_table, routing_table, rows_table, steps_table

    t0 = time.perf_counter()
    group = config["group"]
    runs = groups[group]
    names = list(task_refs)
    raw = dict(zip(names, _get_or_recover(ray, [task_refs[n] for n in names],
                                          lambda: [_from_cache(*feature_keys[n]) for n in names],
                                          what=f"the features of {len(names)} tasks (trial {group})",
                                          progress=_progress_line)))
    from ..study.maskless import apply_maskless_policy

    tasks = apply_maskless_policy(raw, scenario["evaluation"].get("maskless_pixels", "skip"),
                                  scenario["dataset"].get("seed", 0))
    recomputed = []
    pairs = _run_prepared(ray, runs, tasks, prepared, scenario, categories, raw, recomputed, group)
    t1 = time.perf_counter()
    cats = None
    if categories:
        from ..results.categories import categories_table

        cats = categories_table([(r, res, res.categories) for r, res in pairs])
    ray.get(writer.write.remote(group, rows_table(pairs), steps_table(pairs, dim), routing_table(pairs),
                                routed_metrics_table(pairs), cats))
    print(f"trial {group}: {len(runs)} runs, compute {t1 - t0:.1f} s, write {time.perf_counter() - t1:.1f} s",
          file=sys.stderr, flush=True)
    tune.report({"runs": len(runs), "tables_recomputed": len(recomputed)})


_LOST = object()


def _source_name(src: tuple) -> str:
    what = src[1] if isinstance(src[1], str) else "+".join(src[1])
    return f"task {what}" if src[0] == "task" else f"the pool of {what}"


def _tables(ray, sp, seed, orders, table_refs, raw, coreset, recomputed, group, progress=None):
    """The candidate tables of one seed's sources (tables, or handles on stored ones): waited for while they
    exist (slow is not lost); a lost one (its object, or its stored entry) is recomputed once for this group by the same Ray table job, with the resources the bank stage gave
    it (its GPU share and memory request), never inline in the trial. Appends each recomputed source to
    `recomputed`. progress(line): where the wait and recompute lines go (default `_progress_line`)."""
    from .actors import table_job
    from .memory import job_memory

    progress = progress or _progress_line
    got = {s: _get_or_recover(ray, table_refs[s], lambda: _LOST, what=f"the candidate table of {_source_name(s)}",
                              progress=progress) for s in sp.sources}
    lost = [s for s in sp.sources if got[s] is _LOST or _gone_from_disk(got[s])]
    if lost:
        names, keys = list(raw), list(orders)
        gpu = {"num_gpus": 0.25} if ray.cluster_resources().get("GPU", 0) else {}
        mem = job_memory(ray, raw, coreset)
        for s in lost:
            progress(f"trial {group}: the candidate table of {_source_name(s)} was lost with its node or owner: "
                     "recomputing it")
        again = {s: table_job.options(**gpu, memory=mem.table(sp.needs, s)).remote(
            sp.needs, coreset, seed, s, names, keys, *[raw[n] for n in names], *[orders[k] for k in keys])
            for s in lost}

        def gone():
            raise RuntimeError(f"trial {group}: the recomputed candidate tables were lost again")

        for s, t in zip(lost, _get_or_recover(ray, [again[s] for s in lost], gone,
                                              what=f"{len(lost)} recomputed candidate table(s)",
                                              progress=progress)):
            got[s] = t
        recomputed.extend(lost)
    return [got[s] for s in sp.sources]


def _gone_from_disk(table) -> bool:
    """A stored table's handle whose entry is no longer in the store (a cleared cache; a node's local disk)."""
    from ..store.tables import TableRef, lookup_table

    return isinstance(table, TableRef) and lookup_table(table.root, table.key) is None


def _run_prepared(ray, runs, tasks, prepared, scenario, categories=None, raw=None, recomputed=None, group=""):
    """Runs against prepared bank sources (`_tables`: lost tables are recomputed by Ray table jobs).
    raw: the tasks' features as extracted (before the maskless-pixel policy), what the table jobs take."""
    from ..study.engine import evaluator_options, plan_study, restore_evaluator, run_group

    coreset = scenario["coreset"]
    pairs = []
    recomputed = [] if recomputed is None else recomputed
    for seed, sp in plan_study(runs, coreset).seeds.items():
        orders, banks, table_refs = prepared[seed]
        got = _tables(ray, sp, seed, orders, table_refs, tasks if raw is None else raw, coreset, recomputed, group)
        ev = restore_evaluator(tasks, sp, coreset, orders, banks, dict(zip(sp.sources, got)),
                               **evaluator_options(scenario))
        pairs.extend(run_group([r for r in runs if r.seed == seed], ev, coreset, categories))
    return pairs


def _record_recomputations(out_dir, by_group: dict) -> None:
    """run_info.json's "recovery": candidate tables recomputed because they were lost (in total and per trial
    that recomputed any), so a sweep that lost nodes says what it redid."""
    import json

    from ..atomic import atomic_write_json

    path = Path(out_dir) / "run_info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    info["recovery"] = {"tables_recomputed": sum(by_group.values()),
                        "tables_recomputed_by_trial": {g: n for g, n in sorted(by_group.items()) if n}}
    atomic_write_json(info, path)


def _from_cache(root, key, name, image_size):
    from ..store.cache import load_cached

    task_features = load_cached(Path(root), key, name, image_size)
    if task_features is None:
        raise RuntimeError(f"features of task {name} were lost with their node and are not in the cache {root}")
    return task_features
