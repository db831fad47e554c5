"""`pclsim sweep`: a scenario's runs as Ray Tune trials, results as Parquet, resumable."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import __version__
from .errors import PclsimError
from .scenario import expand_runs, group_runs, load_scenario, scenario_hash

__all__ = ["run_sweep", "prepare_output"]


def prepare_output(sc: dict, out: Path, fresh: bool) -> None:
    """Check the folder is writable and holds this scenario (or nothing); write scenario.yaml."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pclsim-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PclsimError(f"{out}: output folder is not writable ({e.strerror or e})") from None
    meta = out / "scenario.yaml"
    if meta.exists() and not fresh:
        try:
            old = yaml.safe_load(meta.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        if old.get("scenario_hash") != scenario_hash(sc):
            raise PclsimError(f"{meta}: this folder holds results of a different scenario; "
                              "use --fresh to start over or --out for another folder")
    # Tune's own experiment folder is scratch: resuming goes by the finished Parquet parts
    shutil.rmtree(out / ".tune", ignore_errors=True)
    if fresh:
        for name in ("matrices.parquet", "steps.parquet", "summary.parquet", "tasks.parquet", "run_info.json",
                     "report", "gallery", "categories.parquet"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    body = dict(sc, pclsim_version=__version__, scenario_hash=scenario_hash(sc))
    tmp = out / ".scenario.yaml.tmp"
    tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    os.replace(tmp, meta)


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_sweep(scenario_path: str, out: str | None = None, data_root: str | None = None, address: str | None = None,
              fresh: bool = False, max_concurrent: int | None = None, quiet: bool = False, debug: bool = False,
              cache_dir: str | None = None, gallery: int | None = None, track: list[str] | None = None) -> Path:
    from .data import load_stream
    from .data.preflight import preflight

    t_start = _T0[0] = time.perf_counter()
    from .tracking import parse_track

    parse_track(track)  # a bad --track fails before any work
    sc = load_scenario(scenario_path, data_root=data_root)
    if gallery is not None:
        sc["evaluation"]["gallery"] = int(gallery)
    out_dir = Path(out or Path("results") / sc["name"]).expanduser().resolve()
    streams = load_stream(sc["dataset"], sc["dataset"]["root"])
    preflight(streams)
    if sc["dataset"]["tasks"] is None:  # folder-like data sets: every category found
        from .scenario import resolve

        sc["dataset"]["tasks"] = [t.name for t in streams]
        sc = resolve(sc, scenario_path)
    runs = expand_runs(sc)
    groups = group_runs(runs)
    prepare_output(sc, out_dir, fresh)
    from .results import done_groups

    done = done_groups(out_dir)
    todo = {g: rs for g, rs in groups.items() if g not in done}
    _say(quiet, f"pclsim {__version__}: {sc['name']}: {len(runs)} runs in {len(groups)} trials "
                f"({len(groups) - len(todo)} already done) -> {out_dir}")
    cache_root = Path(cache_dir).resolve() if cache_dir else None
    want_gallery = sc["evaluation"]["gallery"] > 0 and not (out_dir / "gallery").is_dir()
    if todo or want_gallery:
        _run_ray(sc, streams, todo, out_dir, address, max_concurrent, quiet, debug, cache_root, want_gallery, track)
    _finish(sc, out_dir, streams, quiet, cache_root)
    _say(quiet, f"done in {time.perf_counter() - t_start:.1f} s: {out_dir}")
    return out_dir


_T0 = [time.perf_counter()]


def _stage(debug: bool, what: str) -> None:
    if debug:
        print(f"[{time.perf_counter() - _T0[0]:7.1f} s] {what}", file=sys.stderr, flush=True)


def _ray_init(address, debug):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw = dict(include_dashboard=False, log_to_driver=debug, logging_level="INFO" if debug else "ERROR",
              configure_logging=True)
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(**kw)
    return ray


def _run_ray(sc, streams, todo, out_dir, address, max_concurrent, quiet, debug, cache_root, want_gallery=False,
             track=None):
    ray = _ray_init(address, debug)
    _stage(debug, "ray started")
    try:
        cache = str(cache_root or _default_cache())
        task_refs, feature_keys, dim = _extract_features(ray, sc, streams, out_dir, cache, quiet, debug)
        gallery_run = _gallery_run(sc) if want_gallery else None
        runs = [r for rs in todo.values() for r in rs] + ([gallery_run] if gallery_run else [])
        p, prepared = _prepare_banks(ray, sc, task_refs, runs, quiet)
        _stage(debug, "banks done")
        if todo:
            from .data.merge import category_parts

            _run_trials(ray, sc, todo, out_dir, task_refs, prepared, p.sizes, dim, feature_keys, max_concurrent, quiet,
                        track, category_parts(streams))
            _stage(debug, "trials done")
        if gallery_run is not None:
            from .actors import write_gallery

            ray.get(write_gallery.remote(str(out_dir), gallery_run, streams, task_refs, prepared[gallery_run.seed],
                                         p.sizes[gallery_run.seed], sc))
    except Exception as e:
        raise _unwrap(e) from None
    finally:
        ray.shutdown()


def _default_cache():
    from .cache import default_cache_dir

    return default_cache_dir()


def _extract_features(ray, sc, streams, out_dir, cache, quiet, debug):
    """Fill the feature cache: one extractor actor per GPU, else CPU workers spread over the nodes.

    Returns the object refs of every task's features, their cache keys (a lost node's objects come
    back from the shared cache) and the feature dimension; writes tasks.parquet and run_info.json.
    """
    import pyarrow as pa
    from tqdm import tqdm

    from .actors import FeatureExtractorActor, task_stats
    from .cache import task_key
    from .results import atomic_write_table

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    n_act = min(len(streams), gpus if gpus else max(1, cpus))
    opts = dict(num_gpus=1, num_cpus=1) if gpus else dict(num_cpus=1)
    actors = [FeatureExtractorActor.options(scheduling_strategy="SPREAD", max_restarts=2, max_task_retries=2,
                                            **opts).remote(sc["model"], sc["dataset"]["image_size"], cache,
                                                           threads=1 if not gpus else 4,
                                                           resize=sc["dataset"].get("resize", "crop"))
              for _ in range(n_act)]
    infos = ray.get([a.info.remote() for a in actors])
    _stage(debug, "extractors ready")
    pending = {actors[i % n_act].extract.remote(t): t.name for i, t in enumerate(streams)}
    task_refs = {t.name: None for t in streams}
    with tqdm(total=len(streams), desc="features", unit="task", disable=quiet, file=sys.stderr) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for r in ready:
                ray.get(r)  # a data error surfaces here, naming its file
                task_refs[pending.pop(r)] = r
                bar.update(1)
    for a in actors:
        ray.kill(a)
    _stage(debug, "features done")
    _write_json(out_dir / "run_info.json", {
        "ray_nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cluster_resources": res,
        "extractors": [{k: v for k, v in i.items() if k != "cache_key"} for i in infos],
        "extractor_nodes": sorted({i["node"] for i in infos})})
    stats = pd.DataFrame(ray.get([task_stats.remote(task_refs[n]) for n in task_refs]))
    stats["arch_mb"] = infos[0]["arch_mb"]
    from .maskless import maskless_all_ones

    policy = sc["evaluation"].get("maskless_pixels", "skip")  # labelled, with the images that got all-1 masks
    stats["maskless_pixels"] = policy
    stats["maskless_all_ones"] = [
        [int(i) for i in np.flatnonzero(maskless_all_ones([s.label for s in t.test], t.name, sc["dataset"]["seed"]))]
        if policy == "paper" and not t.has_masks else [] for t in streams]
    stats["backbone_device"] = infos[0]["device"]
    atomic_write_table(pa.Table.from_pandas(stats, preserve_index=False), out_dir / "tasks.parquet")
    feature_keys = {t.name: (cache, task_key(infos[0]["cache_key"], t), t.name, sc["dataset"]["image_size"])
                    for t in streams}
    return task_refs, feature_keys, infos[0]["dim"]


def _prepare_banks(ray, sc, task_refs, runs, quiet):
    """Every selection order and NN table the runs need, each computed once (the bank manager)."""
    from tqdm import tqdm

    from .actors import BankManagerActor
    from .engine import plan

    p = plan(runs)
    manager = BankManagerActor.remote(task_refs, sc["coreset"])
    prepared = {seed: ray.get(manager.prepare.remote(seed, p.sizes[seed], p.sources[seed])) for seed in p.sizes}
    tables = [pair[1] for d in prepared.values() for pair in d.values()]  # a source's order comes with it
    with tqdm(total=len(tables), desc="banks", unit="source", disable=quiet, file=sys.stderr) as bar:
        while tables:
            ready, tables = ray.wait(tables, num_returns=1)
            bar.update(len(ready))
    return p, prepared


def _run_trials(ray, sc, todo, out_dir, task_refs, prepared, sizes, dim, feature_keys, max_concurrent, quiet,
                track=None, categories=None):
    """One Tune trial per group of orders; each hands its tables to a writer on this node."""
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm import tqdm

    from .actors import ResultsWriter
    from .tracking import tracker_callbacks

    writer = ResultsWriter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote(str(out_dir))
    trainable = tune.with_parameters(_trial, groups=todo, task_refs=task_refs, prepared=prepared, sizes=sizes,
                                     scenario=sc, writer=writer, dim=dim, feature_keys=feature_keys,
                                     categories=categories or None)
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="runs", unit="run", disable=quiet, file=sys.stderr)

    class _Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            bar.update(len(todo[trial.config["group"]]))

    cpus = int(ray.cluster_resources().get("CPU", 1))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"group": tune.grid_search(sorted(todo))},
        # reused trial actors: a new one per trial re-imports torch (seconds each on 2 cores)
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or max(1, cpus), reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(out_dir / ".tune"), verbose=0,
                                  callbacks=[_Progress(), *tracker_callbacks(track, out_dir, sc, todo)],
                                  failure_config=tune.FailureConfig(max_failures=3)),
    )
    grid = tuner.fit()
    bar.close()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise _unwrap(errors[0])


def _gallery_run(sc):
    """The state the gallery shows: PatchCoreCL (else the first strategy) at the largest memory size,
    after every task of the first order."""
    from .scenario import expand_runs

    runs = expand_runs(sc)
    strat = "patchcore_cl" if "patchcore_cl" in sc["strategies"] else sc["strategies"][0]
    m = max(sc["memory_sizes"])
    return next(r for r in runs if r.strategy == strat and r.memory_size == m)


def _unwrap(e: BaseException) -> BaseException:
    """A PclsimError raised inside a Ray worker, as the user's error; anything else unchanged."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, PclsimError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
        seen += 1
    return e if e is not None else RuntimeError("sweep failed")


def _trial(config, groups, task_refs, prepared, sizes, scenario, writer, dim, feature_keys, categories=None):
    import ray
    from ray import tune

    from .engine import make_sources, plan, run_group
    from .results import rows_table, steps_table

    t0 = time.perf_counter()
    group = config["group"]
    runs = groups[group]
    names = list(task_refs)
    tasks = dict(zip(names, _get_or_recover(ray, [task_refs[n] for n in names],
                                            lambda: [_from_cache(*feature_keys[n]) for n in names])))
    from .maskless import apply_maskless_policy

    tasks = apply_maskless_policy(tasks, scenario["evaluation"].get("maskless_pixels", "skip"),
                                  scenario["dataset"].get("seed", 0))
    pairs = []
    trial_plan = plan(runs)
    for seed in trial_plan.sizes:
        need = trial_plan.sources[seed]
        refs = prepared[seed]
        keys = list(refs)
        sources = make_sources(tasks, sizes[seed], scenario["coreset"], seed)
        # shared orders and tables; where a node that held them is gone, this trial recomputes its own
        orders = _get_or_recover(ray, [refs[k][0] for k in keys], lambda: None)
        tables = {}
        if orders is not None:
            for k, o in zip(keys, orders):
                sources.set_order(k[0], k[1], o)
            got = _get_or_recover(ray, [refs[k][1] for k in need], lambda: None)
            tables = dict(zip(need, got)) if got is not None else {}
        got, _ = run_group([r for r in runs if r.seed == seed], sources, tables,
                           reweighting=scenario["model"]["reweighting"],
                           pixel=scenario["evaluation"]["pixel_metrics"], categories=categories)
        pairs.extend(got)
    t1 = time.perf_counter()
    cats = None
    if categories:
        from .data.merge import categories_table

        cats = categories_table([(r, res, res.categories) for r, res in pairs])
    ray.get(writer.write.remote(group, rows_table(pairs), steps_table(pairs, dim), cats))
    print(f"trial {group}: {len(runs)} runs, compute {t1 - t0:.1f} s, write {time.perf_counter() - t1:.1f} s",
          file=sys.stderr, flush=True)
    tune.report({"runs": len(runs)})


def _write_json(path: Path, obj) -> None:
    import json

    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _get_or_recover(ray, refs, recover):
    """ray.get, or `recover()` when the objects died with their node (features come back from the
    shared cache, orders and tables are recomputed): a retried trial then still completes."""
    try:
        return ray.get(refs, timeout=600)
    except (ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
        return recover()


def _from_cache(root, key, name, image_size):
    from .cache import load_cached

    tf = load_cached(Path(root), key, name, image_size)
    if tf is None:
        raise RuntimeError(f"features of task {name} were lost with their node and are not in the cache {root}")
    return tf


def _finish(sc, out_dir: Path, streams, quiet, cache_root):
    """Summary of everything in the folder (rebuilt on every run, so a resume completes it)."""
    import pyarrow as pa

    from .results import atomic_write_table, build_summary, chance_level

    mat = pd.read_parquet(out_dir / "matrices.parquet")
    steps = pd.read_parquet(out_dir / "steps.parquet")
    tasks = pd.read_parquet(out_dir / "tasks.parquet").set_index("task")
    baselines = {}
    for t, row in tasks.iterrows():
        for metric in mat["metric"].unique():
            pix = None if np.isnan(row.pixel_prevalence) else np.array([row.pixel_prevalence])
            if metric.startswith("pixel") and pix is None:
                continue
            baselines[(t, metric)] = chance_level(metric, np.array([row.image_prevalence]), pix, n_tasks=len(tasks))
    summary = build_summary(mat, steps, baselines, float(tasks["arch_mb"].iloc[0]))
    summary["maskless_pixels"] = sc["evaluation"].get("maskless_pixels", "skip")  # what pixel means run over
    atomic_write_table(pa.Table.from_pandas(summary, preserve_index=False), out_dir / "summary.parquet")
    if not quiet:
        _print_table(summary, sc)


def _print_table(summary: pd.DataFrame, sc) -> None:
    key = "image_f1" if "image_f1" in set(summary.metric) else summary.metric.iloc[0]
    s = summary[summary.metric == key]
    t = s.groupby(["strategy", "memory_size"]).agg(final_mean=("final_mean", "mean"),
                                                    forgetting_pct=("avg_forgetting_pct", "mean"),
                                                    bank_mb=("bank_mb", "mean"), runs=("trial_id", "count"))
    print(f"\n{key}: mean over orders and seeds", file=sys.stderr)
    print(t.round(3).to_string(), file=sys.stderr)


class _CallableModule(type(sys)):
    """`pclsim.sweep(...)` (the Python API, pclsim.api.sweep) while `pclsim.sweep.run_sweep` stays this module's."""

    def __call__(self, *args, **kwargs):
        from .api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
