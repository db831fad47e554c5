"""Task-order robustness as a statistical study: does the order matter, by how much, and why.

Every statistic comes from the results tables (summary.parquet, matrices.parquet) and is computed
with scipy.stats (the tests themselves live in `pclsim.analysis.order_tests`); `statistics_table` returns
them as one frame with STATISTICS_SCHEMA's columns (pclsim.results.schema; written as statistics.parquet
by the sweep). A
row is keyed by (strategy, memory_size, metric, quantity, statistic, task).

Quantities
- per run (summary.parquet): `final_mean` (mean over tasks of a[T-1][j]) and `avg_forgetting_pct`
  (method.md section 6).
- per task of a run (matrices.parquet): `final_value` = a[T-1][p] of the task trained at step p, and
  `forgetting_pct` = 100 (a[p][p] - a[T-1][p]) / a[p][p] for p < T-1 (the task's term of the average
  forgetting; the last task has none; null where a[p][p] = 0 and for metrics whose relative drop the
  metric registry marks as meaningless, routing accuracy).

Statistics of a run quantity (task = null)
- `mean`: mean over all runs (orders x seeds). 95 % interval: scipy.stats.bootstrap (BCa, 4,999
  resamples, fixed seed) over the runs, sorted by (order, seed), taken as exchangeable. Runs of one
  seed share that seed's coresets, so with few seeds the interval leaves out most of the seed part
  of the uncertainty: `seed_std` reports it. Constant values: interval = the value; one run: none.
- `seed_std`: the seed noise, sqrt of the within-order mean square (pooled standard deviation over
  seeds of one order). Needs >= 2 seeds.
- `order_share`: the share of the variance of a run's value explained by its order, from the
  one-way random-effects ANOVA with orders as groups and seeds as replicates (method of moments:
  s2_order = (MS_between - MS_within) / n0, clipped at 0; share = s2_order / (s2_order + MS_within);
  Searle, Casella & McCulloch, Variance Components, 1992, ch. 3). effect_size: eta^2 = SS_between /
  SS_total. With one seed order and seed noise cannot be separated: NaN, labelled.
- `order_test`: a test of "the order has no effect".
  * >= 2 seeds: Kruskal-Wallis across orders, the seeds of an order being its sample
    (scipy.stats.kruskal). Rank-based, so it needs no normality of bounded, skewed accuracies, and
    it treats seed noise as the noise the order effect must exceed. (Friedman with seeds as blocks
    would also remove a seed's global level, but with few seeds and hundreds of orders it has little
    power; Kruskal-Wallis is the conservative choice.) value: H; effect_size: epsilon^2 = H / (n - 1)
    (Tomczak & Tomczak, Trends in Sport Sciences 21, 2014).
  * one seed: no replicate exists, so the test is on the order's STRUCTURE: OLS of the run's value
    on the arrival position of every task (T - 1 columns; positions add up to a constant), statistic
    R^2, null distribution by permuting which order each value belongs to
    (scipy.stats.permutation_test, permutation_type="pairings", 4,999 resamples, fixed seed).
    value = effect_size = R^2. Needs more orders than tasks and the same task set in every order.
  Constant values (e.g. patchcore_cl's final mean under `rebalance: truncate`, which depends only on
  the set of tasks): p = 1, labelled.
- `best_order` / `worst_order`: the order with the best / worst value averaged over seeds (final
  mean: highest is best; forgetting: lowest is best); `order` names it, n = its seeds.
  `best_worst_gap`: |best - worst|; effect_size = gap / seed_std (how many seed standard deviations
  apart; NaN with one seed).

Statistics of a per-task quantity
- `position_slope` (task = t): scipy.stats.linregress of t's value on its arrival step (0-based)
  over all runs; 95 % interval slope +- t_{0.975, n-2} stderr (scipy.stats.t); p: linregress's
  two-sided t test of slope 0 (orders of a balanced design: pclsim.analysis.designs says which estimator).
- `rereduction_slope` (task = t; strategies that rebalance a fixed budget over per-task banks,
  patchcore_cl and its ablations): the same against the number of re-reductions the task's bank
  went through, T - 1 - s for a task arriving at step s of T. With orders of one length this is the
  position slope with its sign flipped; it is kept so that the mechanism reads directly.
- `position_slope` (task = null): the pooled within-task slope, OLS of value on arrival step with
  one intercept per task; 95 % interval from scipy.stats.t with n - T - 1 degrees of freedom.
- `position_test` (task = null): permutation test of "a task's value does not depend on its arrival
  step": statistic the within-task covariance of value and arrival step (the pooled slope's
  numerator), null by re-pairing whole orders with the values of other orders
  (scipy.stats.permutation_test, "pairings", 4,999 resamples, two-sided), which keeps every order a
  permutation of the tasks and each task's level; it does not assume the tasks of one order are
  independent, as the t interval does. value: the pooled slope; effect_size: the share of the
  within-task variance explained by the arrival step.

`difficulty` rows (strategy "single_task", quantity `final_value`, per task): the single-task
PatchCore image AUROC at the largest memory size that easy_to_hard / hard_to_easy sort by
(`measure_difficulty`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .designs import balanced_suffix
from .order_tests import (N_PERMUTATIONS, N_RESAMPLES, SEED, PermutationJobs, PositionStatistic,
                          R2Statistic, bootstrap_mean_ci, is_constant, kruskal_orders, linregress_ci,
                          pooled_position_slope, position_permutation_test, r2_permutation_test, random_effects_anova)
from ..results.schema import ORDER_SEPARATOR, STATISTICS_COLUMNS, STATISTICS_SCHEMA, legacy_renames

__all__ = ["STATISTICS_SCHEMA", "STATISTICS_COLUMNS", "RUN_QUANTITIES", "TASK_QUANTITIES", "per_task_values",
           "statistics_table", "bootstrap_mean_ci", "random_effects_anova", "kruskal_orders", "pooled_position_slope",
           "PermutationJobs", "R2Statistic", "PositionStatistic", "r2_permutation_test", "position_permutation_test",
           "measure_difficulty", "difficulty_rows", "rebalancing_strategies", "order_sentence", "linregress_ci",
           "N_RESAMPLES", "N_PERMUTATIONS", "SEED"]

RUN_QUANTITIES = ("final_mean", "avg_forgetting_pct")
TASK_QUANTITIES = ("final_value", "forgetting_pct")
HIGHER_IS_BETTER = {"final_mean": True, "avg_forgetting_pct": False, "final_value": True, "forgetting_pct": False}
_SEP = ORDER_SEPARATOR


def rebalancing_strategies() -> set[str]:
    """Strategies whose per-task banks are re-reduced on every arrival (PatchCoreCL and its ablations)."""
    from ..study.strategies import STRATEGIES, PatchCoreCL

    return {name for name, cls in STRATEGIES.items() if issubclass(cls, PatchCoreCL)}


# ----------------------------------------------------------------------------- inputs

def per_task_values(mat: pd.DataFrame) -> pd.DataFrame:
    """Per run and task: arrival step, number of tasks, final value and forgetting (%).

    mat: matrices.parquet rows (run_id or 0.1.0's trial_id, strategy, memory_size, seed, order,
    step, eval_task, metric, value). Returns one row per (run, metric, task present at the last
    step) with columns run_id, strategy, memory_size, seed, order, metric, task, position (0-based
    arrival step), n_tasks, final_value, forgetting_pct (NaN for the last task, or a zero diagonal).
    """
    mat = mat.rename(columns=legacy_renames(mat.columns))
    cols = ["run_id", "strategy", "memory_size", "seed", "order", "metric", "task", "position", "n_tasks",
            "final_value", "forgetting_pct"]
    if mat.empty:
        return pd.DataFrame(columns=cols)
    order = mat["order"].astype("category")
    cats = list(order.cat.categories)
    names = [str(o).split(_SEP) for o in cats]
    evt = mat["eval_task"].astype("category")
    tcats = [str(t) for t in evt.cat.categories]
    lut = np.full((len(cats), len(tcats)), -1, np.int64)   # (order, task) -> arrival step
    tix = {t: i for i, t in enumerate(tcats)}
    for k, n in enumerate(names):
        for i, t in enumerate(n):
            if t in tix:
                lut[k, tix[t]] = i
    code, tcode = order.cat.codes.to_numpy(), evt.cat.codes.to_numpy()
    task = np.asarray(tcats, dtype=object)[tcode]
    n_tasks = np.array([len(n) for n in names])[code]
    pos = lut[code, tcode]
    if (pos < 0).any():
        k = int(np.flatnonzero(pos < 0)[0])
        raise ValueError(f"matrices: eval_task {task[k]!r} is not in its order {cats[code[k]]!r}")
    step = mat["step"].to_numpy()
    base = mat.assign(task=task, position=pos, n_tasks=n_tasks)
    keys = ["run_id", "metric", "task"]
    final = base[step == n_tasks - 1]
    diag = base[step == pos].set_index(keys)["value"]
    out = final[["run_id", "strategy", "memory_size", "seed", "order", "metric", "task", "position", "n_tasks"]].copy()
    out["final_value"] = final["value"].to_numpy(float)
    d = diag.reindex(pd.MultiIndex.from_frame(final[keys])).to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 100.0 * (d - out["final_value"].to_numpy()) / d
    f[(out["position"].to_numpy() >= out["n_tasks"].to_numpy() - 1) | ~np.isfinite(f)] = np.nan
    f[out["metric"].isin(_not_relative(out["metric"].unique())).to_numpy()] = np.nan  # e.g. routing accuracy
    out["forgetting_pct"] = f
    for c in ("strategy", "order", "metric", "task"):
        out[c] = out[c].astype(str)
    return out[cols].reset_index(drop=True)


def _registered(metric: str):
    """The registry's Metric (pclsim.core.metric_registry.get_metric, which also builds "<metric>@<policy>"
    names), or None for a name it does not know."""
    from ..core.metric_registry import get_metric

    try:
        return get_metric(metric)
    except KeyError:
        return None


def _direction(metric: str):
    """The registry's `higher_is_better` of a metric (True for an unregistered name)."""
    m = _registered(metric)
    return True if m is None else m.higher_is_better


def _not_relative(metrics) -> list[str]:
    """The metrics whose relative forgetting means nothing (the registry's `not_summarised`)."""
    return [m for m in metrics if (r := _registered(m)) is not None and "avg_forgetting_pct" in r.not_summarised]


# ----------------------------------------------------------------------------- building blocks

def _row(strategy, memory_size, metric, quantity, statistic, *, task=None, order=None, value=np.nan,
         ci=(np.nan, np.nan), p=np.nan, effect=np.nan, n=0, method="", note="") -> dict:
    return {"strategy": str(strategy), "memory_size": int(memory_size), "metric": str(metric),
            "quantity": quantity, "statistic": statistic, "task": task, "order": order,
            "value": float(value), "ci_low": float(ci[0]), "ci_high": float(ci[1]), "p_value": float(p),
            "effect_size": float(effect), "n": int(n), "method": method, "note": note}


# ----------------------------------------------------------------------------- the table

def _run_level(key, quantity, g: pd.DataFrame, jobs: PermutationJobs) -> list[dict]:
    strategy, msize, metric = key
    g = g[np.isfinite(g[quantity].to_numpy(float))]
    if g.empty:
        return []
    rows = []
    g = g.assign(order=g["order"].astype(str)).sort_values(["order", "seed"], kind="stable")
    codes, uniq = pd.factorize(g["order"], sort=True)
    # 12 decimals: the same bank state reached through two orders sums its tasks in another order, and
    # the last-bit differences must not count as differences between orders (ranks, variances)
    raw = g[quantity].to_numpy(float)
    vals = np.round(raw, 12)
    srt = np.argsort(codes, kind="stable")
    parts = np.split(vals[srt], np.flatnonzero(np.diff(codes[srt])) + 1)
    by_order = dict(zip(uniq, parts))
    n_orders, n_seeds = len(by_order), int(g["seed"].nunique())
    om = pd.Series({o: v.mean() for o, v in by_order.items()})
    # the values as stored (BCa with few runs reacts to last-bit ties), runs sorted by (order, seed)
    ci, note = bootstrap_mean_ci(raw)
    rows.append(_row(*key, quantity, "mean", value=raw.mean(), ci=ci, n=len(raw),
                     method="scipy.stats.bootstrap BCa over runs (orders x seeds)", note=note))
    replicated = any(len(v) > 1 for v in by_order.values())
    an = random_effects_anova(list(by_order.values())) if n_orders > 1 and replicated else None
    seed_std = math.sqrt(an["ms_within"]) if an is not None else (
        float(np.std(vals, ddof=1)) if n_orders == 1 and len(vals) > 1 else np.nan)
    rows.append(_row(*key, quantity, "seed_std", value=seed_std, n=n_seeds,
                     method="sqrt(within-order mean square)",
                     note="" if np.isfinite(seed_std) else "one seed: no seed noise estimate"))
    if n_orders < 2:
        rows.append(_row(*key, quantity, "order_share", n=n_orders, note="one order: nothing to compare"))
        rows.append(_row(*key, quantity, "order_test", n=n_orders, note="one order: nothing to compare"))
        return rows
    if an is not None:
        share_note = "constant: every run has the same value" if not np.isfinite(an["share"]) else ""
        rows.append(_row(*key, quantity, "order_share", value=an["share"], effect=an["eta2"], n=n_orders,
                         method="one-way random-effects ANOVA, orders x seeds (method of moments)", note=share_note))
        h, p, eps, note = kruskal_orders(list(by_order.values()))
        rows.append(_row(*key, quantity, "order_test", value=h, p=p, effect=eps, n=len(g),
                         method="scipy.stats.kruskal across orders (seeds as replicates); effect epsilon^2",
                         note=note))
    else:
        rows.append(_row(*key, quantity, "order_share", n=n_orders,
                         note="one seed: order and seed noise cannot be separated"))
        rows.append(_order_structure_test(key, quantity, om, jobs))
    vals = om.to_dict()
    direction = _direction(key[2])  # True: higher is better; False: lower (an FPR); None: a level
    sign = -1.0 if HIGHER_IS_BETTER[quantity] == (direction is not False) else 1.0
    ranked = sorted(vals, key=lambda o: (sign * vals[o], o))  # best first; ties: the order's name
    best, worst = ranked[0], ranked[-1]
    tie = "all orders tie" if is_constant(om.to_numpy()) else ""
    if direction is None and not tie:
        tie = "no better direction (a score level): best = highest, worst = lowest"
    rows.append(_row(*key, quantity, "best_order", order=best, value=vals[best], n=len(by_order[best]),
                     method="mean over seeds", note=tie))
    rows.append(_row(*key, quantity, "worst_order", order=worst, value=vals[worst], n=len(by_order[worst]),
                     method="mean over seeds", note=tie))
    gap = abs(vals[best] - vals[worst])
    rel = gap / seed_std if np.isfinite(seed_std) and seed_std > 0 else np.nan
    rows.append(_row(*key, quantity, "best_worst_gap", value=gap, effect=rel, n=n_orders,
                     method="|best - worst|; effect: gap / seed_std",
                     note="" if np.isfinite(rel) else ("one seed: no seed noise to compare with" if not
                                                       np.isfinite(seed_std) else "no seed noise (seed_std = 0)")))
    return rows


def _order_structure_test(key, quantity, order_means: pd.Series, jobs: PermutationJobs) -> dict:
    """One seed: permutation test of R^2 of the run value on every task's arrival position."""
    names = [o.split(_SEP) for o in order_means.index]
    tasks = sorted(set(names[0]))
    if any(sorted(n) != tasks for n in names):
        return _row(*key, quantity, "order_test", n=len(names),
                    note="one seed, and the orders hold different task sets: no test")
    if len(names) <= len(tasks):
        return _row(*key, quantity, "order_test", n=len(names),
                    note=f"one seed and {len(names)} orders for {len(tasks)} tasks: too few orders for a test")
    X = np.array([[n.index(t) for t in tasks[:-1]] for n in names], float)
    st = R2Statistic(order_means.to_numpy(float), X)
    method = ("scipy.stats.permutation_test of R^2 of the run value on each task's arrival step "
              "(orders permuted)")
    if st.constant:
        return _row(*key, quantity, "order_test", value=0.0, p=1.0, effect=0.0, n=len(names), method=method,
                    note="constant: every run has the same value, so the order has no effect")
    r2 = st.observed()
    row = _row(*key, quantity, "order_test", value=r2, effect=r2, n=len(names), method=method,
               note="one seed: tested through the order's structure")
    jobs.add(order_means.index, st, row)
    return row


def _task_level(key, quantity, g_all: pd.DataFrame, rebalancing: bool, jobs: PermutationJobs) -> list[dict]:
    g = g_all[np.isfinite(g_all[quantity].to_numpy(float))]
    if g.empty:
        return []
    rows, design = [], balanced_suffix(g)
    for t, sub in g.groupby("task", sort=True):
        s, ci, p, n, note = linregress_ci(sub["position"], sub[quantity])
        rows.append(_row(*key, quantity, "position_slope", task=t, value=s, ci=ci, p=p, n=n,
                         method="scipy.stats.linregress on the arrival step; t interval" + design, note=note))
        if rebalancing:
            rr = sub["n_tasks"] - 1 - sub["position"]
            s, ci, p, n, note = linregress_ci(rr, sub[quantity])
            rows.append(_row(*key, quantity, "rereduction_slope", task=t, value=s, ci=ci, p=p, n=n,
                             method="scipy.stats.linregress on the number of re-reductions; t interval",
                             note=note))
    pooled = pooled_position_slope(g["task"].to_numpy(), g["position"].to_numpy(), g[quantity].to_numpy())
    rows.append(_row(*key, quantity, "position_slope", value=pooled["slope"], ci=pooled["ci"], p=pooled["p"],
                     effect=pooled["r2"], n=pooled["n"],
                     method="OLS within tasks (one intercept per task); scipy.stats.t interval",
                     note=pooled["note"]))
    avg = g_all.groupby(["order", "task"], observed=True)[[quantity, "position"]].mean()
    V = avg[quantity].unstack("task")
    P = avg["position"].unstack("task")
    if P.isna().any().any():
        rows.append(_row(*key, quantity, "position_test", n=len(V),
                         note="the orders hold different task sets: no permutation test"))
    else:
        st = PositionStatistic(P.to_numpy(float), V.to_numpy(float))
        const = st.note.startswith("constant")
        row = _row(*key, quantity, "position_test", value=pooled["slope"], p=1.0 if const else np.nan,
                   effect=pooled["r2"], n=len(V), method="scipy.stats.permutation_test of the within-task "
                   "covariance of value and arrival step (orders permuted)",
                   note=st.note or (pooled["note"] if not np.isfinite(pooled["slope"]) else ""))
        if st.usable:
            jobs.add(V.index, st, row)
        rows.append(row)
    return rows


def statistics_table(summary: pd.DataFrame, matrices: pd.DataFrame | None = None,
                     difficulty: dict | None = None, metrics: list[str] | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """The order-robustness statistics of a study (module docstring), one row per statistic.

    summary: summary.parquet rows; matrices: matrices.parquet rows (per-task statistics are left
    out without them); difficulty: optional {"values": {task: auroc}, "memory_size": M, "seeds": [..]}
    as recorded by the sweep (`difficulty_rows`); metrics: restrict to these metrics; progress: a
    tqdm bar on stderr. Returns a frame with STATISTICS_COLUMNS, deterministic (fixed resampling seeds).
    """
    import sys

    from tqdm import tqdm

    summary = summary.rename(columns=legacy_renames(summary.columns))
    if metrics is not None:
        summary = summary[summary["metric"].isin(metrics)]
    pt = None
    if matrices is not None and len(matrices):
        mat = matrices if metrics is None else matrices[matrices["metric"].isin(metrics)]
        pt = per_task_values(mat)
    rows: list[dict] = []
    jobs = PermutationJobs()
    keys = ["strategy", "memory_size", "metric"]
    run_groups = list(summary.groupby(keys, sort=True, observed=True))
    task_groups = list(pt.groupby(keys, sort=True, observed=True)) if pt is not None else []
    with tqdm(total=len(run_groups) + len(task_groups) + 1, desc="statistics", unit="group", disable=not progress,
              file=sys.stderr) as bar:
        for key, g in run_groups:
            key = (str(key[0]), int(key[1]), str(key[2]))
            for q in RUN_QUANTITIES:
                if q in g.columns:
                    rows += _run_level(key, q, g, jobs)
            bar.update(1)
        reb = rebalancing_strategies()
        for key, g in task_groups:
            key = (str(key[0]), int(key[1]), str(key[2]))
            for q in TASK_QUANTITIES:
                rows += _task_level(key, q, g, key[0] in reb, jobs)
            bar.update(1)
        jobs.run()  # every permutation test of one set of orders in a few passes
        bar.update(1)
    if difficulty:
        rows += difficulty_rows(difficulty)
    out = pd.DataFrame(rows, columns=STATISTICS_COLUMNS)
    return out.astype({"memory_size": "int64", "n": "int64"})


# ----------------------------------------------------------------------------- difficulty

def measure_difficulty(tasks: dict, sc: dict, device=None) -> dict:
    """Each task's single-task PatchCore image AUROC at the largest memory size, mean over the seeds.

    tasks: {name: TaskFeatures} (or objects with `.open()` giving them); sc: the resolved scenario.
    Runs Run("multi_model", max M, seed, (task,)) through `pclsim.study.engine.simulate` (multi_model on
    one task is plain PatchCore). Returns {"values": {task: auroc}, "memory_size": M, "seeds": [..]}
    for `difficulty_rows` and `expand_runs(sc, difficulty=result["values"])`.
    """
    from ..study.engine import simulate
    from ..study.scenario import Run

    tasks = {k: (v.open() if hasattr(v, "open") else v) for k, v in tasks.items()}
    m = max(sc["memory_sizes"])
    runs = [Run("multi_model", m, seed, (t,)) for seed in sc["seeds"] for t in tasks]
    per: dict[str, list[float]] = {}
    plain = dict(sc, evaluation={**sc.get("evaluation", {}), "thresholds": []})  # image AUROC only: no fits
    for run, res in simulate(runs, tasks, plain, device=device):
        per.setdefault(run.order[0], []).append(float(res.matrices["image_auroc"][0, 0]))
    return {"values": {t: float(np.mean(v)) for t, v in per.items()}, "memory_size": m, "seeds": list(sc["seeds"])}


def difficulty_rows(difficulty: dict) -> list[dict]:
    """statistics rows (strategy "single_task", statistic "difficulty") of a measured difficulty."""
    vals = difficulty["values"]
    ranked = sorted(vals, key=lambda t: -vals[t])
    return [_row("single_task", difficulty["memory_size"], "image_auroc", "final_value", "difficulty", task=t,
                 value=vals[t], n=len(difficulty.get("seeds", [0])),
                 method="pclsim.study.engine.simulate, multi_model on the task alone, mean over seeds",
                 note=f"rank {ranked.index(t) + 1} of {len(vals)} from easiest (highest AUROC): easy_to_hard order")
            for t in vals]


from .order_sentences import order_sentence  # noqa: E402,F401  (its home before 0.2; the sentences live there)
