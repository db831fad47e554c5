"""The sweep's side of adaptive order designs (pclsim.study.adaptive): what the stored results say, the Tune
trials of each round, and design.parquet.

A round's runs are grouped like any sweep's (pclsim.study.scenario.group_runs) under names prefixed by the
round ("r2-patchcore_cl-M1000-s0-g0"), so a finished round is never run again and a resumed sweep, replaying
the same decisions from the same stored values, continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results.schema import ORDER_SEPARATOR
from ..study.adaptive import Plan, replay
from ..study.scenario import Run, group_runs

__all__ = ["FolderObserver", "plan_rounds", "round_groups", "write_design"]


class FolderObserver:
    """observe(orders, metric) for pclsim.study.adaptive.replay from a results folder's finished trials: per
    order and (strategy, memory size) the final value of every task (a[T-1][j] of the metric) and their mean,
    each a mean over the scenario's seeds; None while any (strategy, memory size, seed) run of the orders is
    not in the folder. Re-reads the folder only when its finished groups changed."""

    def __init__(self, out_dir: Path, sc: dict):
        self.out, self.sc = Path(out_dir), sc
        self._groups: set | None = None
        self._values: dict = {}  # metric -> {order: {(strategy, M): {...}}}

    def _load(self, metric: str) -> dict:
        from ..results.tables import done_groups

        groups = done_groups(self.out)
        if groups != self._groups:
            self._groups, self._values = groups, {}
        if metric in self._values:
            return self._values[metric]
        values = self._values[metric] = {}
        if not groups:
            return values
        T = len(self.sc["dataset"]["tasks"])
        files = [str(self.out / "matrices.parquet" / f"part-{g}.parquet") for g in sorted(groups)]
        cols = ["strategy", "memory_size", "seed", "order", "step", "eval_task", "metric", "value"]
        df = pd.concat([pd.read_parquet(f, columns=cols, filters=[("metric", "==", metric), ("step", "==", T - 1)])
                        for f in files])
        n_seeds = df.groupby(["order", "strategy", "memory_size"])["seed"].nunique()
        per = df.groupby(["order", "strategy", "memory_size", "eval_task"])["value"].mean()
        for (o, s, m), k in n_seeds.items():
            if k < len(self.sc["seeds"]):
                continue
            tv = per.loc[(o, s, m)]
            values.setdefault(tuple(o.split(ORDER_SEPARATOR)), {})[(s, int(m))] = {
                "final": float(tv.mean()), "tasks": {str(t): float(v) for t, v in tv.items()}}
        return values

    def __call__(self, orders, metric):
        values = self._load(metric)
        keys = [(s, int(m)) for s in self.sc["strategies"] for m in self.sc["memory_sizes"]]
        out = {}
        for o in orders:
            v = values.get(tuple(o))
            if v is None or any(k not in v for k in keys):
                return None
            out[tuple(o)] = v
        return out


def round_groups(sc: dict, plan: Plan) -> dict[str, list[Run]]:
    """The Tune trial groups of every round of the plan, named "r<round>-<group>"."""
    out = {}
    for k, orders in enumerate(plan.rounds):
        runs = [Run(s, m, seed, o) for seed in sc["seeds"] for s in sc["strategies"] for m in sc["memory_sizes"]
                for o in orders]
        out.update({f"r{k}-{name}": rs for name, rs in group_runs(runs).items()})
    return out


def plan_rounds(sc: dict, out_dir: Path, observer: FolderObserver | None = None) -> tuple[Plan, dict]:
    """(the plan the folder's finished trials decide, its groups)."""
    observer = observer or FolderObserver(out_dir, sc)
    plan = replay(sc, observer)
    return plan, round_groups(sc, plan)


def write_design(out_dir: Path, plan: Plan) -> pd.DataFrame:
    """design.parquet (pclsim.results.schema.DESIGN): the plan's log, one row per decision."""
    from ..results.schema import DESIGN
    from ..results.tables import write_table

    df = pd.DataFrame(plan.log, columns=DESIGN.names).astype({"round": "int64", "memory_size": "int64", "n": "int64"})
    write_table(df, out_dir, "design")
    return df


def closing_note(plan: Plan) -> list[str]:
    """The sweep's closing lines for an adaptive design: how much the order moves the final metric, with the
    95 % half-width sample: auto reached, and the extreme order the search found against uniform sampling."""
    log = pd.DataFrame(plan.log)
    lines = []
    if log.empty:
        return lines
    checks = log[(log.kind == "check") & (log.quantity == "final_mean")]
    if len(checks):
        last = checks[checks["round"] == checks["round"].max()]
        slopes = log[(log.kind == "check") & (log.quantity == "position_slope") & (log["round"] == last["round"].max())]
        for r in last.itertuples():
            sl = slopes[(slopes.strategy == r.strategy) & (slopes.memory_size == r.memory_size)]
            lines.append(f"{r.strategy} M={r.memory_size}: mean final {r.metric} over {r.n} sampled orders "
                         f"{r.value:.3f} ± {r.ci_half_width:.4f} (95 % CI); widest position-slope half-width "
                         f"{sl.ci_half_width.max():.4f} per step")
    res = log[log.kind == "result"]
    found = res[res.role == "search"]
    if len(found):
        f = found.iloc[0]
        goal = "worst" if "worst" in f.note else "best"
        uni = {n: v for n, v in zip(res.note, res.value)}
        line = (f"{f.strategy} M={f.memory_size}: {goal} order found by the search ({f.n} orders): {f.value:.3f} "
                f"({f.order})")
        if "uniform best" in uni:
            ev = log[(log.design == "search") & (log.kind == "order")].value  # search's and uniform orders
            lo, hi = ev.min(), ev.max()
            line += (f"; a uniform sample of as many orders spans {uni['uniform worst']:.3f} to "
                     f"{uni['uniform best']:.3f}, so the order moves the final mean {f.metric} by at least "
                     f"{hi - lo:.3f} (best minus worst order evaluated)")
        lines.append(line)
    return lines
