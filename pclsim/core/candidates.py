"""Candidate lists: exact nearest neighbours in ANY subset bank from one K-nearest search per source.

Every bank pclsim builds is a subset of a small candidate set per source (architecture.md, "Where
the speed comes from"): PatchCoreCL banks after any number of re-reductions are subsets of the
task's selections on arrival, truncations are prefixes, a joint bank is a subset of the union of
its tasks' selections. So, per source, the K nearest candidates of every test patch are listed
once, sorted by distance. The nearest neighbour of a patch in a subset bank is then the first
listed candidate the bank holds: every candidate not listed is at least as far as the K-th. When
the bank holds none of the K, an exact search against the bank answers (the fallback), so the
result always equals a brute-force search (tested on every bank of small sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .knn import knn
from .task_features import query_sets
from .tensors import read_rows

__all__ = ["CandidateTable", "build_table", "subset_nn", "bank_members", "first_held", "DEFAULT_K"]

DEFAULT_K = 64
BLOCK_ENTRIES = 1 << 22  # candidate-list entries `subset_nn` reads at a time (a block of images; 16 MB of int32)


@dataclass
class CandidateTable:
    """K nearest candidates of every test patch of every task, within one source's candidate set.

    rows: (C,) sorted int64 rows of the source's base vectors that any bank of the study holds.
    pos[task]: (n_images, P, K) int32 positions into `rows`, nearest first.
    dist[task]: (n_images, P, K) float32 Euclidean distances, ascending.
    """

    source: tuple
    rows: np.ndarray
    pos: dict = field(default_factory=dict)
    dist: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return next(iter(self.pos.values())).shape[-1] if self.pos else 0

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.pos.values()) + sum(a.nbytes for a in self.dist.values()))


class _InMemory:
    """The default `build_table` sink: the lists as arrays of the returned CandidateTable."""

    def __init__(self, table: CandidateTable):
        self.table, self._at = table, {}

    def begin(self, name: str, shape: tuple) -> None:
        self.table.pos[name] = np.empty(shape, dtype=np.int32)
        self.table.dist[name] = np.empty(shape, dtype=np.float32)
        self._at[name] = 0

    def write(self, name: str, pos: np.ndarray, dist: np.ndarray) -> None:
        s = self._at[name]
        self.table.pos[name][s : s + len(pos)] = pos
        self.table.dist[name][s : s + len(pos)] = dist
        self._at[name] = s + len(pos)

    def end(self, name: str) -> None:
        pass

    def finish(self) -> CandidateTable:
        return self.table


def build_table(source: tuple, rows: np.ndarray, candidates: np.ndarray, tasks: dict, k: int = DEFAULT_K,
                device=None, chunk_images: int = 64, backend: str = "auto", sink=None):
    """The candidate table of one source.

    rows (C,) sorted, candidates (C, D) float32 their vectors; tasks {name: TaskFeatures} whose
    `test` (n, P, D) patches are the queries, read `chunk_images` images at a time (a memory-mapped
    float16 store is never loaded whole). k is capped at C.
    sink: where the lists go, chunk by chunk (begin(name, (n, P, K)), write(name, pos, dist), end(name),
    finish() -> the result); default: a CandidateTable in memory. pclsim.store.tables.TableWriter streams
    them into the on-disk store and returns its handle, so memory holds one chunk.
    Raises ValueError when rows and candidates differ in length or are empty.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) != len(candidates) or len(rows) == 0:
        raise ValueError(f"source {source}: {len(rows)} rows for {len(candidates)} candidate vectors")
    k = int(min(k, len(rows)))
    sink = sink if sink is not None else _InMemory(CandidateTable(source, rows))
    for name, queries in query_sets(tasks):  # test sets and calibration sets
        n, p, d = queries.shape
        sink.begin(name, (n, p, k))
        for s in range(0, n, chunk_images):
            q = read_rows(queries, slice(s, s + chunk_images)).reshape(-1, d)  # one chunk resident, not the task
            dd, ii = knn(q, candidates, k, backend=backend, device=device)
            m = len(q) // p
            sink.write(name, np.asarray(ii).reshape(m, p, k).astype(np.int32, copy=False),
                       np.asarray(dd).reshape(m, p, k).astype(np.float32, copy=False))
        sink.end(name)
    return sink.finish()


def bank_members(table: CandidateTable, bank_rows: np.ndarray) -> np.ndarray:
    """(C,) int64: for each candidate of the table, its position in `bank_rows`, or -1 where the bank does not
    hold it (a duplicated row keeps its first position, as an exact search's argmin does). Raises ValueError
    when the bank holds rows outside the table's candidate set."""
    bank_rows = np.asarray(bank_rows, dtype=np.int64)
    where = np.searchsorted(table.rows, bank_rows)
    if np.any(where >= len(table.rows)) or np.any(table.rows[np.minimum(where, len(table.rows) - 1)] != bank_rows):
        raise ValueError(f"bank holds rows outside the candidate set of source {table.source}")
    member = np.full(len(table.rows), -1, dtype=np.int64)
    member[where[::-1]] = np.arange(len(bank_rows) - 1, -1, -1)
    return member


def first_held(member: np.ndarray, pos: np.ndarray, dist: np.ndarray):
    """(dist, bank position, found) of the first listed candidate a bank holds, per list (last axis).

    member: `bank_members`; pos/dist (..., K) a candidate list, nearest first. Where the bank holds none of
    the K, found is False (dist and position are then the first entry's and -1: to be replaced)."""
    hit = member[pos]
    found = hit >= 0
    first = found.argmax(-1)[..., None]
    return (np.take_along_axis(dist, first, -1)[..., 0], np.take_along_axis(hit, first, -1)[..., 0],
            found.any(-1))


def subset_nn(table: CandidateTable, eval_task: str, bank_rows: np.ndarray, exact) -> tuple[np.ndarray, np.ndarray, int]:
    """Nearest neighbour of every test patch of eval_task in the bank `bank_rows` (a subset of table.rows).

    Returns (dist (n, P) float32, position in bank_rows (n, P) int64, number of fallback queries).
    exact(query_mask (n, P) bool) -> (dist (q,), bank position (q,)) answers the patches none of whose
    K candidates the bank holds.
    """
    member = bank_members(table, bank_rows)
    all_pos, all_dist = table.pos[eval_task], table.dist[eval_task]
    n, p = all_pos.shape[:2]
    dist = np.empty((n, p), dtype=np.float32)
    pos = np.empty((n, p), dtype=np.int64)
    missing = np.zeros((n, p), dtype=bool)
    # blocks of images: a stored (memory-mapped) table keeps one block resident, not the task's lists
    block = max(1, BLOCK_ENTRIES // max(1, p * all_pos.shape[2]))
    for s in range(0, n, block):
        d, i, found = first_held(member, read_rows(all_pos, slice(s, s + block), dtype=np.int32),
                                 read_rows(all_dist, slice(s, s + block)))
        dist[s : s + block], pos[s : s + block], missing[s : s + block] = d, i, ~found
    n_missing = int(missing.sum())
    if n_missing:
        d, i = exact(missing)
        dist[missing] = d
        pos[missing] = i
    return dist, pos, n_missing
