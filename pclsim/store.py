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
crash keeps the chunks already written. Arrays are written batch by batch with plain file writes
(no task is ever held whole in memory) and read back with `np.load(mmap_mode="r")`.

float16 halves the store against float32; the features are rounded once (relative error <= 2^-11),
and every consumer computes in float32 or float64 from them. float32 stores the extractor's
output bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DTYPES", "FeatureRef", "store_key", "lookup", "plan_chunks", "write_chunk", "finalise",
           "extract_task", "entry_dir", "feature_bytes", "open_features", "Chunk"]

DTYPES = ("float16", "float32")
_FORMAT = "pclsim-feature-store/v1"
_COPY_BLOCK = 16 << 20  # bytes per read/write when assembling chunk files


def _check_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return np.dtype(dtype)


def store_key(extractor_key: str, task, dtype: str = "float16") -> str:
    """Content address of one task's entry: the extractor's identity, the store dtype, the task's samples."""
    from .cache import task_key

    _check_dtype(dtype)
    return task_key(f"{extractor_key}|store={_FORMAT}|dtype={dtype}", task)


def entry_dir(root, key: str) -> Path:
    return Path(root) / "features" / key


def _parts_dir(root, key: str) -> Path:
    return Path(root) / "features" / f".parts-{key}"


def feature_bytes(n_images: int, patches: int, dim: int, itemsize: int = 4) -> int:
    """Bytes of n_images x patches x dim features at `itemsize` bytes a value (4: float32, 2: float16)."""
    return int(n_images) * int(patches) * int(dim) * int(itemsize)


@dataclass(frozen=True)
class FeatureRef:
    """A small picklable handle on one task's entry in the store: what Ray passes instead of arrays.

    `open()` maps the entry: TaskFeatures with train (n_train * patches, dim) and test
    (n_test, patches, dim) as read-only memmaps in `dtype`, labels and masks in memory.
    """

    root: str
    key: str
    name: str
    image_size: int
    grid: tuple[int, int]
    dim: int
    n_train: int                 # images
    n_test: int                  # images
    dtype: str
    has_masks: bool

    @property
    def path(self) -> Path:
        return entry_dir(self.root, self.key)

    @property
    def patches(self) -> int:
        return int(self.grid[0] * self.grid[1])

    @property
    def float32_bytes(self) -> int:
        """Feature volume counted as float32 (train + test)."""
        return feature_bytes(self.n_train + self.n_test, self.patches, self.dim, 4)

    @property
    def nbytes(self) -> int:
        """Feature volume on disk, in the store dtype."""
        return feature_bytes(self.n_train + self.n_test, self.patches, self.dim, np.dtype(self.dtype).itemsize)

    def open(self):
        """TaskFeatures over the memory-mapped entry. Raises FileNotFoundError when the entry is gone."""
        from .protocol import TaskFeatures

        p = self.path
        if not (p / "meta.json").is_file():
            raise FileNotFoundError(f"features of task {self.name} are not in the store {p} "
                                    "(the cache folder must be storage every node reaches)")
        train = np.load(p / "train.npy", mmap_mode="r")
        test = np.load(p / "test.npy", mmap_mode="r")
        labels = np.load(p / "labels.npy")
        masks = np.load(p / "masks.npy") if self.has_masks else None
        return TaskFeatures(self.name, train, test, labels, masks, tuple(self.grid), self.image_size, ref=self)


def open_features(x):
    """TaskFeatures from a store handle; anything else (TaskFeatures already) unchanged."""
    return x.open() if isinstance(x, FeatureRef) else x


# ---------------------------------------------------------------------------------------------
def _npy_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(s) for s in shape)})


def _npy_data_offset(f) -> tuple[tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def _save_small(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _valid(p: Path) -> dict | None:
    """meta.json of a complete entry whose array files have exactly the sizes it announces, else None."""
    try:
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != _FORMAT:
            return None
        P = meta["grid"][0] * meta["grid"][1]
        want = {"train.npy": ((meta["n_train"] * P, meta["dim"]), meta["dtype"]),
                "test.npy": ((meta["n_test"], P, meta["dim"]), meta["dtype"]),
                "labels.npy": ((meta["n_test"],), "int64")}
        if meta["has_masks"]:
            want["masks.npy"] = ((meta["n_test"], meta["image_size"], meta["image_size"]), "bool")
        for fn, (shape, dt) in want.items():
            with open(p / fn, "rb") as f:
                got_shape, got_dt = _npy_data_offset(f)
                off = f.tell()
            if tuple(got_shape) != tuple(shape) or got_dt != np.dtype(dt):
                return None
            if os.path.getsize(p / fn) != off + int(np.prod(shape)) * np.dtype(dt).itemsize:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def _ref(root, key: str, meta: dict) -> FeatureRef:
    return FeatureRef(str(root), key, meta["name"], int(meta["image_size"]), tuple(meta["grid"]), int(meta["dim"]),
                      int(meta["n_train"]), int(meta["n_test"]), meta["dtype"], bool(meta["has_masks"]))


def lookup(root, key: str) -> FeatureRef | None:
    """The handle of a complete entry, or None (missing, or damaged: then it is moved out of the way)."""
    p = entry_dir(root, key)
    if not p.exists():
        return None
    meta = _valid(p)
    if meta is None:
        _discard(p)
        return None
    return _ref(root, key, meta)


def _discard(p: Path) -> None:
    trash = p.with_name(f".trash-{p.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(p, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    """Rename a complete temporary entry into place; if another worker got there first, keep theirs."""
    _fsync_dir(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        pass  # dest exists: another worker published the same content first
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(dest.parent)


def _write_meta(d: Path, task_name: str, image_size: int, grid, dim: int, n_train: int, n_test: int, dtype: str,
                has_masks: bool) -> None:
    meta = {"format": _FORMAT, "name": task_name, "image_size": int(image_size), "grid": [int(g) for g in grid],
            "dim": int(dim), "n_train": int(n_train), "n_test": int(n_test), "dtype": dtype,
            "has_masks": bool(has_masks)}
    (d / "meta.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------
def _embed_into(f, extractor, samples, dtype: np.dtype, workers: int, progress=None):
    """Run the extractor over `samples` batch by batch, appending each batch's features to the open file f
    (already holding the .npy header). Returns (masks (n, S, S) bool, labels (n,) int64)."""
    from .data import iter_batches

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
    raises (DataError naming the file) and leaves no entry behind then.
    """
    dt = _check_dtype(dtype)
    key = store_key(extractor.cache_key(), task, dtype)
    hit = lookup(root, key)
    if hit is not None:
        return hit
    base = Path(root) / "features"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=base))
    try:
        P, D = extractor.num_patches, extractor.dim
        with open(tmp / "train.npy", "wb") as f:
            _npy_header(f, (len(task.train) * P, D), dt)
            _embed_into(f, extractor, task.train, dt, workers, progress)
        with open(tmp / "test.npy", "wb") as f:
            _npy_header(f, (len(task.test), P, D), dt)
            masks, labels = _embed_into(f, extractor, task.test, dt, workers, progress)
        _save_small(tmp / "labels.npy", labels)
        if task.has_masks:
            _save_small(tmp / "masks.npy", masks)
        _write_meta(tmp, task.name, extractor.image_size, extractor.grid, D, len(task.train), len(task.test), dtype,
                    task.has_masks)
        if _valid(tmp) is None:
            raise RuntimeError(f"features of task {task.name}: the written entry does not match its shapes")
        _publish(tmp, entry_dir(root, key))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    ref = lookup(root, key)
    if ref is None:
        raise RuntimeError(f"features of task {task.name} could not be stored in {base}")
    return ref


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

    A chunk already written (by this or an earlier, crashed run) is not extracted again.
    """
    dt = _check_dtype(dtype)
    d = _parts_dir(root, key)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{chunk.stem}.npy"
    side = d / f"{chunk.stem}.labels.npz"
    if final.exists() and side.exists():
        return chunk.stem
    samples = getattr(task, chunk.split)[chunk.start:chunk.stop]
    n = len(samples)
    tag = uuid.uuid4().hex[:8]
    tmp, tmp_side = d / f".{chunk.stem}.{tag}.npy", d / f".{chunk.stem}.{tag}.npz"
    try:
        with open(tmp, "wb") as f:
            _npy_header(f, (n, extractor.num_patches, extractor.dim), dt)
            masks, labels = _embed_into(f, extractor, samples, dt, workers)
        with open(tmp_side, "wb") as f:
            np.savez(f, labels=labels, masks=masks if task.has_masks else np.zeros((0,), bool))
        os.replace(tmp_side, side)  # the side file first: a chunk counts as written once its features are
        os.replace(tmp, final)
    finally:
        for t in (tmp, tmp_side):
            if t.exists():
                t.unlink()
    return chunk.stem


def _append_npy(out, part: Path, expect_tail: tuple[int, ...], dt: np.dtype) -> int:
    """Copy the data of one chunk .npy into the open output file with plain reads (no mapping). Returns rows."""
    with open(part, "rb") as f:
        shape, got = _npy_data_offset(f)
        if tuple(shape[1:]) != tuple(expect_tail) or got != dt:
            raise ValueError(f"{part}: chunk of shape {shape} {got}, expected (*, {expect_tail}) {dt}")
        shutil.copyfileobj(f, out, _COPY_BLOCK)
    return int(shape[0])


def finalise(root, key: str, task, chunks: list[Chunk], *, image_size: int, grid, dim: int,
             dtype: str = "float16") -> FeatureRef:
    """Assemble a task's chunk files (all of `chunks`, written by any worker) into its store entry.

    Streams the chunk files into train.npy / test.npy (bounded memory), renames the entry into
    place, then removes the chunk folder. Returns the handle. Raises FileNotFoundError when a
    chunk is missing (its worker did not finish).
    """
    dt = _check_dtype(dtype)
    hit = lookup(root, key)
    if hit is not None:
        return hit
    P = int(grid[0] * grid[1])
    parts = _parts_dir(root, key)
    base = Path(root) / "features"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=base))
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
                _npy_header(out, shape, dt)
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
        _save_small(tmp / "labels.npy", np.concatenate(labels) if labels else np.zeros((0,), np.int64))
        if task.has_masks:
            _save_small(tmp / "masks.npy", np.concatenate(masks) if masks else np.zeros((0, S, S), bool))
        _write_meta(tmp, task.name, S, grid, dim, len(task.train), len(task.test), dtype, task.has_masks)
        if _valid(tmp) is None:
            raise RuntimeError(f"features of task {task.name}: the assembled entry does not match its shapes")
        _publish(tmp, entry_dir(root, key))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    ref = lookup(root, key)
    if ref is None:
        raise RuntimeError(f"features of task {task.name} could not be stored in {base}")
    shutil.rmtree(parts, ignore_errors=True)
    return ref
