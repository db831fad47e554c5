"""One entry of the feature store (pclsim.store.writing): its content address, its files, their checks, its handle.

An entry is features/<key>/ under the cache folder (layout in pclsim.store.writing); `key` hashes the
extractor's identity, the store format and dtype, and every sample's key and label (`task_key`),
so changed data, backbone or dtype never reuse an entry. Entries are published by one atomic
rename (`publish_entry`) and checked against their meta.json before use (`lookup`). A cache may be shared by
several users (pclsim.store.sharing): an entry another user owns is never moved or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DTYPES", "FORMAT", "FeatureRef", "hash_samples", "task_key", "store_key", "lookup", "entry_dir",
           "parts_dir", "feature_bytes", "open_features", "publish_entry", "check_dtype", "write_meta",
           "npy_header", "npy_data_offset", "save_small"]

DTYPES = ("float16", "float32")
FORMAT = "pclsim-feature-store/v1"


def check_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return np.dtype(dtype)


def hash_samples(h, task) -> None:
    """Feed a task's samples into the hashlib object h: per split, every sample's key (file path, size and
    mtime, its mask's too; or the synthetic generator's version and parameters) and label."""
    for split, samples in (("train", task.train), ("test", task.test)):
        h.update(split.encode())
        for s in samples:
            h.update(f"{s.key}\x00{s.label}\x01".encode())
    n_cal = int(getattr(task, "n_calibration", 0) or 0)
    if n_cal:  # held-out calibration images: another entry (0 keeps every earlier address)
        h.update(f"calibration={n_cal}".encode())
    n_val = int(getattr(task, "n_validation", 0) or 0)
    if n_val:
        h.update(f"validation={n_val}".encode())


def task_key(extractor_key: str, task) -> str:
    """32 hex digits: the content address of a task's features under one extractor (`extractor_key`: backbone,
    weights, layers, image size, ...) from its samples' keys and labels (`hash_samples`)."""
    h = hashlib.sha256(extractor_key.encode())
    h.update(task.name.encode())
    hash_samples(h, task)
    return h.hexdigest()[:32]


def store_key(extractor_key: str, task, dtype: str = "float16") -> str:
    """Content address of one task's entry: the extractor's identity, the store dtype, the task's samples."""
    check_dtype(dtype)
    return task_key(f"{extractor_key}|store={FORMAT}|dtype={dtype}", task)


def entry_dir(root, key: str) -> Path:
    return Path(root) / "features" / key


def parts_dir(root, key: str) -> Path:
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
    n_calibration: int = 0       # then n_calibration training images: held out (dataset.calibration)
    n_validation: int = 0        # the last n_validation "training" images: the labelled validation split
    validation_labels: tuple = ()

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
        from ..core.task_features import TaskFeatures

        p = self.path
        if not (p / "meta.json").is_file():
            raise FileNotFoundError(f"features of task {self.name} are not in the store {p} "
                                    "(the cache folder must be storage every node reaches)")
        train = np.load(p / "train.npy", mmap_mode="r")
        test = np.load(p / "test.npy", mmap_mode="r")
        labels = np.load(p / "labels.npy")
        masks = np.load(p / "masks.npy") if self.has_masks else None
        calibration = validation = None
        P, n_bank = self.patches, self.n_train - self.n_calibration - self.n_validation
        # views, no copy: the bank's rows first, then the calibration images, then the validation images
        if self.n_calibration:
            calibration = train[n_bank * P:(n_bank + self.n_calibration) * P].reshape(-1, P, self.dim)
        if self.n_validation:
            validation = train[(self.n_train - self.n_validation) * P:].reshape(-1, P, self.dim)
        return TaskFeatures(self.name, train[:n_bank * P], test, labels, masks, tuple(self.grid), self.image_size,
                            calibration=calibration, validation=validation,
                            validation_labels=np.asarray(self.validation_labels, dtype=np.int64) if validation
                            is not None else None, ref=self)


def open_features(x):
    """TaskFeatures from a store handle; anything else (TaskFeatures already) unchanged."""
    return x.open() if isinstance(x, FeatureRef) else x


# ---------------------------------------------------------------------------------------------
def npy_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(s) for s in shape)})


def npy_data_offset(f) -> tuple[tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def save_small(path: Path, a: np.ndarray) -> None:
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


class _Damaged(Exception):
    """An entry's files do not match its meta.json (the message says how)."""


def check_npy_files(p: Path, want: dict, error=ValueError) -> None:
    """Raise `error` saying what is wrong unless every file p/name of want {name: (shape, dtype)} is a .npy of
    exactly that shape and dtype and exactly the size they announce (a truncated copy is caught). Used by the
    features' entries and the candidate tables (pclsim.store.tables)."""
    for fn, (shape, dt) in want.items():
        with open(p / fn, "rb") as f:
            got_shape, got_dt = npy_data_offset(f)
            off = f.tell()
        if tuple(got_shape) != tuple(shape) or got_dt != np.dtype(dt):
            raise error(f"{fn}: {tuple(got_shape)} {got_dt}, expected {tuple(shape)} {np.dtype(dt)}")
        size, need = os.path.getsize(p / fn), off + int(np.prod(shape)) * np.dtype(dt).itemsize
        if size != need:
            raise error(f"{fn}: {size} bytes, expected {need}")


def _check(p: Path) -> dict:
    """meta.json of a complete entry whose array files have exactly the sizes it announces.

    Raises _Damaged saying what is wrong, PermissionError when this user may not read a file."""
    try:
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise _Damaged(f"meta.json: format {meta.get('format')!r}, expected {FORMAT}")
        P = meta["grid"][0] * meta["grid"][1]
        want = {"train.npy": ((meta["n_train"] * P, meta["dim"]), meta["dtype"]),
                "test.npy": ((meta["n_test"], P, meta["dim"]), meta["dtype"]),
                "labels.npy": ((meta["n_test"],), "int64")}
        if meta["has_masks"]:
            want["masks.npy"] = ((meta["n_test"], meta["image_size"], meta["image_size"]), "bool")
        check_npy_files(p, want, _Damaged)
        return meta
    except PermissionError:
        raise
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise _Damaged(f"{type(e).__name__}: {e}") from None


def _valid(p: Path) -> dict | None:
    """meta.json of a complete entry whose array files have exactly the sizes it announces, else None."""
    try:
        return _check(p)
    except (_Damaged, OSError):
        return None


def _ref(root, key: str, meta: dict) -> FeatureRef:
    return FeatureRef(str(root), key, meta["name"], int(meta["image_size"]), tuple(meta["grid"]), int(meta["dim"]),
                      int(meta["n_train"]), int(meta["n_test"]), meta["dtype"], bool(meta["has_masks"]),
                      int(meta.get("n_calibration", 0)), int(meta.get("n_validation", 0)),
                      tuple(int(v) for v in meta.get("validation_labels", ())))


def lookup(root, key: str) -> FeatureRef | None:
    """The handle of a complete entry, or None: missing, or damaged and this user's (then it is removed).

    Raises PclsimError (pclsim.store.sharing), naming the entry, its owner and the fix, when the entry
    cannot be read for its permissions, or is damaged and belongs to another user: an entry of another
    user is never moved or deleted, and a permission error is never taken for damage."""
    meta = checked_entry(entry_dir(root, key), _check, _Damaged)
    return None if meta is None else _ref(root, key, meta)


def checked_entry(p: Path, check, damaged=Exception) -> dict | None:
    """check(p) of the store folder p (its meta.json, after checking its files), or None: missing, or damaged
    (check raised `damaged`) and this user's, then discarded; the same for a folder replaced meanwhile is
    checked again. Raises PclsimError naming p when it cannot be read for its permissions or is damaged and
    another user's (pclsim.store.sharing): used by the features' entries and the candidate tables."""
    from .sharing import is_ours, not_ours, unreadable

    try:
        before = os.stat(p)
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise unreadable(p, e) from None
    try:
        return check(p)
    except PermissionError as e:
        raise unreadable(p, e) from None
    except damaged as e:
        try:
            now = os.stat(p)
        except FileNotFoundError:
            return None  # another sweep of ours discarded it meanwhile
        if (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
            return checked_entry(p, check, damaged)  # replaced meanwhile: check the new one
        if not is_ours(p):
            raise not_ours(p, str(e)) from None
        _discard(p, before)
        return None


def _discard(p: Path, st: os.stat_result) -> None:
    """Move this user's damaged entry `p` (the folder whose stat is `st`) aside and delete it."""
    from .sharing import remove_own, write_owner

    trash = p.with_name(f".trash-{p.name}-{os.urandom(4).hex()}")
    try:
        os.replace(p, trash)
    except OSError:
        return
    try:
        moved = os.stat(trash)
    except OSError:
        return
    if (moved.st_ino, moved.st_dev) != (st.st_ino, st.st_dev):  # a fresh entry was published in between: keep it
        try:
            os.rename(trash, p)
            return
        except OSError:
            pass  # and another one is in place again: the moved one is a duplicate
    try:
        write_owner(trash)  # if this process dies before the deletion ends, the next sweep finishes it
    except OSError:
        pass
    remove_own(trash)


def _publish(tmp: Path, dest: Path) -> None:
    """Rename a complete temporary entry into place; if another worker got there first, keep theirs."""
    from .sharing import OWNER

    (tmp / OWNER).unlink(missing_ok=True)  # the temporary folder's owner record: not part of the entry
    _fsync_dir(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        pass  # dest exists: another worker published the same content first
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(dest.parent)


def publish_entry(tmp: Path, root, key: str, task_name: str) -> FeatureRef:
    """Check a complete temporary entry against its meta.json, rename it into place (`_publish`) and return its
    handle. Raises RuntimeError when the written arrays do not match their shapes or it cannot be found after."""
    if _valid(tmp) is None:
        raise RuntimeError(f"features of task {task_name}: the written entry does not match its shapes")
    _publish(tmp, entry_dir(root, key))
    ref = lookup(root, key)
    if ref is None:
        raise RuntimeError(f"features of task {task_name} could not be stored in {Path(root) / 'features'}")
    return ref


def write_meta(d: Path, task_name: str, image_size: int, grid, dim: int, n_train: int, n_test: int, dtype: str,
                has_masks: bool, n_calibration: int = 0, validation_labels=()) -> None:
    meta = {"format": FORMAT, "name": task_name, "image_size": int(image_size), "grid": [int(g) for g in grid],
            "dim": int(dim), "n_train": int(n_train), "n_test": int(n_test), "dtype": dtype,
            "has_masks": bool(has_masks)}
    if n_calibration:
        meta["n_calibration"] = int(n_calibration)
    if len(validation_labels):
        meta["n_validation"] = len(validation_labels)
        meta["validation_labels"] = [int(v) for v in validation_labels]
    (d / "meta.json").write_text(json.dumps(meta))
