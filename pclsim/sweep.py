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
from .errors import Interrupted, PclsimError
from .scenario import expand_runs, group_runs, load_scenario, needs_difficulty, scenario_hash

__all__ = ["run_sweep", "prepare_output"]


def prepare_output(sc: dict, out: Path, fresh: bool, data_hash: str | None = None) -> None:
    """Check the folder is writable and holds this scenario (or nothing); write scenario.yaml.

    data_hash (`pclsim.data.preflight.data_fingerprint`) is stored in scenario.yaml. A resume whose data
    differ from those the finished trials were computed from stops with an error (PclsimError) rather
    than recomputing: replacing results is the user's decision (--fresh), never a side effect."""
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
        from .results import done_groups

        if data_hash and old.get("data_hash") not in (None, data_hash) and done_groups(out):
            raise PclsimError(f"{meta}: the results here were computed from different data or weights (data hash "
                              f"{old.get('data_hash')}, now {data_hash}: files added, removed or modified); "
                              "use --fresh to recompute them or --out for another folder")
    # Tune's own experiment folder is scratch: resuming goes by the finished Parquet parts
    shutil.rmtree(out / ".tune", ignore_errors=True)
    if fresh:
        for name in ("matrices.parquet", "steps.parquet", "summary.parquet", "tasks.parquet", "run_info.json",
                     "report", "gallery", "statistics.parquet", "routing.parquet", "routed.parquet",
                     "categories.parquet"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    body = dict(sc, pclsim_version=__version__, scenario_hash=scenario_hash(sc))
    if data_hash:
        body["data_hash"] = data_hash
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
    from .data.preflight import check_stream, data_fingerprint

    t_start = _T0[0] = time.perf_counter()
    from .tracking import parse_track

    parse_track(track)  # a bad --track fails before any work
    sc = load_scenario(scenario_path, data_root=data_root)
    if address or os.environ.get("RAY_ADDRESS"):
        _probe_address(address or os.environ["RAY_ADDRESS"])
    if gallery is not None:
        sc["evaluation"]["gallery"] = int(gallery)
    out_dir = Path(out or Path("results") / sc["name"]).expanduser().resolve()
    streams = load_stream(sc["dataset"], sc["dataset"]["root"])
    if sc["dataset"]["tasks"] is None:  # folder-like data sets: every category found
        from .scenario import resolve

        sc["dataset"]["tasks"] = [t.name for t in streams]
        sc = resolve(sc, scenario_path)
    cache_root = Path(cache_dir).resolve() if cache_dir else None
    check_stream(sc, streams, cache_dir=cache_root)  # all that can fail before the sweep fails here, before Ray
    # easy_to_hard / hard_to_easy: the orders are set once the features exist (_run_ray); group
    # names and counts do not depend on them, so a stand-in difficulty plans the groups
    runs = expand_runs(sc, difficulty=_stand_in_difficulty(sc) if needs_difficulty(sc) else None)
    groups = group_runs(runs)
    prepare_output(sc, out_dir, fresh, data_fingerprint(sc, streams))
    _write_json(out_dir / "data.json", _data_record(streams))
    from .results import done_groups

    done = done_groups(out_dir)
    todo = {g: rs for g, rs in groups.items() if g not in done}
    _say(quiet, f"pclsim {__version__}: {sc['name']}: {len(runs)} runs in {len(groups)} trials "
                f"({len(groups) - len(todo)} already done) -> {out_dir}")
    want_gallery = sc["evaluation"]["gallery"] > 0 and not (out_dir / "gallery").is_dir()
    if todo or want_gallery:
        try:
            _run_ray(sc, streams, todo, out_dir, address, max_concurrent, quiet, debug, cache_root, want_gallery,
                     track)
        except (Interrupted, KeyboardInterrupt):
            (out_dir / "summary.parquet").unlink(missing_ok=True)  # never a summary of an incomplete set
            raise
    _finish(sc, out_dir, streams, quiet, cache_root)
    _say(quiet, f"done in {time.perf_counter() - t_start:.1f} s: {out_dir}")
    return out_dir


def _data_record(streams) -> dict:
    """data.json: per task its sizes and, where seeded caps or the paper protocol chose files, which ones."""
    return {"tasks": {t.name: {"train": len(t.train), "test": len(t.test),
                               "test_anomalous": sum(int(s.label) for s in t.test), "has_masks": bool(t.has_masks),
                               "chosen": t.chosen} for t in streams}}


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
        _probe_address(address)  # again: the sweep's preflight took time, the cluster may have gone
        ray.init(address=address, **kw)
    else:
        ray.init(**kw)
    return ray


def _probe_address(address: str, timeout: float = 10.0) -> None:
    """Fail fast, naming the address, when no Ray cluster listens there (ray.init would retry for minutes)."""
    import socket

    if address == "auto" or address.startswith("local"):
        return
    client = address.startswith("ray://")
    if client:
        try:
            import grpc  # noqa: F401  (ray[client]: what ray.init needs for ray:// addresses)
        except ImportError:
            raise PclsimError(f"--address {address}: ray:// addresses need Ray Client: pip install 'ray[client]'") \
                from None
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "10001" if client else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise PclsimError(f"--address {address}: no Ray cluster answers at {host}:{port} "
                          f"({getattr(e, 'strerror', None) or e}); start one with `ray start --head` or fix the "
                          "address (RAY_ADDRESS is read when --address is not given)") from None


_INTERRUPTED = [False]


def _fit_catching_sigint(tuner):
    """tuner.fit(), noting a Ctrl-C: Tune stops gracefully on SIGINT and returns as if done, so the first
    SIGINT sets _INTERRUPTED and asks Tune to stop through its other stop signal (SIGUSR1); a second one
    raises KeyboardInterrupt at once."""
    import signal
    import threading

    _INTERRUPTED[0] = False
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return tuner.fit()
    prev = signal.getsignal(signal.SIGINT)

    def on_sigint(sig, frame):
        _INTERRUPTED[0] = True
        signal.signal(signal.SIGINT, prev)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGINT, prev)


# deterministic errors: the same inputs raise them again, so a retry only repeats the traceback
_DETERMINISTIC = (PclsimError, ValueError, LookupError, TypeError, ArithmeticError, AssertionError)


def _guarded_trial(config, **kw):
    """`_trial`, with a deterministic error reported through Tune (metric `pclsim_error`) instead of raised:
    Tune then neither retries it nor prints its traceback, and the driver raises it once, naming the trial."""
    from ray import tune

    try:
        return _trial(config, **kw)
    except _DETERMINISTIC as e:
        root = _root_cause(e)
        if not isinstance(root, _DETERMINISTIC):
            raise
        text = str(_unwrap(e))
        tune.report({"pclsim_error": text or type(root).__name__,
                     "pclsim_user_error": isinstance(root, PclsimError)})


def _run_ray(sc, streams, todo, out_dir, address, max_concurrent, quiet, debug, cache_root, want_gallery=False,
             track=None):
    ray = _ray_init(address, debug)
    _stage(debug, "ray started")
    try:
        cache = str(cache_root or _default_cache())
        task_refs, feature_keys, dim = _extract_features(ray, sc, streams, out_dir, cache, quiet, debug)
        difficulty = None
        if needs_difficulty(sc):
            difficulty, todo = _order_by_difficulty(ray, sc, task_refs, todo, out_dir, quiet)
        gallery_run = _gallery_run(sc, difficulty) if want_gallery else None
        runs = [r for rs in todo.values() for r in rs] + ([gallery_run] if gallery_run else [])
        prepared = _prepare_banks(ray, sc, task_refs, runs, feature_keys, cache, quiet)
        _stage(debug, "banks done")
        if todo:
            from .data.merge import category_parts

            _run_trials(ray, sc, todo, out_dir, task_refs, prepared, dim, feature_keys, max_concurrent, quiet,
                        track, category_parts(streams))
            _stage(debug, "trials done")
        if gallery_run is not None:
            from .actors import write_gallery

            ray.get(write_gallery.remote(str(out_dir), gallery_run, streams, task_refs, prepared[gallery_run.seed], sc))
    except Exception as e:
        raise _unwrap(e) from None
    finally:
        ray.shutdown()


def _default_cache():
    from .cache import default_cache_dir

    return default_cache_dir()


CHUNK_BATCHES = 4  # images per extraction chunk = this many batches: chunk edges fall on batch edges,
                   # so every image meets the same batch as in a one-piece extraction, whatever the cluster


def _extract_features(ray, sc, streams, out_dir, cache, quiet, debug):
    """Fill the feature store: chunks of images handed to whichever extractor actor is free.

    One extractor actor per GPU, else one per CPU, spread over the nodes. Each chunk (CHUNK_BATCHES
    batches of one split of one task) is written by its actor into the store under `cache`; once a
    task's chunks are all in, the next free actor assembles its entry. Returns (task_refs: ObjectRefs
    of each task's TaskFeatures, which Ray stores as the small store handle and maps again wherever
    it is fetched; feature_keys: {task: (cache root, store key, name, image size)}; feature
    dimension); writes tasks.parquet and run_info.json. No feature array enters Ray's object store.
    """
    from collections import deque

    import pyarrow as pa
    from tqdm import tqdm

    from .actors import FeatureExtractorActor, task_stats
    from .results import atomic_write_table
    from .store import lookup, plan_chunks, store_key

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    dtype = sc["model"].get("feature_dtype", "float16")
    n_act = max(1, gpus if gpus else cpus)
    opts = dict(num_gpus=1, num_cpus=1) if gpus else dict(num_cpus=1)
    actors = [FeatureExtractorActor.options(scheduling_strategy="SPREAD", max_restarts=2, max_task_retries=2,
                                            **opts).remote(sc["model"], sc["dataset"]["image_size"], cache,
                                                           threads=1 if not gpus else 4,
                                                           resize=sc["dataset"].get("resize", "crop"))
              for _ in range(n_act)]
    infos = ray.get([a.info.remote() for a in actors])
    _stage(debug, "extractors ready")
    keys = {t.name: store_key(infos[0]["cache_key"], t, dtype) for t in streams}
    handles = {t.name: lookup(cache, keys[t.name]) for t in streams}
    todo = [t for t in streams if handles[t.name] is None]
    chunk_images = CHUNK_BATCHES * infos[0]["batch_size"]
    jobs = deque(("chunk", t, c) for t in todo for c in plan_chunks(t, chunk_images))
    left = {t.name: {c for _, tt, c in jobs if tt.name == t.name} for t in todo}
    all_chunks = {n: sorted(v, key=lambda c: (c.split, c.start)) for n, v in left.items()}
    task_obj = {t.name: ray.put(t) for t in todo}  # the sample lists, shipped once per task
    free, busy, chunk_nodes, writers, finalisers = deque(actors), {}, {}, {}, {}
    with tqdm(total=sum(len(t.train) + len(t.test) for t in todo), desc="features", unit="img", disable=quiet,
              file=sys.stderr) as bar:
        while jobs or busy:
            while free and jobs:
                kind, t, c = jobs.popleft()
                a = free.popleft()
                if kind == "chunk":
                    r = a.extract_chunk.remote(keys[t.name], task_obj[t.name], c)
                else:
                    r = a.finalise.remote(keys[t.name], task_obj[t.name], all_chunks[t.name])
                busy[r] = (a, kind, t, c)
            ready, _ = ray.wait(list(busy), num_returns=1)
            for r in ready:
                a, kind, t, c = busy.pop(r)
                got = ray.get(r)  # a data error surfaces here, naming its file
                free.append(a)
                if kind == "chunk":
                    chunk_nodes[got["node"]] = chunk_nodes.get(got["node"], 0) + 1
                    writers.setdefault(t.name, set()).add(got["node"])
                    bar.update(got["images"])
                    left[t.name].discard(c)
                    if not left[t.name]:
                        jobs.appendleft(("finalise", t, None))  # before further chunks: frees disk and memory
                else:
                    handles[t.name] = got
                    finalisers[t.name] = infos[actors.index(a)]["node"]  # it reads every chunk of the task
    for a in actors:
        ray.kill(a)
    _stage(debug, "features done")
    _write_json(out_dir / "run_info.json", {
        "ray_nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cluster_resources": res,
        "extractors": [{k: v for k, v in i.items() if k != "cache_key"} for i in infos],
        "extractor_nodes": sorted({i["node"] for i in infos}),
        "feature_store": {"root": str(cache), "dtype": dtype, "chunk_images": chunk_images,
                          "chunks_by_node": chunk_nodes, "extracted_tasks": [t.name for t in todo],
                          "chunk_writers": {n: sorted(v) for n, v in writers.items()}, "finalisers": finalisers,
                          "float32_gb": sum(h.float32_bytes for h in handles.values()) / 1e9,
                          "stored_gb": sum(h.nbytes for h in handles.values()) / 1e9}})
    # TaskFeatures pickle as their store handle: each object is a few hundred bytes, and ray.get (or a
    # task argument) maps the entry again on whichever node it lands
    task_refs = {t.name: ray.put(handles[t.name].open()) for t in streams}
    stats = pd.DataFrame(ray.get([task_stats.remote(handles[t.name]) for t in streams]))
    stats["arch_mb"] = infos[0]["arch_mb"]
    from .maskless import maskless_all_ones

    policy = sc["evaluation"].get("maskless_pixels", "skip")  # labelled, with the images that got all-1 masks
    stats["maskless_pixels"] = policy
    stats["maskless_all_ones"] = [
        [int(i) for i in np.flatnonzero(maskless_all_ones([s.label for s in t.test], t.name, sc["dataset"]["seed"]))]
        if policy == "paper" and not t.has_masks else [] for t in streams]
    stats["backbone_device"] = infos[0]["device"]
    atomic_write_table(pa.Table.from_pandas(stats, preserve_index=False), out_dir / "tasks.parquet")
    # (root, store key, name, image size): cache.load_cached / store.lookup(root, key) give them back
    feature_keys = {t.name: (cache, keys[t.name], t.name, sc["dataset"]["image_size"]) for t in streams}
    return task_refs, feature_keys, infos[0]["dim"]


def _prepare_banks(ray, sc, task_refs, runs, feature_keys, cache, quiet):
    """Every selection order, bank and candidate table the runs need, each computed once.

    Selections and candidate tables are Ray tasks owned by the driver; the re-reductions run on the
    bank-manager actor, which persists them in the cache. Returns {seed: (orders, banks, table refs)}:
    orders and banks (index arrays) by value, tables as object references.
    """
    from tqdm import tqdm

    from .actors import BankManagerActor, bank_job, selection_job, table_job
    from .engine import plan_study

    coreset = sc["coreset"]
    plan = plan_study(runs, coreset)
    names = list(task_refs)
    feats = [task_refs[n] for n in names]
    gpu = {"num_gpus": 0.25} if ray.cluster_resources().get("GPU", 0) else {}  # heavy jobs go where the GPUs are
    manager = BankManagerActor.options(**gpu).remote(cache, {n: feature_keys[n][1] for n in names}, coreset)
    prepared = {}
    with tqdm(total=plan.n_jobs, desc="banks", unit="job", disable=quiet, file=sys.stderr) as bar:
        def wait_all(refs):
            refs = list(refs)
            while refs:
                ready, refs = ray.wait(refs, num_returns=1)
                ray.get(ready)  # an error surfaces here, with its task
                bar.update(len(ready))

        for seed, sp in plan.seeds.items():
            keys = list(sp.selections)
            order_refs = [selection_job.options(**gpu).remote(sp.needs, coreset, seed, k, names, *feats) for k in keys]
            bank_refs = []
            for refs in sp.bank_jobs:
                if refs[0].kind in ("joint", "pool"):
                    bank_refs.append(bank_job.options(**gpu).remote(sp.needs, coreset, seed, refs, names, keys,
                                                                    *feats, *order_refs))
                else:
                    bank_refs.append(manager.rebalance.remote(sp.needs, seed, refs, names, keys, *feats, *order_refs))
            # candidate tables need only the selections: they run alongside the bank jobs
            table_refs = {src: table_job.options(**gpu).remote(sp.needs, coreset, seed, src, names, keys, *feats,
                                                               *order_refs)
                          for src in sp.sources}
            wait_all(order_refs + bank_refs + list(table_refs.values()))
            orders = dict(zip(keys, ray.get(order_refs)))
            banks = {}
            for part in ray.get(bank_refs):
                banks.update(part)
            prepared[seed] = (orders, banks, table_refs)
    ray.kill(manager)
    return prepared


def _run_trials(ray, sc, todo, out_dir, task_refs, prepared, dim, feature_keys, max_concurrent, quiet,
                track=None, categories=None):
    """One Tune trial per group of runs; each hands its tables to a writer on this node."""
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm import tqdm

    from .actors import ResultsWriter
    from .tracking import tracker_callbacks

    writer = ResultsWriter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote(str(out_dir))
    trainable = tune.with_parameters(_guarded_trial, groups=todo, task_refs=task_refs, prepared=prepared,
                                     scenario=sc, writer=writer, dim=dim, feature_keys=feature_keys,
                                     categories=categories or None)
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="runs", unit="run", disable=quiet, file=sys.stderr)

    class _Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            bar.update(len(todo[trial.config["group"]]))

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
                                  callbacks=[_Progress(), *tracker_callbacks(track, out_dir, sc, todo)],
                                  failure_config=tune.FailureConfig(max_failures=3)),
    )
    grid = _fit_catching_sigint(tuner)
    bar.close()
    for r in grid:  # a deterministic error, reported once by _guarded_trial (not retried)
        err = (r.metrics or {}).get("pclsim_error")
        if err:
            cls = PclsimError if (r.metrics or {}).get("pclsim_user_error") else RuntimeError
            raise cls(f"trial {(r.config or {}).get('group')}: {err}")
    from .results import done_groups

    finished = done_groups(out_dir)
    left = sorted(set(todo) - finished)
    errors = [(r.config or {}, r.error) for r in grid if r.error is not None]
    if errors and not _INTERRUPTED[0]:
        cfg, e = errors[0]
        raise _unwrap(e, f"trial {cfg.get('group')}")
    if left:
        total = len(group_runs(expand_runs(sc)))
        if not _INTERRUPTED[0]:
            raise RuntimeError(f"Tune ended with {len(left)} of {total} trials unfinished (e.g. {left[0]}) and no error")
        raise Interrupted(f"interrupted after {total - len(left)} of {total} trials; rerun the same command to resume")


def _gallery_run(sc, difficulty=None):
    """The state the gallery shows: PatchCoreCL (else the first strategy) at the largest memory size,
    after every task of the first order."""
    from .scenario import expand_runs

    runs = expand_runs(sc, difficulty)
    strat = "patchcore_cl" if "patchcore_cl" in sc["strategies"] else sc["strategies"][0]
    m = max(sc["memory_sizes"])
    return next(r for r in runs if r.strategy == strat and r.memory_size == m)


def _stand_in_difficulty(sc) -> dict:
    """Any difficulty plans the groups of a difficulty-decided scenario: names and counts do not depend on it."""
    return {t: 0.0 for t in sc["dataset"]["tasks"]}


def _order_by_difficulty(ray, sc, task_refs, todo, out_dir, quiet):
    """easy_to_hard / hard_to_easy: measure every task's single-task image AUROC at the largest
    memory size (statistics.measure_difficulty, in a Ray task next to the features), record it in
    tasks.parquet (columns difficulty_image_auroc, difficulty_rank: 1 = easiest) and give the groups
    still to run their real orders. Returns (difficulty, todo)."""
    import pyarrow as pa

    from .results import atomic_write_table

    names = list(task_refs)

    @ray.remote(num_cpus=1)
    def measure(scenario, *features):
        from .statistics import measure_difficulty

        return measure_difficulty(dict(zip(names, features)), scenario)

    _say(quiet, "measuring each task's single-task difficulty for the order")
    measured = ray.get(measure.remote(sc, *[task_refs[n] for n in names]))
    values = measured["values"]
    path = out_dir / "tasks.parquet"
    tasks = pd.read_parquet(path)
    ranked = sorted(values, key=lambda t: -values[t])
    tasks["difficulty_image_auroc"] = tasks["task"].map(values).astype(float)
    tasks["difficulty_rank"] = tasks["task"].map({t: i + 1 for i, t in enumerate(ranked)}).astype("int64")
    atomic_write_table(pa.Table.from_pandas(tasks, preserve_index=False), path)
    real = group_runs(expand_runs(sc, difficulty=values))
    return values, {g: real[g] for g in todo}


def _root_cause(e: BaseException) -> BaseException:
    """The exception a Ray worker raised, out of Ray's and Tune's wrappers (RayTaskError.cause, __cause__)."""
    seen = 0
    while seen < 10:
        nxt = getattr(e, "cause", None) or e.__cause__
        if not isinstance(nxt, BaseException):
            return e
        e, seen = nxt, seen + 1
    return e


def _unwrap(e: BaseException, where: str | None = None) -> BaseException:
    """An error raised inside a Ray worker, with its own message (and `where`: the trial it belongs to).

    A PclsimError comes back as one of its own class (the CLI: `error:` line, exit 2); anything else as a
    RuntimeError "where: Type: message" (the CLI: an internal error). A driver-side PclsimError is kept as is.
    """
    if isinstance(e, PclsimError) and not hasattr(e, "cause"):
        return e
    root = _root_cause(e)
    lines = [ln for ln in str(root).splitlines() if ln.strip()]
    msg = lines[-1].strip() if lines and lines[0].startswith("ray::") else (lines[0].strip() if lines else "")
    prefix = f"{where}: " if where else ""
    if isinstance(root, PclsimError):
        try:
            return type(root)(prefix + msg)
        except TypeError:
            return PclsimError(prefix + msg)
    fn = getattr(e, "function_name", None)
    prefix = prefix or (f"in {fn}: " if fn else "")
    return RuntimeError(f"{prefix}{type(root).__name__}: {msg}" if msg else f"{prefix}{type(root).__name__}")


def _trial(config, groups, task_refs, prepared, scenario, writer, dim, feature_keys, categories=None):
    import ray
    from ray import tune

    from .results import routed_metrics_table, routing_table, rows_table, steps_table

    t0 = time.perf_counter()
    group = config["group"]
    runs = groups[group]
    names = list(task_refs)
    tasks = dict(zip(names, _get_or_recover(ray, [task_refs[n] for n in names],
                                            lambda: [_from_cache(*feature_keys[n]) for n in names])))
    from .maskless import apply_maskless_policy

    tasks = apply_maskless_policy(tasks, scenario["evaluation"].get("maskless_pixels", "skip"),
                                  scenario["dataset"].get("seed", 0))
    pairs = _run_prepared(ray, runs, tasks, prepared, scenario, categories)
    t1 = time.perf_counter()
    cats = None
    if categories:
        from .data.category_table import categories_table

        cats = categories_table([(r, res, res.categories) for r, res in pairs])
    ray.get(writer.write.remote(group, rows_table(pairs), steps_table(pairs, dim), routing_table(pairs),
                                routed_metrics_table(pairs), cats))
    print(f"trial {group}: {len(runs)} runs, compute {t1 - t0:.1f} s, write {time.perf_counter() - t1:.1f} s",
          file=sys.stderr, flush=True)
    tune.report({"runs": len(runs)})


def _run_prepared(ray, runs, tasks, prepared, scenario, categories=None):
    """Runs against prepared bank sources; tables lost with their node are recomputed here."""
    from .engine import candidate_rows, plan_study, restore_evaluator, run_group, run_table

    coreset = scenario["coreset"]
    pairs = []
    for seed, sp in plan_study(runs, coreset).seeds.items():
        orders, banks, table_refs = prepared[seed]
        got = _get_or_recover(ray, [table_refs[s] for s in sp.sources], lambda: None)
        if got is None:
            got = [run_table(tasks, sp.needs, coreset, seed, s, candidate_rows(sp.needs, orders, s))
                   for s in sp.sources]
        ev = restore_evaluator(tasks, sp, coreset, orders, banks, dict(zip(sp.sources, got)),
                               reweighting=scenario["model"]["reweighting"],
                               pixel=scenario["evaluation"]["pixel_metrics"])
        pairs.extend(run_group([r for r in runs if r.seed == seed], ev, coreset, categories))
    return pairs


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

    from .results import read_table

    mat = read_table(out_dir / "matrices.parquet")
    steps = read_table(out_dir / "steps.parquet")
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
    stats = _write_statistics(sc, out_dir, summary, mat, tasks, quiet)
    if not quiet:
        _print_table(summary, sc, stats)


def _write_statistics(sc, out_dir: Path, summary: pd.DataFrame, mat: pd.DataFrame, tasks: pd.DataFrame, quiet):
    """statistics.parquet: the order-robustness study of everything in the folder (pclsim.statistics)."""
    import pyarrow as pa

    from .results import STATISTICS_SCHEMA, atomic_write_table
    from .statistics import statistics_table

    difficulty = None
    if "difficulty_image_auroc" in tasks.columns and tasks["difficulty_image_auroc"].notna().all():
        difficulty = {"values": tasks["difficulty_image_auroc"].astype(float).to_dict(),
                      "memory_size": max(sc["memory_sizes"]), "seeds": list(sc["seeds"])}
    _say(quiet, "order statistics ...")
    stats = statistics_table(summary, mat, difficulty=difficulty, progress=not quiet)
    atomic_write_table(pa.Table.from_pandas(stats, schema=STATISTICS_SCHEMA, preserve_index=False),
                       out_dir / "statistics.parquet")
    return stats


def _print_table(summary: pd.DataFrame, sc, stats: pd.DataFrame | None = None) -> None:
    from .statistics import order_sentence

    key = "image_f1" if "image_f1" in set(summary.metric) else summary.metric.iloc[0]
    s = summary[summary.metric == key]
    t = s.groupby(["strategy", "memory_size"]).agg(final_mean=("final_mean", "mean"),
                                                    std_over_runs=("final_mean", "std"),
                                                    forgetting_pct=("avg_forgetting_pct", "mean"),
                                                    bank_mb=("bank_mb", "mean"), runs=("run_id", "count"))
    print(f"\n{key}: mean over orders and seeds (std over runs: how much order and seed move the final mean; "
          f"rebalance: {sc['coreset']['rebalance']})", file=sys.stderr)
    print(t.round(3).to_string(), file=sys.stderr)
    if stats is not None and s["order"].nunique() > 1:
        print("\nDoes the order matter? (statistics.parquet)", file=sys.stderr)
        for strategy, m in t.index:
            print("  " + order_sentence(stats, strategy, int(m), key), file=sys.stderr)


class _CallableModule(type(sys)):
    """`pclsim.sweep(...)` (the Python API, pclsim.api.sweep) while `pclsim.sweep.run_sweep` stays this module's."""

    def __call__(self, *args, **kwargs):
        from .api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
