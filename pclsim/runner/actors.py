"""Ray actors and tasks that place the pure core on machines. No math lives here."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import ray

from ..store.cache import load_or_extract
from ..study.engine import candidate_rows, job_name, run_banks, run_selection, stored_table

__all__ = ["FeatureExtractorActor", "BankManagerActor", "ResultsWriter", "selection_job", "bank_job", "table_job",
           "task_stats", "ACTOR_RESTARTS"]


@ray.remote
class FeatureExtractorActor:
    """One backbone per GPU (or per CPU slot). Takes chunks of images from the driver's queue and
    writes each into the feature store (pclsim.store.writing); finalises a task once all its chunks are in.
    Returns store handles (FeatureRef), never arrays."""

    def __init__(self, model: dict, image_size: int, cache_root: str, threads: int = 1, resize: str = "crop"):
        import torch

        torch.set_num_threads(max(1, threads))
        from ..core.features import FeatureExtractor

        self.cache_root = Path(cache_root)
        self.dtype = model.get("feature_dtype", "float16")
        self.extractor = FeatureExtractor(model["backbone"], model["weights"], model["layers"], image_size=image_size,
                                          batch_size=model.get("batch_size", 32), resize=resize)
        self.threads = threads

    def info(self) -> dict:
        from ..core.backbones import architecture_mb

        return {"node": ray.get_runtime_context().get_node_id(), "dim": self.extractor.dim,
                "grid": list(self.extractor.grid), "batch_size": self.extractor.batch_size,
                "arch_mb": architecture_mb(self.extractor.model), "device": str(self.extractor.device),
                "pid": os.getpid(), "cache_key": self.extractor.cache_key(),
                "weights_record": self.extractor.weights_record()}

    def extract_chunk(self, key: str, task, chunk) -> dict:
        from ..store.writing import write_chunk

        write_chunk(self.cache_root, key, task, chunk, self.extractor, self.dtype, workers=max(2, self.threads))
        return {"node": ray.get_runtime_context().get_node_id(), "images": chunk.stop - chunk.start}

    def finalise(self, key: str, task, chunks):
        from ..store.writing import finalise

        ex = self.extractor
        return finalise(self.cache_root, key, task, chunks, image_size=ex.image_size, grid=ex.grid, dim=ex.dim,
                        dtype=self.dtype)

    def extract(self, task):
        """A whole task in this actor; returns its store handle."""
        return load_or_extract(task, self.extractor, cache_root=self.cache_root, workers=max(2, self.threads),
                               dtype=self.dtype).ref


def _tasks(names, feats) -> dict:
    return dict(zip(names, feats))


def _timed(name: str, fn, *args):
    """fn(*args), then one line `job[NAME] SECONDS s` on stderr: the driver shows it under --debug (Ray forwards
    worker output there only then), and benchmarks/bench_plan.py fits `pclsim plan`'s job coefficients to it."""
    t0 = time.perf_counter()
    out = fn(*args)
    print(f"job[{name}] {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    return out


@ray.remote(num_cpus=1, max_retries=2)
def selection_job(needs, coreset, seed, key, names, *feats):
    """One selection order (greedy k-center of one task's patches at its planned length)."""
    return _timed(job_name(seed, "selection", key), run_selection, _tasks(names, feats), needs, coreset, seed, key)


@ray.remote(num_cpus=1, max_retries=2)
def bank_job(needs, coreset, seed, refs, names, order_keys, *args):
    """Joint selections (composable coresets) of some task sets. args: task features, then selection orders."""
    feats, orders = args[: len(names)], args[len(names):]
    return _timed(job_name(seed, "banks", refs), run_banks, _tasks(names, feats), needs, coreset, seed,
                  dict(zip(order_keys, orders)), refs)


@ray.remote(num_cpus=1, max_retries=2)
def table_job(needs, coreset, seed, source, names, order_keys, *args):
    """The candidate table of one source: K nearest candidates of every test patch among the planned
    prefixes of its selections, written into the on-disk store beside the features (Ray passes its
    TableRef, never the lists: pclsim.store.tables). args: task features, then selection orders."""
    feats, orders = args[: len(names)], args[len(names):]
    rows = candidate_rows(needs, dict(zip(order_keys, orders)), source)
    return _timed(job_name(seed, "table", source), stored_table, _tasks(names, feats), needs, coreset, seed, source,
                  rows)


@ray.remote(num_cpus=1)
def write_gallery(out_dir, run, streams, task_refs, prepared, scenario):
    from ..study.gallery import gallery_files
    from ..study.engine import plan_study, restore_evaluator

    names = list(task_refs)
    tasks = dict(zip(names, ray.get([task_refs[n] for n in names])))
    orders, banks, table_refs = prepared
    sp = plan_study([run], scenario["coreset"]).seeds[run.seed]
    tables = dict(zip(sp.sources, ray.get([table_refs[s] for s in sp.sources])))
    ev = restore_evaluator(tasks, sp, scenario["coreset"], orders, banks, tables,
                           reweighting=scenario["model"]["reweighting"])
    return gallery_files(Path(out_dir) / "gallery", run, streams, tasks, ev, scenario)


@ray.remote(num_cpus=0)
def task_stats(tf) -> dict:
    """Sizes and label prevalences of one task (chance-level baselines, the report's task table).

    tf: a store handle (FeatureRef) or TaskFeatures; only the labels and masks are read."""
    import numpy as np

    from ..store.writing import open_features

    tf = open_features(tf)
    return {"task": tf.name, "train_patches": int(tf.train.shape[0]),
            "calibration_images": 0 if tf.calibration is None else int(tf.calibration.shape[0]),
            "test_images": int(tf.test.shape[0]),
            "dim": int(tf.dim), "image_prevalence": float(np.mean(tf.labels)),
            "pixel_prevalence": float(np.mean(tf.masks)) if tf.masks is not None else float("nan")}


# Restarts of the long-lived actors are bounded: an actor that Ray's memory monitor kills on every restart
# would otherwise loop for ever; after these, the sweep stops with the memory error (control.memory_kill).
ACTOR_RESTARTS = 3


@ray.remote(num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
class BankManagerActor:
    """Carries out PatchCoreCL's fixed-budget rebalancing: every re-reduction chain of a task (under
    `rebalance: authors`, greedy k-center re-run on each stored bank with a fresh projection).

    It reserves no CPU: an actor holds its slot for its whole life, and its chains (re-reductions of
    banks of at most M vectors) are short next to the selections and joint jobs that the slot would
    otherwise run (on 2 cores, holding one halved the bank stage's throughput).
    What it computes is persisted in the shared cache folder, keyed by the features, the coreset
    settings, the pclsim version and a digest of the input selections (the orders it re-reduces), and
    returned to the driver, which owns the results: a lost actor is restarted by Ray
    (at most ACTOR_RESTARTS times) and answers from the cache instead of recomputing; a lost node loses
    nothing the driver holds.
    """

    def __init__(self, cache_root: str, feature_keys: dict, coreset: dict, read_cached: bool = True):
        self.root = Path(cache_root) / "banks"
        self.feature_keys = feature_keys
        self.coreset = coreset
        self.read_cached = read_cached  # False under --fresh: recompute (and rewrite) every chain
        self.computed = 0

    def _path(self, seed, refs, orders=()) -> Path:
        import hashlib
        import json

        from .._version import __version__

        sel = hashlib.sha256()
        for o in orders:  # the input selections: a release that selects differently never reuses these
            a = np.ascontiguousarray(o)
            sel.update(f"{a.dtype}|{a.shape}|".encode())
            sel.update(a.tobytes())
        body = json.dumps([sorted(self.feature_keys.items()), self.coreset, seed, [repr(r) for r in refs],
                           __version__, sel.hexdigest()], default=str)
        return self.root / f"{hashlib.sha256(body.encode()).hexdigest()[:32]}.pkl"

    def rebalance(self, needs, seed, refs, names, order_keys, *args):
        """{ref: parts} of one task's banks (its selections on arrival and all their re-reductions)."""
        import pickle

        from ..atomic import atomic_write_bytes

        feats, orders = args[: len(names)], args[len(names):]
        path = self._path(seed, refs, orders)
        if self.read_cached and path.exists():
            try:
                return pickle.loads(path.read_bytes())
            except Exception:
                pass  # unreadable entry: recompute and overwrite it
        out = _timed(job_name(seed, "banks", refs), run_banks, _tasks(names, feats), needs, self.coreset, seed,
                     dict(zip(order_keys, orders)), refs)
        self.computed += 1
        try:  # the umask decides who may read it; another user's file (a shared cache) is never replaced
            if not path.exists() or path.stat().st_uid == os.geteuid():
                atomic_write_bytes(pickle.dumps(out), path, mode=None)
        except OSError:
            pass  # a read-only cache still gives results, only without the restart guarantee
        return out

    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
class ResultsWriter:
    """Writes each finished group's Parquet parts atomically on the driver's node."""

    def __init__(self, out_dir: str):
        self.out = Path(out_dir)

    def write(self, group: str, matrices, steps, routing=None, routed=None, categories=None) -> int:
        from ..results.tables import write_table

        part = f"part-{group}"
        if categories is not None:  # per-category values of merged tasks (pclsim.data.merge)
            write_table(categories, self.out, "categories", part)
        # matrices last: a group counts as done only once every other part exists
        write_table(steps, self.out, "steps", part)
        if routing is not None:
            write_table(routing, self.out, "routing", part)
        if routed is not None:
            write_table(routed, self.out, "routed", part)
        write_table(matrices, self.out, "matrices", part)
        return matrices.num_rows
