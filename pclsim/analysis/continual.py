"""Continual-learning metrics of a run's T x T matrix (method.md section 6), on numpy arrays.

matrix[step][task]: the value on the task-th task of the order after training the step-th one.
Every function checks its input: a matrix that is not a non-empty square of real numbers raises
ValueError; a quantity the matrix does not define (a NaN/inf cell the metric needs, as mask-less
tasks have for pixel metrics; a relative drop from a cell that is 0) raises `Undefined`, a
ValueError naming the cell, which the summary turns into a null value with that reason. Re-exported by
`pclsim.metrics` (interface.md's stable names).
"""

from __future__ import annotations

import numpy as np

from ..core.metrics import memory_mb

__all__ = ["final_mean", "average_forgetting", "max_forgetting", "bwt", "fwt", "relative_gap", "memory_mb",
           "PAPER_FORGETTING_DIVISOR", "Undefined"]

PAPER_FORGETTING_DIVISOR = 9  # the authors' script divided by 9 whatever the number of tasks (method.md section 6)


class Undefined(ValueError):
    """The matrix does not define the quantity (its message names the cell and why): not a bad input."""


def _check_matrix(matrix, name: str = "matrix") -> np.ndarray:
    a = np.asarray(matrix)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a real numeric (T,T) matrix, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty square (T,T) matrix, got shape {a.shape}")
    return a


def _need(a: np.ndarray, rows, cols, name: str = "matrix") -> None:
    """Raise if any of the cells a[rows, cols] is NaN or infinite."""
    vals = a[rows, cols]
    bad = ~np.isfinite(vals)
    if bad.any():
        r = np.broadcast_to(rows, vals.shape)[bad][0]
        c = np.broadcast_to(cols, vals.shape)[bad][0]
        raise Undefined(f"{name}[{r}][{c}] is {a[r, c]} but is needed")


def final_mean(matrix) -> float:
    """Mean of the last row: every task after training the whole stream."""
    return _final_mean(_check_matrix(matrix), "matrix")


def _final_mean(a: np.ndarray, name: str) -> float:
    T = a.shape[0]
    _need(a, np.full(T, T - 1), np.arange(T), name)
    return float(a[-1].mean())


def average_forgetting(matrix, paper_compatible: bool = False) -> float:
    """Percent: 100/(T-1) * sum_{i<T-1} (a[i][i] - a[T-1][i]) / a[i][i].

    paper_compatible=True divides by 9 instead of T-1, as the authors' script did.
    """
    cells = _learned_and_final(matrix)
    if cells is None:
        return 0.0
    diag, final = cells
    if (diag == 0).any():
        j = int(np.flatnonzero(diag == 0)[0])
        raise Undefined(f"matrix[{j}][{j}] is 0: relative forgetting is undefined")
    divisor = PAPER_FORGETTING_DIVISOR if paper_compatible else diag.size
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        value = float(100.0 * np.sum((diag - final) / diag) / divisor)
    if not np.isfinite(value):  # a diagonal cell so close to 0 that the relative drop overflows
        j = int(np.argmin(np.abs(diag)))
        raise Undefined(f"matrix[{j}][{j}] is {diag[j]:.3g}: relative forgetting overflows")
    return value


def _learned_and_final(matrix) -> tuple[np.ndarray, np.ndarray] | None:
    """(a[i][i], a[T-1][i]) for i < T-1, every cell checked finite; None when T == 1 (no earlier task)."""
    a = _check_matrix(matrix)
    T = a.shape[0]
    if T == 1:
        return None
    i = np.arange(T - 1)
    _need(a, i, i)
    _need(a, np.full(T - 1, T - 1), i)
    return a[i, i], a[T - 1, i]


def max_forgetting(matrix) -> float:
    """Chaudhry et al. (2018): mean over i<T-1 of max_{i<=l<T-1} a[l][i] - a[T-1][i] (metric points).

    The max runs over the steps since task i was trained (Chaudhry's a[l][i] exists for l >= i
    only), so a value seen before training the task is not counted as knowledge to forget.
    """
    a = _check_matrix(matrix)
    T = a.shape[0]
    if T == 1:
        return 0.0
    l, i = np.tril_indices(T - 1)  # l >= i
    _need(a, l, i)
    _need(a, np.full(T - 1, T - 1), np.arange(T - 1))
    best = np.where(np.tril(np.ones((T - 1, T - 1), bool)), a[: T - 1, : T - 1], -np.inf).max(axis=0)
    return float(np.mean(best - a[T - 1, : T - 1]))


def bwt(matrix) -> float:
    """Backward transfer (Lopez-Paz and Ranzato 2017): mean_{i<T-1} a[T-1][i] - a[i][i]."""
    cells = _learned_and_final(matrix)
    if cells is None:
        return 0.0
    diag, final = cells
    return float(np.mean(final - diag))


def fwt(matrix, baseline) -> float:
    """Forward transfer (Lopez-Paz and Ranzato 2017): mean_{i>0} a[i-1][i] - baseline[i].

    baseline: per-task values (length T) of the untrained/initial model; baseline[0] is unused.
    """
    a = _check_matrix(matrix)
    T = a.shape[0]
    b = np.asarray(baseline)
    if b.dtype.kind not in "iuf" or b.shape != (T,):
        raise ValueError(f"baseline: expected a numeric vector of length {T}, got shape {b.shape} dtype {b.dtype}")
    if T == 1:
        return 0.0
    i = np.arange(1, T)
    _need(a, i - 1, i)
    b = b.astype(np.float64)
    if not np.isfinite(b[1:]).all():
        j = int(np.flatnonzero(~np.isfinite(b[1:]))[0]) + 1
        raise Undefined(f"baseline[{j}] is {b[j]} but is needed")
    return float(np.mean(a[i - 1, i] - b[i]))


def relative_gap(method_matrix, joint_matrix) -> float:
    """final_mean(joint) - final_mean(method), in points of the metric."""
    m = _check_matrix(method_matrix, "method_matrix")
    j = _check_matrix(joint_matrix, "joint_matrix")
    if m.shape != j.shape:
        raise ValueError(f"method_matrix and joint_matrix differ in shape: {m.shape} vs {j.shape}")
    return _final_mean(j, "joint_matrix") - _final_mean(m, "method_matrix")


