"""Candidate tables in the on-disk store: content-addressed, written chunk by chunk, read memory-mapped.

A candidate table (pclsim.core.candidates) lists, for every query patch of every task, the K nearest of
one source's candidate vectors: at the paper's size (six task sources, 2,000 test images of 784 patches,
K = 64) about 4.8 GB a source and 29 GB for a study, too much for Ray's object store without spilling.
The Ray layer therefore writes each table into the cache folder beside the features and passes a small
handle (`TableRef`); trials map the files and read them block by block (`read_rows` releases the pages),
so memory holds the banks and one block, not the tables (README, "Sizing a node").

Layout: <cache>/tables/<key>/ with meta.json, rows.npy (C,) int64 and, per query set (a task's test
images; its calibration images where held out), pos-<i>.npy (n, P, K) int32 and dist-<i>.npy (n, P, K)
float32, i the set's position in meta.json's "sets". The key hashes everything the table depends on
(`table_key`): the store entries of the tasks (features, hence data and backbone), the source, its
candidate rows and K; a table is never reused for other data. Entries are published by one rename
(a complete folder or none) and checked against meta.json before use (`lookup_table`): a damaged entry
of this user is discarded and rebuilt, another user's is never touched (as the feature store).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .entry import _fsync_dir, _publish, check_npy_files, checked_entry, npy_header
from .sharing import cannot_write, make_temp_dir

__all__ = ["TABLE_FORMAT", "TableRef", "TableWriter", "table_key", "table_dir", "lookup_table", "open_table"]

TABLE_FORMAT = "pclsim-candidate-table/v1"


def table_key(source: tuple, rows: np.ndarray, k: int, task_keys: dict) -> str:
    """32 hex digits: the content address of a candidate table.

    source: ("task", name) or ("pool", names); rows (C,) int64 the candidate rows; k the list length;
    task_keys {task name: feature store key} of every task (sources and queries), whose keys already
    hash the data, the backbone and the held-out split."""
    h = hashlib.sha256(TABLE_FORMAT.encode())
    h.update(repr(source).encode())
    h.update(f"k={int(k)}".encode())
    for name in sorted(task_keys):
        h.update(f"{name}\x00{task_keys[name]}\x01".encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def table_dir(root, key: str) -> Path:
    return Path(root) / "tables" / key


@dataclass(frozen=True)
class TableRef:
    """A small picklable handle on one stored candidate table: what Ray passes instead of the arrays.

    sets: ((query set name, n_images), ...) in file order; patches P, k K, n_rows C."""

    root: str
    key: str
    source: tuple
    n_rows: int
    k: int
    patches: int
    sets: tuple

    @property
    def path(self) -> Path:
        return table_dir(self.root, self.key)

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the lists (pos int32 + dist float32) and the rows."""
        return int(sum(n for _, n in self.sets) * self.patches * self.k * 8 + self.n_rows * 8)

    def open(self):
        """The CandidateTable with pos/dist as read-only memory maps. Raises FileNotFoundError when the entry
        is gone (a cleared cache, a node whose disk the table was written on)."""
        from ..core.candidates import CandidateTable

        p = self.path
        if not (p / "meta.json").is_file():
            raise FileNotFoundError(f"candidate table {self.key} is not in {Path(self.root) / 'tables'}")
        tb = CandidateTable(self.source, np.load(p / "rows.npy"))
        for i, (name, _) in enumerate(self.sets):
            tb.pos[name] = np.load(p / f"pos-{i}.npy", mmap_mode="r")
            tb.dist[name] = np.load(p / f"dist-{i}.npy", mmap_mode="r")
        return tb


def open_table(t):
    """A CandidateTable from a table or its handle (TableRef.open)."""
    return t.open() if isinstance(t, TableRef) else t


class _Damaged(Exception):
    """A stored table's files do not match its meta.json."""


def _check(p: Path) -> dict:
    """meta.json of a complete stored table whose files have the shapes and sizes it announces; raises
    _Damaged saying what is wrong, PermissionError when this user may not read a file."""
    try:
        return _check_files(p)
    except PermissionError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"{type(e).__name__}: {e}") from None


def _check_files(p: Path) -> dict:
    meta = json.loads((p / "meta.json").read_text())
    if meta.get("format") != TABLE_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}")
    shape = lambda n: (int(n), int(meta["patches"]), int(meta["k"]))  # noqa: E731
    want = {"rows.npy": ((int(meta["n_rows"]),), np.int64)}
    for i, (_, n) in enumerate(meta["sets"]):
        want[f"pos-{i}.npy"] = (shape(n), np.int32)
        want[f"dist-{i}.npy"] = (shape(n), np.float32)
    check_npy_files(p, want)
    return meta


def _ref(root, key: str, meta: dict) -> TableRef:
    src = meta["source"]
    source = (src[0], src[1] if isinstance(src[1], str) else tuple(src[1]))
    return TableRef(str(root), key, source, int(meta["n_rows"]), int(meta["k"]), int(meta["patches"]),
                    tuple((str(n), int(c)) for n, c in meta["sets"]))


def lookup_table(root, key: str) -> TableRef | None:
    """The handle of a complete stored table, or None (missing; or damaged and this user's: then discarded).

    Raises PclsimError (pclsim.store.sharing) when a damaged entry belongs to another user, or an entry
    cannot be read for its permissions (pclsim.store.entry.checked_entry, as for the features)."""
    meta = checked_entry(table_dir(root, key), _check, _Damaged)
    return None if meta is None else _ref(root, key, meta)


class TableWriter:
    """A `build_table` sink that streams a table into a temporary entry, one chunk at a time.

    Memory holds one chunk; `finish()` writes meta.json, publishes the entry by one rename and returns its
    TableRef. Raises PclsimError (pclsim.store.sharing.cannot_write) when the cache folder is not writable or
    full, naming it; the temporary folder is removed on any failure (`abort`)."""

    def __init__(self, root, key: str, source: tuple, rows: np.ndarray, patches: int, k: int):
        self.root, self.key, self.source, self.k, self.patches = str(root), key, source, int(k), int(patches)
        base = Path(root) / "tables"
        try:
            base.mkdir(parents=True, exist_ok=True)
            self.tmp = make_temp_dir(base, f".tmp-{key}-")
        except OSError as e:
            raise cannot_write(base, e) from None
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.sets: list = []
        self._files: dict = {}
        self._left: dict = {}
        self._io(lambda: np.save(self.tmp / "rows.npy", self.rows))

    def _io(self, fn):
        try:
            return fn()
        except OSError as e:
            self.abort()
            raise cannot_write(Path(self.root) / "tables", e) from None

    def begin(self, name: str, shape: tuple) -> None:
        i = len(self.sets)
        self.sets.append((name, int(shape[0])))

        def start():
            files = (open(self.tmp / f"pos-{i}.npy", "wb"), open(self.tmp / f"dist-{i}.npy", "wb"))
            npy_header(files[0], tuple(shape), np.dtype(np.int32))
            npy_header(files[1], tuple(shape), np.dtype(np.float32))
            return files

        self._files[name] = self._io(start)
        self._left[name] = int(shape[0])

    def write(self, name: str, pos: np.ndarray, dist: np.ndarray) -> None:
        """The next images' lists (m, P, K), in image order."""
        fp, fd = self._files[name]
        self._io(lambda: (fp.write(np.ascontiguousarray(pos, dtype=np.int32).tobytes()),
                          fd.write(np.ascontiguousarray(dist, dtype=np.float32).tobytes())))
        self._left[name] -= len(pos)

    def end(self, name: str) -> None:
        if self._left[name] != 0:
            self.abort()
            raise RuntimeError(f"candidate table {self.key}: {name} got {self._left[name]} images too few")
        for f in self._files.pop(name):
            self._io(lambda f=f: (f.flush(), os.fsync(f.fileno()), f.close()))

    def finish(self) -> TableRef:
        meta = {"format": TABLE_FORMAT, "source": [self.source[0], self.source[1] if isinstance(self.source[1], str)
                                                   else list(self.source[1])],
                "n_rows": len(self.rows), "k": self.k, "patches": self.patches,
                "sets": [[n, c] for n, c in self.sets]}
        self._io(lambda: (self.tmp / "meta.json").write_text(json.dumps(meta)))
        _fsync_dir(self.tmp)
        _publish(self.tmp, table_dir(self.root, self.key))
        ref = lookup_table(self.root, self.key)
        if ref is None:
            raise RuntimeError(f"candidate table {self.key} could not be stored in {Path(self.root) / 'tables'}")
        return ref

    def abort(self) -> None:
        import shutil

        for fs in self._files.values():
            for f in fs:
                try:
                    f.close()
                except OSError:
                    pass
        self._files.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
