"""Ray actors and tasks that place the pure core on machines. No math lives here."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from .cache import load_or_extract
from .engine import make_sources
from .protocol import Evaluator

__all__ = ["FeatureExtractorActor", "BankManagerActor", "ResultsWriter", "prepare_source", "task_stats"]


@ray.remote
class FeatureExtractorActor:
    """One backbone per GPU (or per CPU slot); fills the feature cache once per task."""

    def __init__(self, model: dict, image_size: int, cache_root: str, threads: int = 1, resize: str = "crop"):
        import torch

        torch.set_num_threads(max(1, threads))
        from .features import FeatureExtractor

        self.cache_root = Path(cache_root)
        self.extractor = FeatureExtractor(model["backbone"], model["weights"], model["layers"], image_size=image_size,
                                          batch_size=model.get("batch_size", 32), resize=resize)
        self.threads = threads

    def info(self) -> dict:
        from .backbones import architecture_mb

        return {"node": ray.get_runtime_context().get_node_id(), "dim": self.extractor.dim,
                "arch_mb": architecture_mb(self.extractor.model), "device": str(self.extractor.device),
                "pid": os.getpid(), "cache_key": self.extractor.cache_key()}

    def extract(self, task):
        return load_or_extract(task, self.extractor, cache_root=self.cache_root, workers=max(2, self.threads))


@ray.remote(num_cpus=1, num_returns=2, max_retries=2)
def prepare_source(kind, src, sizes, coreset, seed, names, dep_keys, *args):
    """Selection order and prefix-NN tables of one bank source. args: task features, then dep orders."""
    tasks = dict(zip(names, args[: len(names)]))
    sources = make_sources(tasks, sizes, coreset, seed)
    for k, order in zip(dep_keys, args[len(names):]):
        sources.set_order(k[0], k[1], order)
    order = sources.order(kind, src)
    tables = Evaluator(sources).tables(kind, src)
    return order, tables


@ray.remote(num_cpus=1)
def write_gallery(out_dir, run, streams, task_refs, prepared, sizes, scenario):
    from .gallery import gallery_files

    names = list(task_refs)
    tasks = dict(zip(names, ray.get([task_refs[n] for n in names])))
    keys = list(prepared)
    orders = ray.get([prepared[k][0] for k in keys])
    tables = ray.get([prepared[k][1] for k in keys])
    return gallery_files(Path(out_dir) / "gallery", run, streams, tasks, dict(zip(keys, orders)),
                         dict(zip(keys, tables)), sizes, scenario)


@ray.remote(num_cpus=0)
def task_stats(tf) -> dict:
    """Sizes and label prevalences of one task (chance-level baselines, the report's task table)."""
    import numpy as np

    return {"task": tf.name, "train_patches": int(tf.train.shape[0]), "test_images": int(tf.test.shape[0]),
            "dim": int(tf.dim), "image_prevalence": float(np.mean(tf.labels)),
            "pixel_prevalence": float(np.mean(tf.masks)) if tf.masks is not None else float("nan")}


@ray.remote(num_cpus=0)
class BankManagerActor:
    """Keeps every bank source of a study (per-task greedy orders, joint orders, NN tables).

    PatchCoreCL's fixed-budget rebalancing is a truncation of these orders, so the manager
    computes each source once, at its largest size, and hands trials references to them.
    """

    def __init__(self, task_refs: dict, coreset: dict):
        self.task_refs = task_refs
        self.names = list(task_refs)
        self.coreset = coreset
        self.refs: dict = {}

    def prepare(self, seed: int, sizes: dict, sources: list) -> dict:
        """Launch every source of `seed` (dependencies first); returns {(kind, src): (order_ref, tables_ref)}."""
        out = {}
        task_args = [self.task_refs[n] for n in self.names]
        for kind, src in sources:
            key = (seed, kind, tuple(src))
            if key not in self.refs:
                deps = []
                if kind == "joint" and self.coreset.get("joint", "composable") == "composable":
                    deps = [("task", (t,)) for t in src]
                dep_refs = [self.refs[(seed, k, s)][0] for k, s in deps]
                self.refs[key] = prepare_source.remote(kind, tuple(src), sizes, self.coreset, seed, self.names,
                                                       deps, *task_args, *dep_refs)
            out[(kind, tuple(src))] = self.refs[key]
        return out


@ray.remote(num_cpus=0, max_restarts=-1)
class ResultsWriter:
    """Writes each finished group's Parquet parts atomically on the driver's node."""

    def __init__(self, out_dir: str):
        self.out = Path(out_dir)

    def write(self, group: str, matrices, steps, categories=None) -> int:
        from .results import atomic_write_table

        if categories is not None:  # per-category values of merged tasks (pclsim.data.merge)
            atomic_write_table(categories, self.out / "categories.parquet" / f"part-{group}.parquet")
        # steps first: a group counts as done only once its matrices part exists too
        atomic_write_table(steps, self.out / "steps.parquet" / f"part-{group}.parquet")
        atomic_write_table(matrices, self.out / "matrices.parquet" / f"part-{group}.parquet")
        return matrices.num_rows
