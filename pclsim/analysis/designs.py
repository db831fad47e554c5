"""Which estimator the position effects use when the orders form a balanced design.

`statistics.parquet`'s per-task `position_slope` is OLS of a task's final value on its arrival step
(scipy.stats.linregress, pclsim.analysis.statistics). When every task is equally often at every step,
as `orders: {balanced: N}` gives (a Williams design: pclsim.study.orders.williams_design), that OLS
slope equals the contrast of the task's position means,
    slope_t = sum_p (p - pbar) ybar_{t,p} / sum_p (p - pbar)^2,
every position weighted equally, as over all T! orders; with the design's seeded relabelling every order
is marginally a uniform random order, so the estimate is unbiased for the all-orders slope. The t interval
still treats runs as independent. The row's `method` then says so (`balanced_suffix`).
"""

from __future__ import annotations

import pandas as pd

__all__ = ["position_balanced", "balanced_suffix"]


def position_balanced(g: pd.DataFrame) -> bool:
    """Whether the distinct orders of g (pclsim.analysis.statistics.per_task_values rows: order, task,
    position, n_tasks) put every task equally often at every step (at least two orders, one length)."""
    u = g.drop_duplicates(["order", "task"])
    if u["n_tasks"].nunique() != 1 or u["order"].nunique() < 2:
        return False
    counts = pd.crosstab(u["task"], u["position"]).to_numpy()
    return counts.shape[0] == counts.shape[1] and bool((counts == counts.flat[0]).all())


def balanced_suffix(g: pd.DataFrame) -> str:
    """The text a position slope's `method` gets for a balanced set of orders ('' otherwise)."""
    return ("; orders balanced (every task equally often at every step): OLS = contrast of position means"
            if position_balanced(g) else "")
