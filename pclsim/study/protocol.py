"""The continual protocol (method.md sections 3-6): evaluation of every task after every step.

Free of Ray. `Evaluator` scores a task's test set against a set of banks and computes its
metrics, memoized by what a result depends on: the nearest-neighbour distances of a test set
depend only on the bank (`(bank, task)`), the metrics only on the bank each test image is finally
scored with. Banks come from a `pclsim.study.banks.BankBuilder`, nearest neighbours from the candidate
tables of `pclsim.core.candidates` (exact, with a fallback). `run_order` walks one order of tasks
through a strategy and returns its full T x T matrices, its routing counts and its per-step bank
sizes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..core import metrics as metric_fns
from ..core.candidates import CandidateTable, subset_nn
from ..core.knn import knn
from ..core.metric_registry import METRICS
from ..core.reweighting import get_reweighting
from ..core.scoring import anomaly_maps, identify_task, reweight_scores
from ..core.task_features import TaskFeatures, calibration_name, validation_name
from ..core.thresholds import ThresholdPolicy, deployed_metrics, metric_name
from .strategies import BankRef, Strategy
from ..core.tensors import read_rows

__all__ = ["TaskFeatures", "Evaluator", "run_order", "OrderResult", "IMAGE_METRICS", "PIXEL_METRICS"]

IMAGE_METRICS = ("image_auroc", "image_f1")
PIXEL_METRICS = ("pixel_auroc", "pixel_f1", "pixel_pr", "pixel_ap", "pixel_aupro")
ROUTED = ("correct", "wrong")
# bank vectors an Evaluator keeps (the reweighting's neighbour searches), the recently used banks: not every bank
# of the run (a patchcore_cl run at M = 30,000 and D = 1,536 reads 1.1 GB of banks over its six steps)
BANK_VECTOR_CACHE_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------
class Evaluator:
    """Scores test sets against banks, memoized, exactly (equal to a brute-force evaluation).

    tasks: {name: TaskFeatures}; builder: a `BankBuilder` that resolves `BankRef`s (its orders already
    computed or computable); tables: {source: CandidateTable} for every source a bank draws from.
    reweighting: "paper" | "anomalib" | "none" (method.md section 3); sigma: the maps' Gaussian blur;
    pixel: compute pixel metrics for tasks with masks. thresholds: the label-free threshold policies
    (`evaluation.thresholds`, pclsim.core.thresholds), each fitted per bank from the calibration images
    of the bank's tasks (`TaskFeatures.calibration`, scored like test images against that bank);
    refit: `evaluation.threshold_refit` (read by `run_order`).
    `stats` counts evaluations, memo hits, metric computations and fallback queries.
    """

    def __init__(self, tasks: dict, builder, tables: dict, *, reweighting: str = "paper", sigma: float = 4.0,
                 pixel: bool = True, device=None, thresholds: tuple[ThresholdPolicy, ...] = (), refit: bool = True):
        self.tasks = dict(tasks)
        for name, tf in tasks.items():  # held-out images are scored like a test set (their own table rows)
            for held, patches, labels in ((calibration_name(name), tf.calibration, None),
                                          (validation_name(name), tf.validation, tf.validation_labels)):
                if patches is not None:
                    labels = np.zeros(len(patches), dtype=np.int64) if labels is None else np.asarray(labels)
                    self.tasks[held] = TaskFeatures(held, tf.train[:0], patches, labels, None, tf.grid, tf.image_size)
        self.thresholds = tuple(thresholds)
        self.refit = bool(refit)
        self._thresholds: dict = {}   # bank -> {policy label: threshold}
        self._deployed: dict = {}     # state -> metrics at the refitted thresholds
        self._scores: dict = {}
        self.builder = builder
        self.tables: dict[tuple, CandidateTable] = dict(tables)
        self.reweighting = reweighting
        self.sigma = sigma
        self.pixel = pixel
        self.device = device
        self._nn: dict = {}
        self._state_memo: dict = {}
        self._metric_memo: dict = {}
        self._vectors: OrderedDict = OrderedDict()
        self._neighbours: dict = {}
        self._components: dict = {}
        self._views: dict = {}
        self.stats = {"evaluations": 0, "state_hits": 0, "metric_computations": 0, "nn_queries": 0,
                      "fallback_queries": 0}

    # -- nearest neighbours in a bank ------------------------------------------------------------
    def bank_vectors(self, ref: BankRef) -> np.ndarray:
        """(size, D) float32 vectors of bank `ref`; the recently used banks stay up to BANK_VECTOR_CACHE_BYTES."""
        if ref in self._vectors:
            self._vectors.move_to_end(ref)
            return self._vectors[ref]
        self._vectors[ref] = vecs = self.builder.bank_vectors(ref)
        while len(self._vectors) > 1 and sum(v.nbytes for v in self._vectors.values()) > BANK_VECTOR_CACHE_BYTES:
            self._vectors.popitem(last=False)
        return vecs

    def add_view(self, name: str, parent: str, images: slice) -> None:
        """Make `name` evaluable as the test images `images` of task `parent` (e.g. one category of a merged
        task): same features, same banks, its nearest neighbours a slice of the parent's (no new search)."""
        tf = self.tasks[parent]
        self.tasks[name] = TaskFeatures(name, tf.train[:0], tf.test[images], tf.labels[images],
                                        None if tf.masks is None else tf.masks[images], tf.grid, tf.image_size)
        self._views[name] = (parent, images)

    def nn(self, ref: BankRef, eval_task: str) -> tuple[np.ndarray, np.ndarray]:
        """(dist (n, P) float32, bank position (n, P) int64) of every test patch of eval_task in bank `ref`."""
        key = (ref, eval_task)
        if key not in self._nn and eval_task in self._views:
            parent, images = self._views[eval_task]
            d, i = self.nn(ref, parent)
            self._nn[key] = (d[images], i[images])
        if key not in self._nn:
            test = self.tasks[eval_task].test
            best_d = best_i = None
            offset = 0
            for source, rows in self.builder.resolve(ref):
                def exact(mask, source=source, rows=rows):
                    return self._fallback(source, eval_task, test, rows, mask)

                d, i, miss = subset_nn(self.tables[source], eval_task, rows, exact)
                i = i + offset
                self.stats["nn_queries"] += d.size
                self.stats["fallback_queries"] += miss
                if best_d is None:
                    best_d, best_i = d, i
                else:  # a bank of several parts: the nearest over parts (earlier part on ties)
                    better = d < best_d
                    best_d = np.where(better, d, best_d)
                    best_i = np.where(better, i, best_i)
                offset += len(rows)
            self._nn[key] = (best_d, best_i)
        return self._nn[key]

    def _fallback(self, source: tuple, eval_task: str, test, rows: np.ndarray, mask: np.ndarray):
        """(dist (q,), bank position (q,)) of the patches `mask` (n, P) none of whose K listed candidates the
        bank `rows` holds: an exact search against the bank (`knn`), its vectors read only now (most
        evaluations need none). Only those patches are read from the store, not their whole images."""
        q = read_rows(test, np.nonzero(mask))
        d, i = knn(q, self.builder.vectors(source, rows), 1, device=self.device)
        return d[:, 0], i[:, 0]

    def _mean_distance(self, ref: BankRef, eval_task: str) -> np.ndarray:
        key = ("mean", ref, eval_task)
        if key not in self._nn:
            self._nn[key] = self.nn(ref, eval_task)[0].mean(1)
        return self._nn[key]

    def neighbours(self, ref: BankRef, m_star: np.ndarray, k: int) -> np.ndarray:
        """(len(m_star), k) bank positions of the k nearest bank vectors of each bank[m], itself first.

        One batched search per call for the m* not seen before (cached per bank)."""
        bank = self.bank_vectors(ref)
        k = min(k, len(bank))
        cache = self._neighbours.setdefault((ref, k), {})
        todo = np.unique([m for m in np.asarray(m_star).tolist() if m not in cache]).astype(np.int64)
        if len(todo):
            _, idx = knn(bank[todo], bank, min(k + 1, len(bank)), device=self.device)
            for m, row in zip(todo.tolist(), idx):
                others = [j for j in row.tolist() if j != m][: k - 1]
                cache[m] = np.array([m] + others, dtype=np.int64)
        return np.stack([cache[m] for m in np.asarray(m_star).tolist()])

    # -- evaluation ----------------------------------------------------------------------------
    def route(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool) -> np.ndarray:
        """Index into `banks` of the bank each test image is scored with (method.md section 3:
        the lowest mean patch distance when identifying the task, else the first bank)."""
        n = self.tasks[eval_task].test.shape[0]
        if identify and len(banks) > 1:
            return identify_task(np.stack([self._mean_distance(b, eval_task) for b in banks], axis=1))
        return np.zeros(n, dtype=np.int64)

    def evaluate(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool) -> dict[str, float]:
        """Metrics of eval_task's test set against `banks`.

        Keys: image metrics, pixel metrics (tasks with masks), and with `identify` also task_id_acc and
        "<metric>|correct" / "<metric>|wrong": the image metrics over correctly / wrongly routed images
        (NaN where a subset lacks a class). The same dict object is returned on a memo hit.
        """
        self.stats["evaluations"] += 1
        key = (eval_task, tuple(banks), bool(identify))
        hit = self._state_memo.get(key)
        if hit is not None:
            self.stats["state_hits"] += 1
            return hit
        chosen = self.route(eval_task, banks, identify)
        chosen_refs = tuple(banks[c] for c in chosen)
        out = dict(self._metrics_for(eval_task, chosen_refs, identify))
        self._state_memo[key] = out
        return out

    def scores(self, eval_task: str, chosen: tuple[BankRef, ...], images=None) -> tuple[np.ndarray, np.ndarray]:
        """(image scores (n,), patch distances (n, P)) of eval_task's test images, each against its chosen bank."""
        test = self.tasks[eval_task].test
        n_img = len(chosen)
        images = np.arange(n_img) if images is None else np.asarray(images)
        patch = np.stack([self.nn(chosen[i], eval_task)[0][i] for i in images])
        p = patch.argmax(1)
        s_star = patch[np.arange(len(images)), p].astype(np.float64)
        out = s_star.copy()
        k = get_reweighting(self.reweighting).neighbours  # bank neighbours of m* the weight reads
        if k:
            for ref in sorted({chosen[i] for i in images}):
                sel = np.flatnonzero([chosen[i] == ref for i in images])
                bank = self.bank_vectors(ref)
                if len(bank) < 2:
                    continue
                rows = images[sel]
                m_star = self.nn(ref, eval_task)[1][rows, p[sel]]
                nb = self.neighbours(ref, m_star, k)
                m_test = read_rows(test, (rows, p[sel]), np.float64)
                out[sel] = reweight_scores(s_star[sel], m_test, bank, nb, self.reweighting)
        return out, patch

    def _metrics_for(self, eval_task: str, chosen: tuple[BankRef, ...], identify: bool) -> dict[str, float]:
        key = (eval_task, chosen, identify)
        if key in self._metric_memo:
            return self._metric_memo[key]
        self.stats["metric_computations"] += 1
        task = self.tasks[eval_task]
        scores, patch = self.scores(eval_task, chosen)
        self._scores[(eval_task, chosen)] = scores
        out = _image_metrics(task.labels, scores, eval_task)
        maps = None
        if self.pixel and task.masks is not None:
            maps = anomaly_maps(patch, task.grid, task.masks.shape[-1], self.sigma)
            if eval_task not in self._components:
                self._components[eval_task] = metric_fns.mask_components(task.masks)
            out.update(metric_fns.pixel_metrics(task.masks, maps, components=self._components[eval_task]))
        for m in METRICS.values():  # a metric registered beyond the fast paths above: its own function
            if m.name in out or m.function is None:
                continue
            if m.kind == "image":
                two_classes = len(task.labels) and task.labels.min() != task.labels.max()
                out[m.name] = float(m.function(task.labels, scores)) if two_classes else float("nan")
            elif m.kind == "pixel" and maps is not None:
                out[m.name] = float(m.function(task.masks, maps))
        if identify:
            correct = np.array([c.tasks == (eval_task,) for c in chosen])
            out["task_id_acc"] = float(correct.mean())
            for name, sel in zip(ROUTED, (correct, ~correct)):
                part = _image_metrics(task.labels[sel], scores[sel], eval_task, quiet=True)
                for m in IMAGE_METRICS:
                    out[f"{m}|{name}"] = part[m]
        self._metric_memo[key] = out
        return out

    # -- label-free thresholds (pclsim.core.thresholds) --------------------------------------------
    def threshold(self, ref: BankRef) -> dict[str, float]:
        """{policy label: threshold} of bank `ref`, fitted on the image scores of the held-out images of the
        tasks the bank holds (ref.tasks), each scored against `ref` as a test image would be: the calibration
        images (fpr, sigma) or the labelled validation images (valid). No test image or label is read.
        Raises ValueError when a task of the bank lacks the held-out images a policy needs."""
        if ref not in self._thresholds:
            def held_out(name_of, what):
                scores, labels = [], []
                for t in ref.tasks:
                    name = name_of(t)
                    if name not in self.tasks:
                        raise ValueError(f"task {t}: no {what} to fit thresholds on")
                    n = self.tasks[name].test.shape[0]
                    scores.append(self.scores(name, (ref,) * n)[0])
                    labels.append(self.tasks[name].labels)
                return np.concatenate(scores), np.concatenate(labels)

            fitted = {}
            if any(p.needs_calibration for p in self.thresholds):
                cal, _ = held_out(calibration_name, "calibration images (dataset.calibration)")
                fitted.update({p.label: p.fit(cal) for p in self.thresholds if p.needs_calibration})
            if any(p.kind == "valid" for p in self.thresholds):
                val, y = held_out(validation_name, "validation split")
                fitted.update({p.label: p.fit(valid_scores=val, valid_labels=y) for p in self.thresholds
                               if p.kind == "valid"})
            self._thresholds[ref] = fitted
        return self._thresholds[ref]

    def deployed(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool, thresholds_of=None) -> dict[str, float]:
        """The metrics of eval_task's test images at the fitted thresholds, per policy.

        Each image is called anomalous when its score exceeds the threshold of the bank it was scored with
        (the routed bank for strategies that identify the task, so a routing error shows here).
        thresholds_of(ref) -> {label: threshold}: default `self.threshold` (refitted for every bank).
        Returns {"<metric>@<label>"} for image_precision, image_recall, image_f1, image_fpr and
        threshold (the mean threshold applied to the task's images, in score units)."""
        memo = None
        if thresholds_of is None:  # refitted thresholds depend on the state only: memoized like the metrics
            memo = (eval_task, tuple(banks), bool(identify))
            if memo in self._deployed:
                return self._deployed[memo]
        thresholds_of = thresholds_of or self.threshold
        chosen = self.route(eval_task, banks, identify)
        refs = tuple(banks[c] for c in chosen)
        key = (eval_task, refs)
        if key not in self._scores:
            self._scores[key] = self.scores(eval_task, refs)[0]
        scores = self._scores[key]
        labels = self.tasks[eval_task].labels
        out = {}
        fitted = {r: thresholds_of(r) for r in set(refs)}
        for p in self.thresholds:
            thr = np.array([fitted[r][p.label] for r in refs], dtype=np.float64)
            for m, v in deployed_metrics(labels, scores, thr).items():
                out[metric_name(m, p)] = v
            out[metric_name("threshold", p)] = float(thr.mean()) if len(thr) else float("nan")
        if memo is not None:
            self._deployed[memo] = out
        return out

    def maps(self, eval_task: str, banks: tuple[BankRef, ...], identify: bool, images) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and anomaly maps (len(images), S, S) of some test images (the report's gallery)."""
        chosen = self.route(eval_task, banks, identify)
        refs = tuple(banks[c] for c in chosen)
        scores, patch = self.scores(eval_task, refs, images)
        task = self.tasks[eval_task]
        return scores, anomaly_maps(patch, task.grid, task.image_size, self.sigma)


def _image_metrics(labels: np.ndarray, scores: np.ndarray, task: str, quiet: bool = False) -> dict[str, float]:
    """Image metrics, NaN (as scikit-learn's undefined metrics) where the labels hold one class only."""
    if len(labels) == 0 or labels.min() == labels.max():
        return {m: float("nan") for m in IMAGE_METRICS}
    return metric_fns.image_metrics(labels, scores)


# ---------------------------------------------------------------------------------------------
@dataclass
class OrderResult:
    """One simulated run: a strategy over one order of tasks.

    matrices: metric -> (T, T) a[step][position in order]; bank_vectors: per step; seconds: per step;
    routing: (step, eval_task, chosen_task, n_images) for strategies that identify the task;
    routed: (step, eval_task, "correct"|"wrong", metric, value), image metrics by routing outcome.
    """

    strategy: str
    memory_size: int
    order: tuple[str, ...]
    matrices: dict[str, np.ndarray]
    bank_vectors: list[int]
    seconds: list[float] = field(default_factory=list)
    # strategies that identify the task: (step, eval_task, chosen bank's task, test images routed there)
    routing: list[tuple[int, str, str, int]] = field(default_factory=list)
    # (step, eval_task, "correct" | "wrong", metric, value): metrics on the correctly / wrongly routed images
    routed: list[tuple[int, str, str, str, float]] = field(default_factory=list)

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
    sizes, secs, routing, routed = [], [], [], []
    kept: dict = {}  # threshold_refit false: a bank slot keeps the thresholds fitted when it appeared
    # a slot: the one bank of a single-bank model (joint, finetune), else the task a per-task bank holds
    single = T < 2 or len(strategy.banks(tuple(order[:2]))) == 1
    for s in range(T):
        t0 = time.perf_counter()
        banks = strategy.banks(tuple(order[: s + 1]))
        sizes.append(sum(b.size for b in banks))
        thresholds_of = None
        if evaluator.thresholds and not evaluator.refit:
            slot = {}
            for b in banks:
                key = "model" if single else b.tasks
                if key not in kept:
                    kept[key] = evaluator.threshold(b)
                slot[b] = kept[key]
            thresholds_of = lambda ref, slot=slot: slot[ref] if ref in slot else evaluator.threshold(ref)  # noqa: E731
        for j, task in enumerate(order):
            sb, ident = strategy.scoring(banks, task)
            ident = ident or strategy.identifies_task
            res = evaluator.evaluate(task, sb, ident)
            if evaluator.thresholds:
                res = {**res, **evaluator.deployed(task, sb, ident, thresholds_of)}
            for metric, v in res.items():
                if "|" in metric:
                    if strategy.identifies_task:
                        m, outcome = metric.split("|")
                        routed.append((s, task, outcome, m, float(v)))
                    continue
                if metric == "task_id_acc" and not strategy.identifies_task:
                    continue
                mats.setdefault(metric, np.full((T, T), np.nan))[s, j] = v
            if strategy.identifies_task:
                chosen = evaluator.route(task, sb, ident)
                names, counts = np.unique([sb[c].tasks[0] for c in chosen], return_counts=True)
                routing.extend((s, task, str(nm), int(c)) for nm, c in zip(names, counts))
        secs.append(time.perf_counter() - t0)
    for p in evaluator.thresholds:  # how far each task's threshold moved from the step it was learned (its position)
        thr = mats[metric_name("threshold", p)]
        drift = np.full((T, T), np.nan)
        for j in range(T):  # from the step after the task's own (0 there by definition, so not stored)
            drift[j + 1:, j] = (thr[j + 1:, j] - thr[j, j]) / abs(thr[j, j]) if thr[j, j] else np.nan
        mats[metric_name("threshold_drift", p)] = drift
    return OrderResult(strategy.name, strategy.memory_size, tuple(order), mats, sizes, secs, routing, routed)
