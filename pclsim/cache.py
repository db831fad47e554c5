"""Content-addressed feature cache: a task's frozen-backbone features are extracted once.

Key = the extractor's identity (backbone, weights, layers, size) + the task's sample keys (file
path, size, mtime, or the synthetic generator's parameters) + labels. Entries are written
atomically, so a crash never leaves one that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

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


def _path(root: Path, key: str) -> Path:
    return root / "features" / f"{key}.npz"


def load_cached(root: Path, key: str, name: str, image_size: int) -> TaskFeatures | None:
    p = _path(root, key)
    if not p.exists():
        return None
    try:
        with np.load(p) as z:
            masks = z["masks"] if bool(z["has_masks"]) else None
            return TaskFeatures(name, z["train"], z["test"], z["labels"], masks, tuple(int(v) for v in z["grid"]),
                                image_size)
    except Exception:
        return None  # unreadable entry: extract again and overwrite it


def load_or_extract(task, extractor, *, cache_root: Path | None = None, workers: int = 2,
                    progress=None) -> TaskFeatures:
    """TaskFeatures of one task (pclsim.data.TaskData), from the cache or by running `extractor`."""
    from .data import iter_batches

    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    key = task_key(extractor.cache_key(), task)
    hit = load_cached(root, key, task.name, extractor.image_size)
    if hit is not None:
        return hit
    bs = extractor.batch_size
    resize = getattr(extractor, "resize", "crop")
    tr, _, _ = extractor.extract(iter_batches(task.train, extractor.image_size, bs, workers, resize=resize),
                                 total=len(task.train))
    if progress:
        progress()
    te, masks, labels = extractor.extract(iter_batches(task.test, extractor.image_size, bs, workers, resize=resize),
                                         total=len(task.test))
    feats = TaskFeatures(task.name, np.ascontiguousarray(tr.reshape(-1, tr.shape[-1]), dtype=np.float32),
                         np.ascontiguousarray(te, dtype=np.float32), np.asarray(labels, dtype=np.int64),
                         np.asarray(masks, dtype=bool) if task.has_masks else None, tuple(extractor.grid),
                         extractor.image_size)
    p = _path(root, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=p.parent)
    os.close(fd)
    try:
        np.savez(tmp, train=feats.train, test=feats.test, labels=feats.labels,
                 masks=feats.masks if feats.masks is not None else np.zeros(0, bool),
                 has_masks=np.array(feats.masks is not None), grid=np.array(feats.grid))
        os.replace(tmp, p)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return feats
