"""Order designs against the truth of all 720 orders of the headline stream (issue 23).

1. Sweeps scenarios/orders.yaml for patchcore_cl over ALL 720 orders at both memory sizes (one seed; pixel
   metrics off, which leaves image AUROC as it is), or reads a finished results folder (--results).
2. Balanced designs: for each memory size and each of --designs relabelling seeds, a balanced (Williams)
   design of 12 orders (2 replicates of 6) is taken from those 720 runs (a run's values depend only on its
   strategy, memory size, seed and order: the engine is exact and memoized, so the subset equals a sweep of
   the 12 orders) and each task's position slope (scipy.stats.linregress, as statistics.parquet) is compared
   with the 95 % interval of the same slope from all 720 orders.
3. Search vs uniform sampling: for each memory size and --search-seeds seeds, `orders: {search: worst,
   budget: 60}` is replayed against the 720 stored values (pclsim.study.adaptive.replay: the decisions a
   sweep would take), and the rank among the 720 of the worst order it found is compared with the worst
   order of the uniform sample of 60 that the design draws beside it (rank 1 = the worst of all 720).

4. Why: how additive the final mean is over (task, arrival step) on this stream (`additivity`).

Prints one JSON line (benchmarks/_common.emit); --readme README.md writes the table into README.md.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from _common import emit, replace_readme_block
from pclsim.analysis.statistics import per_task_values
from pclsim.results.schema import ORDER_SEPARATOR
from pclsim.runner.sweep import run_sweep
from pclsim.study.adaptive import replay
from pclsim.study.orders import balanced_orders
from pclsim.study.scenario import resolve

ROOT = Path(__file__).resolve().parents[1]
METRIC = "image_auroc"


def all_orders(results: str | None) -> pd.DataFrame:
    """per_task_values of patchcore_cl over all 720 orders (image AUROC), from a sweep or a results folder."""
    if results:
        return per_task_values(pd.read_parquet(Path(results) / "matrices.parquet", filters=[("metric", "==", METRIC)]))
    sc = yaml.safe_load((ROOT / "scenarios" / "orders.yaml").read_text())
    sc = dict(copy.deepcopy(sc), name="orders_pcl", strategies=["patchcore_cl"])
    sc["evaluation"] = {"pixel_metrics": False}  # image AUROC only: pixel metrics do not change it
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "orders_pcl.yaml"
        path.write_text(yaml.safe_dump(sc))
        out = run_sweep(str(path), out=str(Path(d) / "out"), quiet=True)
        mat = pd.read_parquet(out / "matrices.parquet", filters=[("metric", "==", METRIC)])
    return per_task_values(mat[mat.strategy == "patchcore_cl"])


def slope(sub: pd.DataFrame) -> tuple[float, float, float]:
    """(slope, ci_low, ci_high) of final value on arrival step: linregress, t interval (as statistics.py)."""
    r = stats.linregress(sub["position"].to_numpy(float), sub["final_value"].to_numpy(float))
    h = stats.t.ppf(0.975, len(sub) - 2) * r.stderr
    return r.slope, r.slope - h, r.slope + h


def balanced_check(pt: pd.DataFrame, tasks: list[str], n_designs: int) -> dict:
    out = {}
    for m, g in pt.groupby("memory_size"):
        truth = {t: slope(g[g.task == t]) for t in tasks}
        per_design = []
        for seed in range(n_designs):
            design = {ORDER_SEPARATOR.join(o) for o in balanced_orders(tasks, 12, seed)}
            sub = g[g.order.isin(design)]
            assert sub.order.nunique() == 12
            est = {t: slope(sub[sub.task == t])[0] for t in tasks}
            per_design.append({t: {"slope_12": est[t], "inside": bool(truth[t][1] <= est[t] <= truth[t][2])}
                               for t in tasks})
        out[int(m)] = {
            "slopes_720": {t: {"slope": v[0], "ci": [v[1], v[2]]} for t, v in truth.items()},
            "designs": per_design,
            "inside_share": float(np.mean([d[t]["inside"] for d in per_design for t in tasks])),
            "all_inside_designs": int(sum(all(d[t]["inside"] for t in tasks) for d in per_design)),
        }
    return out


def search_check(pt: pd.DataFrame, tasks: list[str], seeds: int, budget: int) -> dict:
    out = {}
    for m, g in pt.groupby("memory_size"):
        final = g.groupby("order")["final_value"].mean()  # final mean over tasks (one seed)
        per_task = g.set_index(["order", "task"])["final_value"]
        ranked = final.sort_values(kind="stable")
        rank = {o: i + 1 for i, o in enumerate(ranked.index)}  # 1 = worst of all 720

        def observe(orders, metric, m=int(m)):
            return {o: {("patchcore_cl", m): {"final": float(final[ORDER_SEPARATOR.join(o)]),
                                              "tasks": {t: float(per_task[(ORDER_SEPARATOR.join(o), t)]) for t in o}}}
                    for o in orders}

        rows = []
        for seed in range(seeds):
            sc = resolve({"dataset": {"tasks": tasks}, "strategies": ["patchcore_cl"], "memory_sizes": [int(m)],
                          "orders": {"search": "worst", "budget": budget, "seed": seed}})
            plan = replay(sc, observe)
            res = {r["note"].split(";")[0]: r for r in plan.log if r["kind"] == "result"}
            found = res["most extreme (worst) order found"]
            uni = res["uniform worst"]
            own = [r for r in plan.log if r["kind"] == "order" and r["role"] == "search"]
            curve = np.minimum.accumulate([r["value"] for r in own])
            rows.append({"seed": seed, "search_rank": rank[found["order"]], "search_value": found["value"],
                         "uniform_rank": rank[uni["order"]], "uniform_value": uni["value"],
                         "search_first_at": int(np.argmax(curve == curve[-1]) + 1)})
        out[int(m)] = {"runs": rows, "median_search_rank": float(np.median([r["search_rank"] for r in rows])),
                       "median_uniform_rank": float(np.median([r["uniform_rank"] for r in rows])),
                       "worst_720": float(ranked.iloc[0]), "best_720": float(ranked.iloc[-1])}
    return out


def additivity(pt: pd.DataFrame) -> dict:
    """Why balanced designs work here: per memory size, the largest standard deviation of a task's final value
    among the orders that put it at the same step (0: a task's final value depends on its step alone) and the
    share of the variance of the final mean over orders that the additive (task, step) model explains (R^2 of
    final mean on one-hot (task, step) columns, numpy least squares)."""
    out = {}
    for m, g in pt.groupby("memory_size"):
        cell_sd = g.groupby(["task", "position"])["final_value"].std(ddof=0).max()
        fin = g.groupby("order")["final_value"].mean()
        tasks = sorted(g.task.unique())
        X = np.zeros((len(fin), len(tasks) ** 2))
        for r, o in enumerate(fin.index):
            for p_, t in enumerate(o.split(ORDER_SEPARATOR)):
                X[r, tasks.index(t) * len(tasks) + p_] = 1.0
        y = fin.to_numpy() - fin.mean()
        res = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        out[int(m)] = {"max_within_cell_sd": float(cell_sd), "additive_r2": float(1 - (res @ res) / (y @ y)),
                       "final_mean_range": [float(fin.min()), float(fin.max())]}
    return out


def readme_block(r: dict) -> str:
    lines = ["| M | tasks whose 12-order slope lies in the 720-order 95 % CI (10 designs) | additive R² over 720 | "
             "search: median rank of the worst order found (3 seeds) | uniform sample of 60: median rank |",
             "|---|---|---|---|---|"]
    for m in sorted(r["balanced_12_vs_720"], key=int):
        b, s, a = r["balanced_12_vs_720"][m], r["search_vs_uniform"][m], r["additivity"][m]
        lines.append(f"| {m} | {100 * b['inside_share']:.0f} % ({b['all_inside_designs']} of {len(b['designs'])} "
                     f"designs: every task) | {a['additive_r2']:.3f} | {s['median_search_rank']:.0f} of 720 "
                     f"({', '.join(str(x['search_rank']) for x in s['runs'])}; found at order "
                     f"{', '.join(str(x['search_first_at']) for x in s['runs'])}) | "
                     f"{s['median_uniform_rank']:.0f} of 720 "
                     f"({', '.join(str(x['uniform_rank']) for x in s['runs'])}) |")
    sd = max(a["max_within_cell_sd"] for a in r["additivity"].values())
    r2 = min(a["additive_r2"] for a in r["additivity"].values())
    lines.append(f"\nLargest standard deviation of a task's final AUROC among the orders that put it at the same step: "
                 f"{sd:.4f}; the additive (task, step) model explains {100 * r2:.1f} % of the final mean's variance "
                 "over the 720 orders" + (". On this stream a task's final value depends on its own arrival step "
                 "alone, so any position-balanced design gives the 720-order slopes exactly and the fitted "
                 "model's assignment is the true worst order: an easy case for both (see long_stream below)."
                 if sd < 1e-9 else "."))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", help="a finished results folder of scenarios/orders.yaml (all 720 orders)")
    ap.add_argument("--designs", type=int, default=10, help="balanced designs (relabelling seeds) per memory size")
    ap.add_argument("--search-seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--readme", help="write the table into this README (between <!-- order-designs:begin/end -->)")
    ap.add_argument("--from-json", help="write the README table from this benchmark's saved JSON line instead")
    a = ap.parse_args()
    if a.from_json:
        from _common import json_lines

        r = [x for x in json_lines(a.from_json) if x["benchmark"] == "order_designs"][-1]
        replace_readme_block(a.readme, "order-designs", readme_block(r))
        return
    tasks = yaml.safe_load((ROOT / "scenarios" / "orders.yaml").read_text())["dataset"]["tasks"]
    pt = all_orders(a.results)
    assert pt.order.nunique() == 720, pt.order.nunique()
    r = {"balanced_12_vs_720": balanced_check(pt, tasks, a.designs),
         "search_vs_uniform": search_check(pt, tasks, a.search_seeds, a.budget),
         "additivity": additivity(pt), "budget": a.budget}
    emit("order_designs", r)
    if a.readme:
        replace_readme_block(a.readme, "order-designs", readme_block(r))


if __name__ == "__main__":
    main()
