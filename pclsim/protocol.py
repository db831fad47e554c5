"""The continual protocol (method.md sections 3-6): banks, evaluation on every task after every step.

Three pieces, all free of Ray:
- `BankManager`: the fixed-budget PatchCoreCL memory as a user would run it, one task at a time
  (floor(M/(t+1)) vectors per task, rebalanced on arrival; `truncate` or `recompute`).
- `BankSources`: every selection order a study needs, computed once at the largest size
  (per task, per set of tasks for joint), so that every bank is a prefix of one of them.
- `Evaluator`: scores a task's test set against a set of banks and computes its metrics,
  memoized by bank state, with NN distances for all prefix lengths of a source at once.
`run_order` walks one order of tasks through a strategy and returns its full T x T matrices.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from . import metrics as M
from .coreset import greedy_coreset
from .knn import nn_distances, prefix_nn
from .scoring import _bank_neighbours, anomaly_maps, identify_task, image_score
from .strategies import BankRef, Strategy, per_task_size

__all__ = ["TaskFeatures", "BankManager", "BankSources", "Evaluator", "run_order", "OrderResult",
           "IMAGE_METRICS", "PIXEL_METRICS", "image_scores"]

IMAGE_METRICS = ("image_auroc", "image_f1")
PIXEL_METRICS = ("pixel_auroc", "pixel_f1", "pixel_pr", "pixel_ap", "pixel_aupro")


@dataclass
class TaskFeatures:
    """A task's frozen-backbone features: train patches pooled, test patches per image.

    From the feature store (pclsim.store) train and test are read-only memmaps in the store's
    dtype (model.feature_dtype: float16 by default, or float32); a consumer that needs float32
    converts them chunk by chunk, never the whole task at once. `ref`, the store handle, makes
    pickling (Ray) ship the handle, not the arrays: unpickling maps the entry again.
    """

    name: str
    train: np.ndarray            # (N_train * P, D) float16 | float32 (memmap from the store)
    test: np.ndarray             # (N_test, P, D) float16 | float32 (memmap from the store)
    labels: np.ndarray           # (N_test,) int64, 1 = anomalous
    masks: np.ndarray | None     # (N_test, S, S) bool, None when the task has no pixel labels
    grid: tuple[int, int]        # patch grid, h * w = P
    image_size: int
    ref: object | None = field(default=None, repr=False, compare=False)  # pclsim.store.FeatureRef

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def __reduce__(self):
        if self.ref is not None:
            return (type(self.ref).open, (self.ref,))
        return (_task_features, (self.name, self.train, self.test, self.labels, self.masks, self.grid,
                                 self.image_size))


def _task_features(*args) -> TaskFeatures:
    return TaskFeatures(*args)


# ---------------------------------------------------------------------------------------------
class BankManager:
    """PatchCoreCL memory under a fixed total budget, one bank per task, rebalanced on every task.

    truncate: each task's greedy selection order is computed once; re-reducing a bank keeps
    the first n vectors of it. recompute: greedy k-center is re-run on the stored vectors (the
    authors' procedure). With a fixed projection both give the same banks (prefix property).
    """

    def __init__(self, memory_size: int, rebalance: str = "truncate", projection_dim: int | None = 128,
                 seed: int = 0, device=None):
        if rebalance not in ("truncate", "recompute"):
            raise ValueError(f"rebalance must be 'truncate' or 'recompute', got {rebalance!r}")
        self.memory_size = int(memory_size)
        self.rebalance = rebalance
        self.projection_dim = projection_dim
        self.seed = seed
        self.device = device
        self.banks: dict[str, np.ndarray] = {}
        self._orders: dict[str, np.ndarray] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def _select(self, x: np.ndarray, k: int) -> np.ndarray:
        return greedy_coreset(x, k, projection_dim=self.projection_dim, seed=self.seed, device=self.device)

    def add_task(self, name: str, patches: np.ndarray) -> dict[str, int]:
        if name in self.banks:
            raise ValueError(f"task {name!r} was already added")
        n = per_task_size(self.memory_size, len(self.banks) + 1)
        if n < 1:
            raise ValueError(f"memory size {self.memory_size} is smaller than the number of tasks")
        if self.rebalance == "truncate":
            order = self._select(patches, n)
            self._orders[name] = order
            self._vectors[name] = patches[order]
            for t in self.banks:
                self.banks[t] = self._vectors[t][:n]
            self.banks[name] = self._vectors[name][:n]
        else:
            for t, bank in self.banks.items():
                self.banks[t] = bank[self._select(bank, min(n, len(bank)))]
            self.banks[name] = patches[self._select(patches, n)]
        return self.sizes()

    def sizes(self) -> dict[str, int]:
        return {t: int(b.shape[0]) for t, b in self.banks.items()}


# ---------------------------------------------------------------------------------------------
class BankSources:
    """Selection orders of every bank source a study uses, each computed once at its largest size.

    joint: "composable" selects from the union of the member tasks' selection orders (a
    composable coreset: far cheaper, provably close); "exact" from all their pooled patches.
    """

    def __init__(self, tasks: dict[str, TaskFeatures], sizes: dict[str, set[int]], *,
                 projection_dim: int | None = 128, seed: int = 0, joint: str = "composable", device=None):
        if joint not in ("composable", "exact"):
            raise ValueError(f"joint selection must be 'composable' or 'exact', got {joint!r}")
        self.tasks = tasks
        self.sizes = {k: set(v) for k, v in sizes.items()}
        self.projection_dim = projection_dim
        self.seed = seed
        self.joint = joint
        self.device = device
        need_task = set(self.sizes.get("task", ()))
        if "joint" in self.sizes and joint == "composable":
            need_task |= self.sizes["joint"]
        self.sizes["task"] = need_task
        self._orders: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._cand: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def max_size(self, kind: str) -> int:
        return max(self.sizes.get(kind) or {0})

    def candidates(self, kind: str, tasks: tuple[str, ...]) -> np.ndarray:
        """The vectors a source's selection order indexes into."""
        if kind in ("task", "random"):
            return self.tasks[tasks[0]].train
        key = (kind, tasks)
        if key not in self._cand:
            if self.joint == "exact":
                self._cand[key] = np.concatenate([self.tasks[t].train for t in tasks])
            else:
                k = self.max_size("joint")
                self._cand[key] = np.concatenate([self.vectors(BankRef("task", (t,), k)) for t in tasks])
        return self._cand[key]

    def order(self, kind: str, tasks: tuple[str, ...]) -> np.ndarray:
        key = (kind, tasks)
        if key not in self._orders:
            x = self.candidates(kind, tasks)
            k = min(self.max_size(kind), len(x))
            if kind == "random":
                rng = np.random.default_rng([self.seed, _stable_int(tasks[0])])
                self._orders[key] = rng.permutation(len(x))[:k].astype(np.int64)
            else:
                self._orders[key] = greedy_coreset(x, k, projection_dim=self.projection_dim, seed=self.seed,
                                                   device=self.device)
        return self._orders[key]

    def set_order(self, kind: str, tasks: tuple[str, ...], order: np.ndarray) -> None:
        """Install an order computed elsewhere (a cache or another worker)."""
        self._orders[(kind, tuple(tasks))] = np.asarray(order, dtype=np.int64)

    def vectors(self, ref: BankRef) -> np.ndarray:
        order = self.order(ref.kind, ref.tasks)
        if ref.size > len(order):
            raise ValueError(f"bank {ref} needs {ref.size} vectors but its source has {len(order)}")
        return self.candidates(ref.kind, ref.tasks)[order[: ref.size]]


def _stable_int(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


# ---------------------------------------------------------------------------------------------
@dataclass
class _Tables:
    lengths: dict[int, int]      # prefix length -> column
    dist: dict[str, np.ndarray]  # eval task -> (N_test, P, L) float32
    idx: dict[str, np.ndarray]   # eval task -> (N_test, P, L) int64


class Evaluator:
    """Scores test sets against bank states, memoized by state.

    The memo key of one evaluation is (eval task, banks, identify). The metrics themselves are
    keyed by what they depend on: the bank each test image is finally scored with. NN distances
    come from one pass per bank source over all test patches (`prefix_nn`), giving every prefix
    length at once. A memo hit returns the very object computed the first time.
    """

    def __init__(self, sources: BankSources, *, reweighting: str = "paper", sigma: float = 4.0,
                 pixel: bool = True, device=None):
        self.sources = sources
        self.tasks = sources.tasks
        self.reweighting = reweighting
        self.sigma = sigma
        self.pixel = pixel
        self.device = device
        self._tables: dict[tuple[str, tuple[str, ...]], _Tables] = {}
        self._state_memo: dict = {}
        self._metric_memo: dict = {}
        self._bank_memo: dict = {}
        self._neighbours: dict = {}
        self.stats = {"evaluations": 0, "state_hits": 0, "metric_computations": 0}

    # -- nearest-neighbour tables -------------------------------------------------------------
    def tables(self, kind: str, src: tuple[str, ...]) -> _Tables:
        key = (kind, src)
        if key not in self._tables:
            lengths = sorted(self.sources.sizes.get(kind, ()))
            order = self.sources.order(kind, src)
            lengths = [n for n in lengths if n <= len(order)]
            bank = self.sources.candidates(kind, src)[order[: max(lengths)]]
            names = list(self.tasks)
            q = np.concatenate([self.tasks[t].test.reshape(-1, bank.shape[1]) for t in names])
            d, i = prefix_nn(q, bank, lengths, device=self.device)
            dist, idx, s = {}, {}, 0
            for t in names:
                n_img, p, _ = self.tasks[t].test.shape
                dist[t] = d[s : s + n_img * p].reshape(n_img, p, -1)
                idx[t] = i[s : s + n_img * p].reshape(n_img, p, -1)
                s += n_img * p
            self._tables[key] = _Tables({n: c for c, n in enumerate(lengths)}, dist, idx)
        return self._tables[key]

    def put_tables(self, kind: str, src: tuple[str, ...], tables: _Tables) -> None:
        self._tables[(kind, tuple(src))] = tables

    def _bank_dists(self, ref: BankRef, eval_task: str) -> tuple[np.ndarray, np.ndarray]:
        tb = self.tables(ref.kind, ref.tasks)
        c = tb.lengths[ref.size]
        return tb.dist[eval_task][:, :, c], tb.idx[eval_task][:, :, c]

    def _bank(self, ref: BankRef) -> np.ndarray:
        if ref not in self._bank_memo:
            self._bank_memo[ref] = self.sources.vectors(ref)
        return self._bank_memo[ref]

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool) -> dict[str, float]:
        """Metrics of eval_task's test set against `banks` (task_id_acc included when identify)."""
        self.stats["evaluations"] += 1
        key = (eval_task, tuple(banks), bool(identify))
        hit = self._state_memo.get(key)
        if hit is not None:
            self.stats["state_hits"] += 1
            return hit
        per_bank, chosen = self._choose(eval_task, banks, identify)
        out = dict(self._metrics_for(eval_task, tuple(banks[c] for c in chosen),
                                     [(per_bank[c][0][i], per_bank[c][1][i]) for i, c in enumerate(chosen)]))
        if identify:
            out["task_id_acc"] = float(np.mean([banks[c].tasks == (eval_task,) for c in chosen]))
        self._state_memo[key] = out
        return out

    def _choose(self, eval_task: str, banks, identify: bool):
        per_bank = [self._bank_dists(b, eval_task) for b in banks]
        if identify and len(banks) > 1:
            chosen = identify_task(np.stack([d.mean(1) for d, _ in per_bank], axis=1))
        else:
            chosen = np.zeros(self.tasks[eval_task].test.shape[0], dtype=np.int64)
        return per_bank, chosen

    def maps(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool, images) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and anomaly maps (len(images), S, S) of some test images (the report's gallery)."""
        per_bank, chosen = self._choose(eval_task, banks, identify)
        task = self.tasks[eval_task]
        dists = [(per_bank[chosen[i]][0][i], per_bank[chosen[i]][1][i]) for i in images]
        scores = image_scores(task.test[list(images)], [banks[chosen[i]] for i in images], dists, self._bank,
                              self.reweighting, self._neighbours)
        maps = anomaly_maps(np.stack([d for d, _ in dists]), task.grid, task.image_size, self.sigma)
        return scores, maps

    def _metrics_for(self, eval_task: str, chosen: tuple[BankRef, ...], dists) -> dict[str, float]:
        key = (eval_task, chosen)
        if key not in self._metric_memo:
            self.stats["metric_computations"] += 1
            self._metric_memo[key] = score_task(self.tasks[eval_task], chosen, dists, self._bank,
                                                self.reweighting, self.sigma, self.pixel, self._neighbours)
        return self._metric_memo[key]


def image_scores(queries, chosen, dists, bank_of, reweighting: str, neighbour_cache: dict | None = None) -> np.ndarray:
    """Image scores, given per image its query patches, its chosen bank key and its patch NN (dist, idx).

    bank_of(key) gives a bank's vectors. neighbour_cache keeps the bank neighbours of m* per
    (bank, m*, k) across calls: the same m* recurs across states.
    """
    cache = neighbour_cache if neighbour_cache is not None else {}

    def finder(key):
        bank = bank_of(key)

        def find(m, k):
            nk = (key, m, k)
            if nk not in cache:
                cache[nk] = _bank_neighbours(bank, m, k)
            return cache[nk]
        return find

    return np.array([image_score(d, i, queries[n], bank_of(chosen[n]), reweighting, finder(chosen[n]))
                     for n, (d, i) in enumerate(dists)])


def score_task(task: TaskFeatures, chosen, dists, bank_of, reweighting: str, sigma: float,
               pixel: bool = True, neighbour_cache: dict | None = None) -> dict[str, float]:
    """Metrics of one task's test set, given per image its chosen bank key and its patch NN (dist, idx)."""
    scores = image_scores(task.test, chosen, dists, bank_of, reweighting, neighbour_cache)
    out = M.image_metrics(task.labels, scores)
    if pixel and task.masks is not None:
        patch = np.stack([d for d, _ in dists])
        maps = anomaly_maps(patch, task.grid, task.masks.shape[-1], sigma)
        out.update(M.pixel_metrics(task.masks, maps))
    return out


def evaluate_direct(task: TaskFeatures, banks: list[np.ndarray], identify: bool, reweighting: str = "paper",
                    sigma: float = 4.0, oracle: int | None = None) -> dict[str, float]:
    """Reference path: score against materialised banks with plain k-NN, no tables, no memo."""
    q = task.test.reshape(-1, task.dim)
    n_img, p, _ = task.test.shape
    per_bank = []
    for b in banks:
        d, i = nn_distances(q, b, backend="torch")
        per_bank.append((d.reshape(n_img, p), i.reshape(n_img, p)))
    if oracle is not None:
        chosen = np.full(n_img, oracle)
    elif identify and len(banks) > 1:
        chosen = identify_task(np.stack([d.mean(1) for d, _ in per_bank], axis=1))
    else:
        chosen = np.zeros(n_img, dtype=np.int64)
    return score_task(task, [int(c) for c in chosen],
                      [(per_bank[c][0][n], per_bank[c][1][n]) for n, c in enumerate(chosen)],
                      lambda c: banks[c], reweighting, sigma)


# ---------------------------------------------------------------------------------------------
@dataclass
class OrderResult:
    """One simulated run: a strategy over one order of tasks."""

    strategy: str
    memory_size: int
    order: tuple[str, ...]
    matrices: dict[str, np.ndarray]              # metric -> (T, T) a[step][position in order]
    bank_vectors: list[int]                      # per step
    seconds: list[float] = field(default_factory=list)

    def rows(self):
        """(step, train_task, eval_task, metric, value) for every cell of every matrix."""
        for metric, mat in self.matrices.items():
            for s in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    if not np.isnan(mat[s, j]):
                        yield s, self.order[s], self.order[j], metric, float(mat[s, j])


def run_order(strategy: Strategy, order: tuple[str, ...], evaluator: Evaluator) -> OrderResult:
    """Train the tasks of `order` one by one; after each step evaluate every task of the order."""
    T = len(order)
    mats: dict[str, np.ndarray] = {}
    sizes, secs = [], []
    for s in range(T):
        t0 = time.perf_counter()
        banks = strategy.banks(tuple(order[: s + 1]))
        sizes.append(sum(b.size for b in banks))
        for j, task in enumerate(order):
            sb, ident = strategy.scoring(banks, task)
            res = evaluator.evaluate(task, sb, ident or strategy.identifies_task)
            for metric, v in res.items():
                if metric == "task_id_acc" and not strategy.identifies_task:
                    continue
                mats.setdefault(metric, np.full((T, T), np.nan))[s, j] = v
        secs.append(time.perf_counter() - t0)
    return OrderResult(strategy.name, strategy.memory_size, tuple(order), mats, sizes, secs)
