"""Content-addressed feature cache: a task's frozen-backbone features are extracted once.

Key = the extractor's identity (backbone, weights, layers, size) + the task's sample keys (file
path, size, mtime, or the synthetic generator's parameters) + labels. The entries themselves live
in the on-disk feature store (pclsim.store: chunked, memory-mapped, float16 by default), written
atomically, so a crash never leaves one that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .protocol import TaskFeatures

__all__ = ["default_cache_dir", "task_key", "load_or_extract", "load_cached"]


def default_cache_dir() -> Path:
    env = os.environ.get("PCLSIM_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "pclsim"


def _synthetic_source_hash() -> str:
    """Generated images change when the generator's code does: its source is part of their identity."""
    from .data import synthetic

    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()


def task_key(extractor_key: str, task) -> str:
    h = hashlib.sha256(extractor_key.encode())
    h.update(task.name.encode())
    if any(s.path is None for s in task.train[:1] + task.test[:1]):
        h.update(_synthetic_source_hash().encode())
    for split, samples in (("train", task.train), ("test", task.test)):
        h.update(split.encode())
        for s in samples:
            h.update(f"{s.key}\x00{s.label}\x01".encode())
    return h.hexdigest()[:32]


def load_cached(root: Path, key: str, name: str | None = None, image_size: int | None = None) -> TaskFeatures | None:
    """The stored features under `key` (a store key, see store.store_key), memory-mapped, or None."""
    from .store import lookup

    ref = lookup(root, key)
    return ref.open() if ref is not None else None


def load_or_extract(task, extractor, *, cache_root: Path | None = None, workers: int = 2,
                    progress=None, dtype: str = "float16") -> TaskFeatures:
    """TaskFeatures of one task (pclsim.data.TaskData), from the store or by running `extractor` into it.

    train (N*P, D) and test (N, P, D) are read-only memmaps in `dtype` ("float16" | "float32");
    see pclsim.store. progress, if given, is called with the number of images of every batch.
    """
    from .store import extract_task

    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    return extract_task(task, extractor, root, dtype, workers=workers, progress=progress).open()
