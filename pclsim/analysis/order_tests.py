"""The tests and estimators behind `pclsim.analysis.statistics`, each a thin layer over scipy.stats.

Bootstrap interval of a mean (scipy.stats.bootstrap), the one-way random-effects ANOVA (method of
moments), Kruskal-Wallis across orders with epsilon^2 (scipy.stats.kruskal), slopes with t
intervals (scipy.stats.linregress, scipy.stats.t), and two permutation tests that re-pair whole
orders (scipy.stats.permutation_test, "pairings"), run together per set of orders by
`PermutationJobs`. Constant data never raise: they give p = 1 (or NaN) with a note.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["N_RESAMPLES", "N_PERMUTATIONS", "SEED", "bootstrap_mean_ci", "random_effects_anova", "kruskal_orders",
           "R2Statistic", "PositionStatistic", "PermutationJobs", "r2_permutation_test", "position_permutation_test",
           "linregress_ci", "pooled_position_slope", "is_constant"]

N_RESAMPLES = 4999      # bootstrap resamples (>= 2000 for BCa: Efron & Tibshirani 1993, ch. 14)
N_PERMUTATIONS = 4999   # permutation-test resamples: p resolution 0.0002
SEED = 0


def is_constant(x: np.ndarray) -> bool:
    """Whether x has (numerically) a single value."""
    x = np.asarray(x, float)
    return x.size > 0 and bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def bootstrap_mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[tuple[float, float], str]:
    """95 % interval of the mean of x by scipy.stats.bootstrap (BCa, 4,999 resamples, seed 0).

    Returns ((low, high), note). One value: NaN interval. Constant values: (v, v). Where BCa is
    degenerate (NaN), the percentile interval is used and the note says so.
    """
    x = np.asarray(x, float)
    if x.size < 2:
        return (np.nan, np.nan), "one value: no interval"
    if is_constant(x):
        return (float(x[0]), float(x[0])), "constant: every value is the same"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback below
        r = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=N_RESAMPLES, method="BCa",
                            rng=np.random.default_rng(SEED))
        lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return (lo, hi), ""
        r = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=N_RESAMPLES, method="percentile",
                            rng=np.random.default_rng(SEED))
    return (float(r.confidence_interval.low), float(r.confidence_interval.high)), "percentile interval (BCa degenerate)"


def random_effects_anova(groups: list[np.ndarray]) -> dict:
    """One-way random-effects ANOVA by the method of moments (Searle et al. 1992, ch. 3).

    groups: one array of replicate values per level (here: the seeds of one order).
    Returns ss_between, ss_within, ms_between, ms_within, n0, var_between (clipped at 0), share
    (var_between / (var_between + ms_within); NaN when both are 0) and eta2 (SS_between / SS_total).
    """
    groups = [np.asarray(g, float) for g in groups if len(g)]
    k = len(groups)
    n_i = np.array([len(g) for g in groups], float)
    N = n_i.sum()
    grand = np.concatenate(groups).mean()
    means = np.array([g.mean() for g in groups])
    ssb = float((n_i * (means - grand) ** 2).sum())
    ssw = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
    msb = ssb / (k - 1) if k > 1 else np.nan
    msw = ssw / (N - k) if N > k else np.nan
    n0 = (N - (n_i ** 2).sum() / N) / (k - 1) if k > 1 else np.nan
    var_b = max(0.0, (msb - msw) / n0) if np.isfinite(msb) and np.isfinite(msw) else np.nan
    tot = var_b + msw
    share = var_b / tot if np.isfinite(tot) and tot > 0 else np.nan
    sst = ssb + ssw
    eta2 = ssb / sst if sst > 0 else np.nan
    return {"ss_between": ssb, "ss_within": ssw, "ms_between": msb, "ms_within": msw, "n0": n0,
            "var_between": var_b, "share": share, "eta2": eta2}


def kruskal_orders(groups: list[np.ndarray]) -> tuple[float, float, float, str]:
    """(H, p, epsilon^2, note) of scipy.stats.kruskal across orders; constant data: (0, 1, 0, note)."""
    allv = np.concatenate(groups)
    n = allv.size
    if is_constant(allv):
        return 0.0, 1.0, 0.0, "constant: every run has the same value, so the order has no effect"
    h, p = stats.kruskal(*groups)
    return float(h), float(p), float(h / (n - 1)), ""


class R2Statistic:
    """R^2 of the OLS of y (n,) on X (n, k) with an intercept, as a function of a re-pairing of y with
    the rows of X (X'X does not change under it). `constant` when y has no variance."""

    def __init__(self, y: np.ndarray, X: np.ndarray):
        y = np.asarray(y, float)
        self.constant = is_constant(y)
        self.Xc = np.asarray(X, float) - np.mean(X, 0)
        self.yc = y - y.mean()
        self.sst = float(self.yc @ self.yc)
        self.pinv = np.linalg.pinv(self.Xc.T @ self.Xc)

    def observed(self) -> float:
        return float(_r2_batch(self.yc[:, None], self.Xc, self.pinv, np.array([self.sst]), None)[0, 0])


def _r2_batch(Y, Xc, pinv, sst, idx):
    """R^2 of each column of Y (n, K) under re-pairings idx (B, n) (None: as given) -> (B, K).

    Computed column by column, so a column's values do not depend on what it is stacked with."""
    out = []
    for k in range(Y.shape[1]):
        yk = Y[:, k][None] if idx is None else Y[:, k][idx]   # (B, n)
        b = yk @ Xc                                           # (B, j): X'y
        out.append(((b @ pinv) * b).sum(-1) / sst[k])
    return np.stack(out, axis=-1)


class PositionStatistic:
    """|within-task covariance of value and arrival step| as a function of a re-pairing of the orders'
    values with the orders' arrival steps.

    P, V: (orders, tasks) arrival steps and values (seeds averaged; NaN where a task has no value,
    e.g. the forgetting of the last task). Statistic: |sum over cells of P * (V - task mean of V)|,
    the pooled within-task slope's numerator. `note` is set (and `usable` False) when there is
    nothing to test: constant values, fewer than 3 orders, every task at one step.
    """

    def __init__(self, P: np.ndarray, V: np.ndarray):
        P, V = np.asarray(P, float), np.asarray(V, float)
        ok = np.isfinite(V)
        self.note = ""
        self.G = None
        if P.shape[0] < 3 or not ok.any():
            self.note = "too few orders for a permutation test"
        elif np.ptp(P, axis=0).max() == 0:
            self.note = "every task arrives at the same step in every order"
        else:
            n_ok = ok.sum(axis=0)  # a task with no finite value (e.g. no forgetting as the last task) has mean 0
            mean = np.where(ok, V, 0.0).sum(axis=0) / np.maximum(n_ok, 1)
            Vc = np.where(ok, V - mean, 0.0)
            if float((Vc ** 2).sum()) <= 1e-24:
                self.note = "constant: the value does not depend on the arrival step"
            else:
                self.G = P @ Vc.T     # G[o, o2]: order o's arrival steps against order o2's values
                # an upper bound of |statistic| under any re-pairing: the tests see statistic / scale
                # rounded to 1e-9, so that re-pairings that tie exactly tie in floating point too
                self.scale = float(np.abs(P).max(0) @ np.abs(Vc).sum(0)) or 1.0
        self.usable = self.G is not None

    def observed(self) -> float:
        return float(abs(np.trace(self.G)))


class PermutationJobs:
    """Permutation tests over the same orders, run together in few scipy.stats.permutation_test calls.

    Every test here permutes which order a value belongs to (permutation_type "pairings"), so the
    tests of one set of orders share one stream of permutations: each call uses the same seed, and
    each test's p equals the one its own call would give. Jobs are R2Statistic / PositionStatistic
    with the row whose p_value `run` fills (alternative "greater": large statistics are extreme).
    """

    CHUNK = 16   # tests per call: bounds the memory of stacked position tables (orders^2 x CHUNK)

    def __init__(self):
        self.jobs: dict[tuple, list] = {}

    def add(self, orders, statistic, row: dict) -> None:
        self.jobs.setdefault((tuple(orders), type(statistic).__name__), []).append((statistic, row))

    def run(self) -> None:
        for (orders, kind), jobs in self.jobs.items():
            n = len(orders)
            for c in range(0, len(jobs), self.CHUNK):
                chunk = jobs[c : c + self.CHUNK]
                if kind == "R2Statistic":
                    first = chunk[0][0]
                    Y = np.stack([j.yc for j, _ in chunk], axis=1)
                    sst = np.array([j.sst for j, _ in chunk])

                    def stat(idx, axis=-1, Y=Y, sst=sst, Xc=first.Xc, pinv=first.pinv):
                        idx = np.asarray(idx)
                        out = _r2_batch(Y, Xc, pinv, sst, idx.reshape(-1, n))
                        return np.round(out.reshape(*idx.shape[:-1], len(sst)), 10)  # exact ties stay ties
                else:
                    Gs = np.stack([j.G / j.scale for j, _ in chunk])      # (K, n, n)
                    rows = np.arange(n)

                    def stat(idx, axis=-1, Gs=Gs, rows=rows):
                        v = np.abs(Gs[:, rows, np.asarray(idx)].sum(-1))  # (K, ...): one column at a time
                        return np.round(np.moveaxis(v, 0, -1), 9)
                res = stats.permutation_test((np.arange(n),), stat, permutation_type="pairings",
                                             vectorized=True, n_resamples=N_PERMUTATIONS, alternative="greater",
                                             batch=max(20, 100_000 // n),  # same draws for any chunk
                                             rng=np.random.default_rng(SEED))
                for (_, row), pv in zip(chunk, np.atleast_1d(res.pvalue)):
                    row["p_value"] = float(pv)
        self.jobs = {}


def r2_permutation_test(y: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    """(R^2, p): OLS of y on X with an intercept; null by re-pairing y with the rows of X
    (scipy.stats.permutation_test, "pairings", 4,999 resamples, seed 0). Constant y: (0, 1)."""
    st = R2Statistic(y, X)
    if st.constant:
        return 0.0, 1.0
    row: dict = {}
    jobs = PermutationJobs()
    jobs.add(range(len(y)), st, row)
    jobs.run()
    return st.observed(), row["p_value"]


def position_permutation_test(P: np.ndarray, V: np.ndarray) -> tuple[float, float, str]:
    """(statistic, p, note): permutation test of "a task's value does not depend on its arrival step".

    See `PositionStatistic`. The null re-pairs the values of one order with the arrival steps of
    another (scipy.stats.permutation_test, "pairings"; |statistic|, so two-sided), so each permuted
    order is still a permutation of the tasks and each task keeps its own level. Constant values:
    p = 1; nothing to test: NaN, with the note.
    """
    st = PositionStatistic(P, V)
    if not st.usable:
        return (0.0, 1.0, st.note) if st.note.startswith("constant") else (np.nan, np.nan, st.note)
    row: dict = {}
    jobs = PermutationJobs()
    jobs.add(range(np.shape(P)[0]), st, row)
    jobs.run()
    return st.observed(), row["p_value"], ""


def linregress_ci(x, y) -> tuple[float, tuple[float, float], float, int, str]:
    """(slope, 95 % interval, p, n, note) of scipy.stats.linregress(x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or is_constant(x):
        return np.nan, (np.nan, np.nan), np.nan, n, "too few points or a single arrival step: no slope"
    if is_constant(y):
        return 0.0, (0.0, 0.0), 1.0, n, "constant: the value does not depend on the arrival step"
    r = stats.linregress(x, y)
    q = stats.t.ppf(0.975, n - 2)
    return float(r.slope), (float(r.slope - q * r.stderr), float(r.slope + q * r.stderr)), float(r.pvalue), n, ""


def pooled_position_slope(task: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """OLS slope of y on x with one intercept per task (within-task slope), its 95 % interval and
    t-test p (scipy.stats.t, n - n_tasks - 1 degrees of freedom), and the within-task R^2."""
    df = pd.DataFrame({"t": task, "x": np.asarray(x, float), "y": np.asarray(y, float)}).dropna()
    xc = (df["x"] - df.groupby("t")["x"].transform("mean")).to_numpy()
    yc = (df["y"] - df.groupby("t")["y"].transform("mean")).to_numpy()
    n, g = len(df), df["t"].nunique()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    dof = n - g - 1
    if dof < 1 or sxx <= 0:
        return {"slope": np.nan, "ci": (np.nan, np.nan), "p": np.nan, "r2": np.nan, "n": n,
                "note": "too few points or a single arrival step: no slope"}
    b = float(xc @ yc) / sxx
    if syy <= 1e-24:
        return {"slope": 0.0, "ci": (0.0, 0.0), "p": 1.0, "r2": 0.0, "n": n,
                "note": "constant: the value does not depend on the arrival step"}
    rss = max(syy - b * b * sxx, 0.0)
    se = math.sqrt(rss / dof / sxx)
    q = stats.t.ppf(0.975, dof)
    p = float(2 * stats.t.sf(abs(b / se), dof)) if se > 0 else 0.0
    return {"slope": b, "ci": (b - q * se, b + q * se), "p": p, "r2": b * b * sxx / syy, "n": n, "note": ""}
