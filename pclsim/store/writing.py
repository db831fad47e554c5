"""The feature store: every task's frozen-backbone features on disk, memory-mapped, never whole in memory.

Layout, under the cache folder (`PCLSIM_CACHE_DIR`, on a cluster storage every node reaches)::

    features/<key>/meta.json      name, grid, image size, dim, counts, dtype (written last)
    features/<key>/train.npy      (N_train * P, D)  store dtype (float16 by default)
    features/<key>/test.npy       (N_test, P, D)    store dtype
    features/<key>/labels.npy     (N_test,) int64
    features/<key>/masks.npy      (N_test, S, S) bool, only when the task has pixel labels
    features/.parts-<key>/        chunk files while a task is being extracted by several workers

`key` is content-addressed (cache.task_key over the extractor's identity, the store dtype and
every sample's key), so changed data, backbone or dtype never reuse an entry. An entry is built
in a private temporary folder and renamed into place only when complete, so a crash never leaves
one that a later run trusts; chunk files are renamed into place the same way, so a rerun after a
crash keeps the chunks already written. Files and folders get their mode from the writer's umask and
their group from a setgid cache folder, and every temporary folder records its owner process, so that
a group can share one cache and a sweep removes what killed processes left (pclsim.store.sharing). Arrays are written batch by batch with plain file writes
(no task is ever held whole in memory) and read back with `np.load(mmap_mode="r")`.

float16 halves the store against float32; the features are rounded once (relative error <= 2^-11),
and every consumer computes in float32 or float64 from them. float32 stores the extractor's
output bit for bit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the entry's address, files, checks and handle live in pclsim.store.entry; re-exported here
from ..atomic import atomic_file
from .entry import (DTYPES, FeatureRef, check_dtype, entry_dir, feature_bytes, lookup,  # noqa: F401
                          npy_data_offset, npy_header, open_features, parts_dir, publish_entry, save_small, store_key,
                          task_key, write_meta)
from .sharing import cannot_write, make_temp_dir, remove_own

_npy_header = npy_header  # the name benchmarks/bench_paper_task.py writes its files with

__all__ = ["DTYPES", "FeatureRef", "store_key", "lookup", "plan_chunks", "write_chunk", "finalise",
           "extract_task", "entry_dir", "feature_bytes", "open_features", "Chunk"]

_COPY_BLOCK = 16 << 20  # bytes per read/write when assembling chunk files


# ---------------------------------------------------------------------------------------------
def _validation_labels(task) -> list[int]:
    """Labels of the task's validation images (the last n_validation of its training list)."""
    n = int(getattr(task, "n_validation", 0) or 0)
    return [int(s.label) for s in task.train[len(task.train) - n:]] if n else []


def _embed_into(f, extractor, samples, dtype: np.dtype, workers: int, progress=None):
    """Run the extractor over `samples` batch by batch, appending each batch's features to the open file f
    (already holding the .npy header). Returns (masks (n, S, S) bool, labels (n,) int64)."""
    from ..data import iter_batches

    S = extractor.image_size
    masks, labels = [], []
    import torch

    tdt = torch.float16 if dtype == np.float16 else torch.float32
    for images, m, y in iter_batches(samples, S, extractor.batch_size, workers,
                                     resize=getattr(extractor, "resize", "crop")):
        feats = extractor.embed(images, dtype=tdt).numpy()  # rounded to float16 on the device, if asked
        f.write(np.ascontiguousarray(feats, dtype=dtype).tobytes())
        b = feats.shape[0]
        masks.append(np.asarray(m, dtype=bool).reshape(b, S, S))
        labels.append(np.asarray(y, dtype=np.int64).reshape(b))
        if progress:
            progress(b)
    m_out = np.concatenate(masks) if masks else np.zeros((0, S, S), bool)
    y_out = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    return m_out, y_out


def extract_task(task, extractor, root, dtype: str = "float16", *, workers: int = 2, progress=None) -> FeatureRef:
    """One task into the store, in this process (no Ray): batches written as they come; returns its handle.

    A complete entry already in the store is returned as it is. Raises what the data loader
    raises (DataError naming the file) and leaves no entry behind then; PclsimError naming the entry
    or folder when the cache is another user's and may not be read or written (`lookup`,
    pclsim.store.sharing).
    """
    dt = check_dtype(dtype)
    key = store_key(extractor.cache_key(), task, dtype)
    hit = lookup(root, key)
    if hit is not None:
        return hit
    tmp = _temp_entry(root, key)
    try:
        P, D = extractor.num_patches, extractor.dim
        with open(tmp / "train.npy", "wb") as f:
            npy_header(f, (len(task.train) * P, D), dt)
            _embed_into(f, extractor, task.train, dt, workers, progress)
        with open(tmp / "test.npy", "wb") as f:
            npy_header(f, (len(task.test), P, D), dt)
            masks, labels = _embed_into(f, extractor, task.test, dt, workers, progress)
        save_small(tmp / "labels.npy", labels)
        if task.has_masks:
            save_small(tmp / "masks.npy", masks)
        write_meta(tmp, task.name, extractor.image_size, extractor.grid, D, len(task.train), len(task.test), dtype,
                    task.has_masks, getattr(task, "n_calibration", 0), _validation_labels(task))
        return publish_entry(tmp, root, key, task.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _temp_entry(root, key: str) -> Path:
    """A new temporary folder features/.tmp-<key>-* for an entry being written, with its owner record.
    PclsimError naming the folder when this user may not write there."""
    base = Path(root) / "features"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return make_temp_dir(base, f".tmp-{key}-")
    except PermissionError as e:
        raise cannot_write(base, e) from None


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """Images [start, stop) of one split of one task: the unit of work an extractor takes."""

    task: str
    split: str  # "train" | "test"
    start: int
    stop: int

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.start:09d}-{self.stop:09d}"


def plan_chunks(task, chunk_images: int) -> list[Chunk]:
    """Every split of `task` cut into runs of at most chunk_images images, train first."""
    c = max(1, int(chunk_images))
    out = []
    for split in ("train", "test"):
        n = len(getattr(task, split))
        out += [Chunk(task.name, split, s, min(n, s + c)) for s in range(0, n, c)]
    return out


def write_chunk(root, key: str, task, chunk: Chunk, extractor, dtype: str = "float16", *, workers: int = 2) -> str:
    """Extract one chunk into its own file under features/.parts-<key>/ (atomic rename); returns its stem.

    A chunk already written (by this or an earlier, crashed run) is not extracted again. Raises
    PclsimError naming the folder when this user may not write there (another user's cache).
    """
    dt = check_dtype(dtype)
    d = parts_dir(root, key)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise cannot_write(d.parent, e) from None
    final = d / f"{chunk.stem}.npy"
    side = d / f"{chunk.stem}.labels.npz"
    if final.exists() and side.exists():
        return chunk.stem
    if entry_dir(root, key).exists():  # another sweep on this cache finished the whole task
        return chunk.stem
    samples = getattr(task, chunk.split)[chunk.start:chunk.stop]
    n = len(samples)
    try:
        with atomic_file(final, mode=None) as f:  # the umask decides who may read it
            npy_header(f, (n, extractor.num_patches, extractor.dim), dt)
            masks, labels = _embed_into(f, extractor, samples, dt, workers)
            # published first: a chunk counts as written once its features are
            with atomic_file(side, mode=None) as g:
                np.savez(g, labels=labels, masks=masks if task.has_masks else np.zeros((0,), bool))
    except PermissionError as e:
        if e.filename and Path(e.filename).parent == d:  # the chunk folder, not an image of the data set
            raise cannot_write(d, e) from None
        raise
    except FileNotFoundError:
        # Two sweeps sharing a cache: the other one assembled the task and removed its chunk folder while
        # this chunk was being written. Its entry holds these features; anything else is a real error.
        if entry_dir(root, key).exists():
            return chunk.stem
        raise
    return chunk.stem


def _append_npy(out, part: Path, expect_tail: tuple[int, ...], dt: np.dtype) -> int:
    """Copy the data of one chunk .npy into the open output file with plain reads (no mapping). Returns rows."""
    with open(part, "rb") as f:
        shape, got = npy_data_offset(f)
        if tuple(shape[1:]) != tuple(expect_tail) or got != dt:
            raise ValueError(f"{part}: chunk of shape {shape} {got}, expected (*, {expect_tail}) {dt}")
        shutil.copyfileobj(f, out, _COPY_BLOCK)
    return int(shape[0])


def finalise(root, key: str, task, chunks: list[Chunk], *, image_size: int, grid, dim: int,
             dtype: str = "float16") -> FeatureRef:
    """Assemble a task's chunk files (all of `chunks`, written by any worker) into its store entry.

    Streams the chunk files into train.npy / test.npy (bounded memory), renames the entry into
    place, then removes this user's files of the chunk folder (and the folder, once empty). Returns
    the handle. Raises FileNotFoundError when a chunk is missing (its worker did not finish),
    PclsimError naming the folder when this user may not write into the cache.
    """
    dt = check_dtype(dtype)
    hit = lookup(root, key)
    if hit is not None:
        return hit
    P = int(grid[0] * grid[1])
    parts = parts_dir(root, key)
    tmp = _temp_entry(root, key)
    try:
        labels, masks = [], []
        for split, rows_per_image, tail in (("train", P, (dim,)), ("test", 1, (P, dim))):
            mine = sorted((c for c in chunks if c.split == split), key=lambda c: c.start)
            n = len(getattr(task, split))
            if [(c.start, c.stop) for c in mine] != list(zip([0] + [c.stop for c in mine[:-1]], [c.stop for c in mine])) \
                    or (mine and mine[-1].stop != n) or (not mine and n):
                raise ValueError(f"task {task.name}: the {split} chunks do not cover images 0..{n}")
            shape = (n * P, dim) if split == "train" else (n, P, dim)
            with open(tmp / f"{split}.npy", "wb") as out:
                npy_header(out, shape, dt)
                for c in mine:
                    part = parts / f"{c.stem}.npy"
                    if not part.exists():
                        raise FileNotFoundError(f"task {task.name}: chunk {c.stem} was never written to {parts}")
                    got = _append_npy(out, part, (P, dim), dt)
                    if got != c.stop - c.start:
                        raise ValueError(f"{part}: {got} images, expected {c.stop - c.start}")
                    if split == "test":
                        with np.load(parts / f"{c.stem}.labels.npz") as z:
                            labels.append(z["labels"])
                            if task.has_masks:
                                masks.append(z["masks"])
        S = int(image_size)
        save_small(tmp / "labels.npy", np.concatenate(labels) if labels else np.zeros((0,), np.int64))
        if task.has_masks:
            save_small(tmp / "masks.npy", np.concatenate(masks) if masks else np.zeros((0, S, S), bool))
        write_meta(tmp, task.name, S, grid, dim, len(task.train), len(task.test), dtype, task.has_masks,
                   getattr(task, "n_calibration", 0), _validation_labels(task))
        ref = publish_entry(tmp, root, key, task.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    remove_own(parts)  # chunk files another user wrote (a shared cache) are theirs to remove
    return ref
