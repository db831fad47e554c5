"""From `BankRef`s to vectors: every selection order and re-reduction a study needs (method.md 2-3).

This is the bank manager's arithmetic, free of Ray. `BankBuilder.resolve(ref)` returns a bank as
parts `(source, indices)`: `source` names a set of base vectors (("task", t): the training
patches of task t; ("pool", tasks): all training patches of several tasks, concatenated) and
`indices` the rows of it the bank holds, in selection order. Every bank pclsim builds is a
subset of a small candidate set per source (the task's largest selections), which is what the
candidate-list evaluator (`pclsim.core.candidates`) relies on.

Seeds: every projection is drawn from a seed derived from (scenario seed, what, task, step), so a
run is reproducible and independent of which worker computes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..core.coreset import greedy_coreset
from .strategies import BankRef, per_task_size
from ..core.tensors import read_rows

__all__ = ["BankBuilder", "Part", "derive_seed", "bank_sources", "selection_source", "SelectionNeeds", "BankKind", "BANK_KINDS",
           "register_bank_kind"]

Part = tuple[tuple, np.ndarray]   # (source, int64 row indices into the source's base vectors)


def derive_seed(*parts) -> int:
    """A 31-bit seed from any sequence of ints and strings (stable across processes and machines)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class BankKind:
    """How one kind of bank is built (register with `register_bank_kind`).

    selection(ref) -> (selection key, length) the bank needs, or None; sources(ref) -> the sources (base
    vector sets) it draws from; resolve(builder, ref) -> its parts (source, rows in selection order).
    """

    name: str
    selection: object
    sources: object
    resolve: object


BANK_KINDS: dict[str, BankKind] = {}


def register_bank_kind(kind: BankKind) -> BankKind:
    BANK_KINDS[kind.name] = kind
    return kind


def _kind(ref: BankRef) -> BankKind:
    try:
        return BANK_KINDS[ref.kind]
    except KeyError:
        raise ValueError(f"unknown bank kind {ref.kind!r}; valid: {', '.join(sorted(BANK_KINDS))}") from None


def selection_source(key: tuple) -> tuple:
    """The source (set of base vectors) a selection order (kind, what, arrival) indexes: ("pool", tasks) or
    ("task", t)."""
    kind, what, _ = key
    return ("pool", what) if kind == "pool" else ("task", what)


def bank_sources(ref: BankRef) -> list[tuple]:
    """The sources a bank draws from (candidate tables are built per source)."""
    return _kind(ref).sources(ref)


@dataclass
class SelectionNeeds:
    """How long each selection order must be: (kind, task, arrival) -> largest prefix any bank takes."""

    sizes: dict

    @classmethod
    def of(cls, refs) -> "SelectionNeeds":
        sizes: dict = {}

        def need(key, n):
            sizes[key] = max(sizes.get(key, 0), int(n))

        for r in refs:
            want = _kind(r).selection(r)
            if want is not None:
                need(*want)
        # a composable joint bank selects from the union of its members' selections at the largest joint
        # size of that set; every smaller joint bank of the set is a prefix of that one selection
        for (kind, what, _), n in list(sizes.items()):
            if kind == "joint":
                for t in what:
                    need(("select", t, 0), n)
        return cls(sizes)


class BankBuilder:
    """Resolves bank references into row indices of their sources, memoized.

    tasks: {name: TaskFeatures} (only `.train`, (N, D), is read; a memory-mapped float16 store is
    read chunk by chunk). projection_dim: "auto" (the JL dimension for the number of points, the
    authors'), an integer, or None. needs: the selection lengths (`SelectionNeeds`); orders are
    computed once at that length, and every shorter request is a prefix (prefix property).
    """

    def __init__(self, tasks: dict, needs: SelectionNeeds, *, projection_dim="auto", seed: int = 0,
                 device=None):
        self.tasks = tasks
        self.needs = needs
        self.projection_dim = projection_dim
        self.seed = int(seed)
        self.device = device
        self.orders: dict = {}       # (kind, task, arrival) -> selection order
        self._banks: dict = {}       # BankRef -> tuple of parts

    # -- base vectors ------------------------------------------------------------------------
    def base(self, source: tuple):
        kind, what = source
        if kind == "task":
            return self.tasks[what].train
        return _Pooled([self.tasks[t].train for t in what])

    def vectors(self, source: tuple, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` of a source as float32 (m, D); the store's mapped pages are released after the copy."""
        return read_rows(self.base(source), np.asarray(idx, dtype=np.int64))

    # -- selection orders ----------------------------------------------------------------------
    def order(self, kind: str, what, arrival: int = 0) -> np.ndarray:
        """Greedy (or random) selection order of a task's (or pooled) patches at the planned length."""
        key = (kind, what, arrival)
        if key not in self.orders:
            n = self.needs.sizes.get(key)
            if n is None:
                raise KeyError(f"selection {key} was not planned")
            if kind == "random":
                x = self.base(("task", what))
                rng = np.random.default_rng(derive_seed(self.seed, "random", what))
                self.orders[key] = rng.permutation(len(x))[: min(n, len(x))].astype(np.int64)
            else:
                x = self.base(selection_source(key))
                if n > len(x):
                    raise ValueError(f"a bank of {n} vectors needs more patches than task(s) {what} have "
                                     f"({len(x)} training patches)")
                # a task's projection depends on the scenario seed and its arrival step, not on its name:
                # the same data gives the same bank whatever the task is called (a merged task of one
                # category equals that category alone)
                pseed = derive_seed(self.seed, kind, arrival) if kind == "select" else \
                    derive_seed(self.seed, kind, what, arrival)
                self.orders[key] = greedy_coreset(x, n, projection_dim=self.projection_dim, seed=pseed,
                                                  device=self.device)
        return self.orders[key]

    def set_order(self, key: tuple, order: np.ndarray) -> None:
        """Install an order computed elsewhere (another worker, a cache)."""
        self.orders[tuple(key)] = np.asarray(order, dtype=np.int64)

    # -- banks --------------------------------------------------------------------------------
    def resolve(self, ref: BankRef) -> tuple[Part, ...]:
        """The bank `ref` as parts (source, row indices in selection order)."""
        hit = self._banks.get(ref)
        if hit is not None:
            return hit
        out = _kind(ref).resolve(self, ref)
        self._banks[ref] = out
        return out

    def install(self, ref: BankRef, parts) -> None:
        self._banks[ref] = tuple((tuple(s) if not isinstance(s, tuple) else s, np.asarray(i, dtype=np.int64))
                                 for s, i in parts)

    def _prefix(self, key, ref: BankRef) -> np.ndarray:
        order = self.order(*key)
        if ref.size > len(order):
            raise ValueError(f"bank {ref.kind} of {ref.tasks} needs {ref.size} vectors but its source has "
                             f"{len(order)}")
        return order[: ref.size]

    def _rereduced(self, ref: BankRef) -> np.ndarray:
        """The authors' procedure (method.md section 3): the bank selected on arrival, then on every
        later step greedy k-center re-run on the STORED vectors, starting at the stored bank's first
        vector, with a fresh projection (JL dimension of the stored count) seeded from (seed, arrival step,
        step): each (arrival, step) draws its own projection; a task's name does not enter it.

        The selection on arrival uses one projection per task whatever the step it arrives at (common
        random numbers): a task's first bank at arrival step a is the first M/(a+1) vectors of its one
        selection order, which by the prefix property IS greedy k-center of all its patches to M/(a+1)
        under that projection. Orders then differ only by what the order changes, the re-reductions,
        not by an extra projection draw (and each task needs one selection instead of one per step)."""
        task, a, s, m = ref.tasks[0], ref.arrival, ref.step, ref.budget
        if ref.size != per_task_size(m, s + 1):
            raise ValueError(f"BankRef('rereduced', {task!r}, size {ref.size}): the authors' re-reduction keeps "
                             f"floor({m} / {s + 1}) = {per_task_size(m, s + 1)} vectors at step {s}; a strategy with "
                             "other bank sizes needs its own bank kind (register_bank_kind)")
        if s == a:
            return self.order("select", task, 0)[: per_task_size(m, a + 1)]
        prev = self.resolve(BankRef("rereduced", (task,), per_task_size(m, s), arrival=a, step=s - 1, budget=m))[0][1]
        stored = _Rows(self.base(("task", task)), prev)  # the bank's vectors, read block by block while projecting
        keep = greedy_coreset(stored, per_task_size(m, s + 1), projection_dim=self.projection_dim,
                              seed=derive_seed(self.seed, "rereduce", a, s), device=self.device, start=0)
        return prev[keep]

    def _joint(self, ref: BankRef) -> tuple[Part, ...]:
        """Composable coreset (Indyk et al. 2014): greedy k-center over the union of the member tasks'
        selections of the largest joint size M* of this set; a joint bank of size M <= M* is the first M
        of that selection (prefix property)."""
        key = ("joint", ref.tasks, 0)
        if key not in self.orders:
            n = self.needs.sizes[key]
            parts = [(t, self.order("select", t, 0)[:n]) for t in ref.tasks]
            # rows read chunk by chunk while projecting: not the members' selections copied whole (six tasks at
            # M* = 30,000 and D = 1,536 were 1.1 GB of float32, twice during the concatenation)
            x = _Pooled([_Rows(self.base(("task", t)), i) for t, i in parts])
            sel = greedy_coreset(x, min(n, len(x)), projection_dim=self.projection_dim,
                                 seed=derive_seed(self.seed, "joint", *ref.tasks), device=self.device)
            self.orders[key] = sel
        sel = self.orders[key][: ref.size]
        n = self.needs.sizes[key]
        rows = [self.order("select", t, 0)[:n] for t in ref.tasks]
        owner = np.concatenate([np.full(len(i), k) for k, i in enumerate(rows)])[sel]
        row = np.concatenate(rows)[sel]
        return tuple((("task", t), row[owner == k]) for k, t in enumerate(ref.tasks) if np.any(owner == k))

    def bank_vectors(self, ref: BankRef) -> np.ndarray:
        """(size, D) float32 vectors of a bank, parts concatenated in order."""
        return np.concatenate([self.vectors(s, i) for s, i in self.resolve(ref)])


class _Rows:
    """Rows `idx` of an array (a memory-mapped store) as an array of their own, read when indexed (no copy)."""

    ndim = 2

    def __init__(self, base, idx):
        self.base, self.idx = base, np.asarray(idx, dtype=np.int64)

    def __len__(self):
        return len(self.idx)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.idx), int(self.base.shape[1]))

    @property
    def dtype(self):
        return self.base.dtype

    def __getitem__(self, index):
        return read_rows(self.base, self.idx[index])


class _Pooled:
    """Row access over several tasks' training patches as if concatenated (no copy: rows are read when
    indexed, so the pooled (`coreset.joint: exact`) selection streams its tasks like one task)."""

    ndim = 2

    def __init__(self, arrays):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self):
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), int(self.arrays[0].shape[1]))

    @property
    def dtype(self):
        return np.result_type(*[a.dtype for a in self.arrays])

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)))
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), self.arrays[0].shape[1]), dtype=np.float32)
        for k, a in enumerate(self.arrays):
            sel = which == k
            if sel.any():
                out[sel] = read_rows(a, idx[sel] - self.offsets[k])
        return out


def _one_task(ref):
    return [("task", ref.tasks[0])]


def _members(ref):
    return [("task", t) for t in ref.tasks]


register_bank_kind(BankKind(
    "task", lambda r: (("select", r.tasks[0], 0), r.size), _one_task,
    lambda b, r: ((("task", r.tasks[0]), b._prefix(("select", r.tasks[0], 0), r)),)))
register_bank_kind(BankKind(
    "random", lambda r: (("random", r.tasks[0], 0), r.size), _one_task,
    lambda b, r: ((("task", r.tasks[0]), b._prefix(("random", r.tasks[0], 0), r)),)))
register_bank_kind(BankKind(
    "rereduced", lambda r: (("select", r.tasks[0], 0), per_task_size(r.budget, r.arrival + 1)), _one_task,
    lambda b, r: ((("task", r.tasks[0]), b._rereduced(r)),)))
register_bank_kind(BankKind("joint", lambda r: (("joint", r.tasks, 0), r.size), _members, lambda b, r: b._joint(r)))
register_bank_kind(BankKind(
    "pool", lambda r: (("pool", r.tasks, 0), r.size), lambda r: [("pool", r.tasks)],
    lambda b, r: ((("pool", r.tasks), b._prefix(("pool", r.tasks, 0), r)),)))
