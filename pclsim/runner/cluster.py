"""The sweep on Ray: start or join the cluster, fill the feature store, prepare every bank, hand the runs to Tune.

`run_ray` places the compute core's jobs (pclsim.study.engine) on the cluster: extractor actors fill
the feature store chunk by chunk, selection / bank / table jobs are Ray tasks (a GPU fraction where
the cluster has GPUs), the bank-manager actor carries out the re-reductions; the Tune trials are
in pclsim.runner.trials.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

import yaml

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import PclsimError
from ..study.scenario import expand_runs, group_runs, needs_difficulty
from .control import (memory_kill, say as _say, sigterm_as_ctrl_c, sigterm_is_ctrl_c, stage as _stage,
                      unwrap as _unwrap)
from .memory import extractor_plan, job_memory
from .trials import run_trials as _run_trials

__all__ = ["run_ray", "probe_address", "check_ray_temp_dir", "CHUNK_BATCHES"]


_ADDRESS_HINT = "start one with `ray start --head` or fix the address (RAY_ADDRESS is read when --address is not given)"


def ray_init(address, debug):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # a task that Ray's memory monitor kills is retried without limit by default (a loop under memory
    # pressure); a Ray this driver starts retries it 3 times, then the sweep stops with the memory error
    os.environ.setdefault("RAY_task_oom_retries", "3")
    kw = dict(include_dashboard=False, log_to_driver=debug, logging_level="INFO" if debug else "ERROR",
              configure_logging=True)
    if sigterm_is_ctrl_c():  # ray.init installs a SIGTERM handler that aborts the driver: put ours back after
        try:
            return _init(ray, address, kw)
        finally:
            sigterm_as_ctrl_c()
    return _init(ray, address, kw)


def _init(ray, address, kw):
    if address:
        probe_address(address)  # again: the sweep's preflight took time, the cluster may have gone
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, TimeoutError) as e:
            # something accepted the connection (a proxy or another service) but no Ray cluster answered
            raise PclsimError(f"--address {address}: no Ray cluster answers there ({e}); {_ADDRESS_HINT}") from None
    else:
        ray.init(**kw)
    return ray


# AF_UNIX socket paths hold at most 107 bytes on Linux (103 on macOS); a local Ray puts its sockets under
# <temp>/ray/session_<YYYY-MM-DD_HH-MM-SS_ffffff>_<pid>/sockets/plasma_store (pid: up to 7 digits).
_SOCKET_MAX = 103 if sys.platform == "darwin" else 107
_SESSION_TAIL = "/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"


def check_ray_temp_dir(env=None) -> None:
    """Before a local Ray starts (and before any data is read): its socket paths must fit under the temp
    folder Ray uses (RAY_TMPDIR, else TMPDIR on Linux, else /tmp). On SLURM and many HPC sites TMPDIR is a
    long per-job path. Raises PclsimError naming the variable and a short RAY_TMPDIR to use."""
    env = os.environ if env is None else env
    if env.get("RAY_TMPDIR"):
        var, base = "RAY_TMPDIR", env["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and env.get("TMPDIR"):
        var, base = "TMPDIR", env["TMPDIR"]
    else:
        var, base = None, "/tmp"
    longest = len(os.path.abspath(base).rstrip("/").encode()) + len(_SESSION_TAIL)
    if longest > _SOCKET_MAX and var:
        raise PclsimError(f"{var}={base}: too long for Ray's socket paths ({longest} > {_SOCKET_MAX} bytes under "
                          f"{var}/ray/session_*/sockets/): set RAY_TMPDIR to a short folder, e.g. "
                          "`export RAY_TMPDIR=/tmp/ray-$USER`")


def probe_address(address: str, timeout: float = 10.0) -> None:
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
                          f"({getattr(e, 'strerror', None) or e}); {_ADDRESS_HINT}") from None


def run_ray(sc, stream, todo, out_dir, address, max_concurrent, quiet, debug, cache_root, want_gallery=False,
             track=None, fresh=False, more=None):
    """Features, banks and the Tune trials of the groups `todo`, on one Ray session. more: for adaptive order
    designs (pclsim.runner.adaptive), a callable giving the next round's groups once these are done ({}: none
    left); each round prepares only the banks its runs add (the features, and the banks the bank manager
    persisted, are reused)."""
    ray = ray_init(address, debug)
    _stage(debug, "ray started")
    try:
        cache = str(cache_root or _default_cache())
        task_refs, feature_keys, dim = _extract_features(ray, sc, stream, out_dir, cache, quiet, debug)
        difficulty = None
        if needs_difficulty(sc):
            difficulty, todo = _order_by_difficulty(ray, sc, task_refs, todo, out_dir, quiet)
        gallery_run = _gallery_run(sc, difficulty) if want_gallery else None
        runs = [r for rs in todo.values() for r in rs] + ([gallery_run] if gallery_run else [])
        prepared = _prepare_banks(ray, sc, task_refs, runs, feature_keys, cache, quiet, fresh, debug)
        _stage(debug, "banks done")
        first = prepared
        while todo:
            from ..data.merge import category_parts

            _run_trials(ray, sc, todo, out_dir, task_refs, prepared, dim, feature_keys, max_concurrent, quiet,
                        track, category_parts(stream))
            _stage(debug, "trials done")
            todo = more() if more is not None else {}
            if todo:
                prepared = _prepare_banks(ray, sc, task_refs, [r for rs in todo.values() for r in rs], feature_keys,
                                          cache, quiet, False, debug)
        prepared = first
        if gallery_run is not None:
            from .actors import write_gallery

            ray.get(write_gallery.remote(str(out_dir), gallery_run, stream, task_refs, prepared[gallery_run.seed], sc))
    except Exception as e:
        raise _unwrap(e) from e  # --debug prints the whole chain, the remote traceback included
    finally:
        ray.shutdown()


def _default_cache():
    from ..store.cache import default_cache_dir

    return default_cache_dir()


CHUNK_BATCHES = 4  # images per extraction chunk = this many batches: chunk edges fall on batch edges,
                   # so every image meets the same batch as in a one-piece extraction, whatever the cluster


def _extract_features(ray, sc, stream, out_dir, cache, quiet, debug):
    """Fill the feature store: chunks of images handed to whichever extractor actor is free.

    One extractor actor per GPU, else one per CPU, spread over the nodes. Each chunk (CHUNK_BATCHES
    batches of one split of one task) is written by its actor into the store under `cache`; once a
    task's chunks are all in, the next free actor assembles its entry. Returns (task_refs: ObjectRefs
    of each task's TaskFeatures, which Ray stores as the small store handle and maps again wherever
    it is fetched; feature_keys: {task: (cache root, store key, name, image size)}; feature
    dimension); writes tasks.parquet and run_info.json. No feature array enters Ray's object store.
    """
    from collections import deque

    from tqdm import tqdm

    from .actors import FeatureExtractorActor, task_stats
    from ..results.tables import write_table
    from ..store.cache import remove_stale_temporaries
    from ..store.writing import lookup, plan_chunks, store_key

    remove_stale_temporaries(cache, quiet)  # what killed extractors left: one line when space came back
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    dtype = sc["model"].get("feature_dtype", "float16")
    pool = extractor_plan(ray, sc, gpus)
    n_act = pool["extractors"]
    opts = dict(num_gpus=1, num_cpus=1) if gpus else dict(num_cpus=1)
    actors = [FeatureExtractorActor.options(scheduling_strategy="SPREAD", max_restarts=2, max_task_retries=2,
                                            memory=pool["request_bytes"], **opts)
              .remote(sc["model"], sc["dataset"]["image_size"], cache, threads=1 if not gpus else 4,
                      resize=sc["dataset"].get("resize", "crop"))
              for _ in range(n_act)]
    try:
        infos = ray.get([a.info.remote() for a in actors])
    except Exception as e:
        raise memory_kill(e, "a feature extractor while loading its backbone") or e
    _stage(debug, "extractors ready")
    keys = {t.name: store_key(infos[0]["cache_key"], t, dtype) for t in stream}
    handles = {t.name: lookup(cache, keys[t.name]) for t in stream}
    todo = [t for t in stream if handles[t.name] is None]
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
                try:
                    got = ray.get(r)  # a data error surfaces here, naming its file
                except Exception as e:
                    raise memory_kill(e, f"the feature extractor of task {t.name}") or e
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
    weights = infos[0]["weights_record"]  # the weights the extractors really loaded: in both records
    record = yaml.safe_load((out_dir / "scenario.yaml").read_text())
    atomic_write_text(yaml.safe_dump(dict(record, weights_used=weights), sort_keys=False), out_dir / "scenario.yaml")
    atomic_write_json({
        "backbone": weights,
        "ray_nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cluster_resources": res,
        "extractors": [{k: v for k, v in i.items() if k != "cache_key"} for i in infos],
        "extractor_nodes": sorted({i["node"] for i in infos}), "extractor_memory": pool,
        "feature_store": {"root": str(cache), "dtype": dtype, "chunk_images": chunk_images,
                          "chunks_by_node": chunk_nodes, "extracted_tasks": [t.name for t in todo],
                          "chunk_writers": {n: sorted(v) for n, v in writers.items()}, "finalisers": finalisers,
                          "float32_gb": sum(h.float32_bytes for h in handles.values()) / 1e9,
                          "stored_gb": sum(h.nbytes for h in handles.values()) / 1e9}}, out_dir / "run_info.json")
    # TaskFeatures pickle as their store handle: each object is a few hundred bytes, and ray.get (or a
    # task argument) maps the entry again on whichever node it lands
    task_refs = {t.name: ray.put(handles[t.name].open()) for t in stream}
    stats = pd.DataFrame(ray.get([task_stats.remote(handles[t.name]) for t in stream]))
    stats["arch_mb"] = infos[0]["arch_mb"]
    from ..study.maskless import maskless_all_ones

    policy = sc["evaluation"].get("maskless_pixels", "skip")  # labelled, with the images that got all-1 masks
    stats["maskless_pixels"] = policy
    stats["maskless_all_ones"] = [
        [int(i) for i in np.flatnonzero(maskless_all_ones([s.label for s in t.test], t.name, sc["dataset"]["seed"]))]
        if policy == "paper" and not t.has_masks else [] for t in stream]
    stats["backbone_device"] = infos[0]["device"]
    write_table(stats, out_dir, "tasks")
    # (root, store key, name, image size): cache.load_cached / store.lookup(root, key) give them back
    feature_keys = {t.name: (cache, keys[t.name], t.name, sc["dataset"]["image_size"]) for t in stream}
    return task_refs, feature_keys, infos[0]["dim"]


def _prepare_banks(ray, sc, task_refs, runs, feature_keys, cache, quiet, fresh=False, debug=False):
    """Every selection order, bank and candidate table the runs need, each computed once.

    Selections and candidate tables are Ray tasks owned by the driver; the re-reductions run on the
    bank-manager actor, which persists them in the cache (read back unless `fresh`). Returns {seed: (orders, banks, table refs)}:
    orders and banks (index arrays) by value, tables as object references.
    The stages run one after another (selections, then re-reductions and joint selections, then candidate
    tables; each stage's jobs in parallel), so each has its own time and peak memory (--debug marks them;
    `pclsim plan` predicts them per stage).
    """
    from tqdm import tqdm

    from .actors import BankManagerActor, bank_job, selection_job, table_job
    from ..study.engine import plan_study

    coreset = sc["coreset"]
    plan = plan_study(runs, coreset)
    names = list(task_refs)
    feats = [task_refs[n] for n in names]
    gpu = {"num_gpus": 0.25} if ray.cluster_resources().get("GPU", 0) else {}  # heavy jobs go where the GPUs are
    mem = job_memory(ray, dict(zip(names, ray.get(feats))), coreset)  # store handles: shapes, no arrays
    manager = BankManagerActor.options(**gpu).remote(cache, {n: feature_keys[n][1] for n in names}, coreset,
                                                     not fresh)
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
            order_refs = [selection_job.options(**gpu, memory=mem.selection(k)).remote(sp.needs, coreset, seed, k,
                                                                                       names, *feats) for k in keys]
            try:
                wait_all(order_refs)
            except Exception as e:
                raise memory_kill(e) or e
            _stage(debug, "selections done")
            bank_refs = []
            for refs in sp.bank_jobs:
                if refs[0].kind in ("joint", "pool"):
                    bank_refs.append(bank_job.options(**gpu, memory=mem.banks(refs)).remote(
                        sp.needs, coreset, seed, refs, names, keys, *feats, *order_refs))
                else:
                    bank_refs.append(manager.rebalance.remote(sp.needs, seed, refs, names, keys, *feats, *order_refs))
            try:
                wait_all(bank_refs)
            except Exception as e:
                raise memory_kill(e) or e
            _stage(debug, "re-reductions done")
            table_refs = {src: table_job.options(**gpu, memory=mem.table(sp.needs, src)).remote(
                sp.needs, coreset, seed, src, names, keys, *feats, *order_refs) for src in sp.sources}
            try:
                wait_all(list(table_refs.values()))
            except Exception as e:
                raise memory_kill(e) or e
            _stage(debug, "candidate tables done")
            orders = dict(zip(keys, ray.get(order_refs)))
            banks = {}
            for part in ray.get(bank_refs):
                banks.update(part)
            prepared[seed] = (orders, banks, table_refs)
    ray.kill(manager)
    return prepared


def _gallery_run(sc, difficulty=None):
    """The state the gallery shows: PatchCoreCL (else the first strategy) at the largest memory size,
    after every task of the first order."""
    from ..study.scenario import expand_runs

    runs = expand_runs(sc, difficulty)
    strat = "patchcore_cl" if "patchcore_cl" in sc["strategies"] else sc["strategies"][0]
    m = max(sc["memory_sizes"])
    return next(r for r in runs if r.strategy == strat and r.memory_size == m)


def _order_by_difficulty(ray, sc, task_refs, todo, out_dir, quiet):
    """easy_to_hard / hard_to_easy: measure every task's single-task image AUROC at the largest
    memory size (statistics.measure_difficulty, in a Ray task next to the features), record it in
    tasks.parquet (columns difficulty_image_auroc, difficulty_rank: 1 = easiest) and give the groups
    still to run their real orders. Returns (difficulty, todo)."""

    from ..results.tables import read_table, write_table

    names = list(task_refs)

    @ray.remote(num_cpus=1)
    def measure(scenario, *features):
        from ..analysis.statistics import measure_difficulty

        return measure_difficulty(dict(zip(names, features)), scenario)

    _say(quiet, "measuring each task's single-task difficulty for the order")
    measured = ray.get(measure.remote(sc, *[task_refs[n] for n in names]))
    values = measured["values"]
    tasks = read_table(out_dir / "tasks.parquet")
    ranked = sorted(values, key=lambda t: -values[t])
    tasks["difficulty_image_auroc"] = tasks["task"].map(values).astype(float)
    tasks["difficulty_rank"] = tasks["task"].map({t: i + 1 for i, t in enumerate(ranked)}).astype("int64")
    write_table(tasks, out_dir, "tasks")
    real = group_runs(expand_runs(sc, difficulty=values))
    return values, {g: real[g] for g in todo}
