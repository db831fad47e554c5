"""Where the headline's time goes, by stage, and what `rebalance: authors` costs against `truncate`.

In one process and one run, on the scenario's features (warm cache; a first call fills it): plan,
selection orders, banks (re-reductions, joint selections), candidate tables and each strategy's
trials over ALL orders, once with `authors` and once with `truncate`. Prints JSON with the seconds
per stage, the ratio authors / truncate (target <= 3), the fallback rate of the candidate lists, and
the spread over orders of patchcore_cl's final image AUROC.

With --baseline DIR (a checkout of pclsim 0.1.0), the same features are also run through 0.1.0's
bank stage and joint trials in a subprocess, for the before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import emit, json_lines, replace_readme_block

ROOT = Path(__file__).resolve().parents[1]


def load_tasks(sc, cache):
    from pclsim.store.cache import load_or_extract
    from pclsim.data import load_stream
    from pclsim.core.features import FeatureExtractor

    streams = load_stream(sc["dataset"], sc["dataset"]["root"])
    fx = FeatureExtractor(sc["model"]["backbone"], sc["model"]["weights"], sc["model"]["layers"],
                          image_size=sc["dataset"]["image_size"])
    return {s.name: load_or_extract(s, fx, cache_root=cache) for s in streams}


def stages(sc, tasks, rebalance):
    from pclsim.study.engine import plan_study, restore_evaluator, run_banks, run_group, run_selection, run_table, candidate_rows
    from pclsim.study.scenario import expand_runs

    co = dict(sc["coreset"], rebalance=rebalance)
    runs = expand_runs(sc)
    out = {}
    t = time.perf_counter()
    sp = plan_study(runs, co).seeds[sc["seeds"][0]]
    out["plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    orders = {k: run_selection(tasks, sp.needs, co, sp.seed, k) for k in sp.selections}
    out["selections_s"] = time.perf_counter() - t
    t = time.perf_counter()
    banks = {}
    for refs in sp.bank_jobs:
        banks.update(run_banks(tasks, sp.needs, co, sp.seed, orders, refs))
    out["banks_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tables = {s: run_table(tasks, sp.needs, co, sp.seed, s, candidate_rows(sp.needs, orders, s)) for s in sp.sources}
    out["tables_s"] = time.perf_counter() - t
    out["distinct_banks"] = len(sp.refs)
    out["candidates_per_task"] = int(np.mean([len(tb.rows) for tb in tables.values()]))
    q = fb = 0
    for strat in sc["strategies"]:
        for m in sc["memory_sizes"]:
            t = time.perf_counter()
            ev = restore_evaluator(tasks, sp, co, orders, banks, tables, reweighting=sc["model"]["reweighting"],
                                   pixel=sc["evaluation"]["pixel_metrics"])
            res = run_group([r for r in runs if r.strategy == strat and r.memory_size == m], ev, co)
            out[f"trial_{strat}_M{m}_s"] = time.perf_counter() - t
            q += ev.stats["nn_queries"]
            fb += ev.stats["fallback_queries"]
            if strat == "patchcore_cl":
                fin = [float(np.mean(o.matrices["image_auroc"][-1])) for _, o in res]
                out[f"patchcore_cl_M{m}_final_image_auroc_mean"] = float(np.mean(fin))
                out[f"patchcore_cl_M{m}_final_image_auroc_std_over_orders"] = float(np.std(fin))
    out["fallback_rate"] = fb / max(q, 1)
    out["bank_stage_s"] = out["selections_s"] + out["banks_s"] + out["tables_s"]
    out["trials_s"] = sum(v for k, v in out.items() if k.startswith("trial_"))
    out["total_s"] = out["plan_s"] + out["bank_stage_s"] + out["trials_s"]
    return out


BASELINE = r'''
import sys, time, json, numpy as np
from pclsim.store.cache import load_or_extract
from pclsim.data import load_stream
from pclsim.core.features import FeatureExtractor
from pclsim.study.engine import plan, make_sources, run_group
from pclsim.study.protocol import Evaluator
from pclsim.study.scenario import load_scenario, expand_runs
sc = load_scenario(sys.argv[1]); cache = sys.argv[2]
streams = load_stream(sc["dataset"], sc["dataset"]["root"])
fx = FeatureExtractor(sc["model"]["backbone"], sc["model"]["weights"], sc["model"]["layers"], image_size=sc["dataset"]["image_size"])
tasks = {s.name: load_or_extract(s, fx, cache_root=cache) for s in streams}
runs = expand_runs(sc); p = plan(runs); seed = sc["seeds"][0]
src = make_sources(tasks, p.sizes[seed], sc["coreset"], seed)
t = time.perf_counter(); ev = Evaluator(src)
for kind, s in p.sources[seed]:
    src.order(kind, s); ev.tables(kind, s)
bank = time.perf_counter() - t
out = {"bank_stage_s": bank}
for m in sc["memory_sizes"]:
    ev2 = Evaluator(src, reweighting=sc["model"]["reweighting"], pixel=sc["evaluation"]["pixel_metrics"])
    for k, tb in ev._tables.items(): ev2.put_tables(*k, tb)
    t = time.perf_counter()
    run_group([r for r in runs if r.strategy == "joint" and r.memory_size == m], src, ev._tables,
              reweighting=sc["model"]["reweighting"], pixel=sc["evaluation"]["pixel_metrics"])
    out[f"trial_joint_M{m}_s"] = time.perf_counter() - t
print(json.dumps(out))
'''


def readme_text(r: dict) -> str:
    """The README's lines on what `authors` costs and what 0.2 changed, from this benchmark's JSON line."""
    a, t = r["authors"], r["truncate"]
    out = (f"All 720 orders of the headline study in one process (2 cores): `rebalance: authors` {a['total_s']:.0f} s "
           f"vs `truncate` {t['total_s']:.0f} s, ratio **{r['ratio_authors_vs_truncate']:.2f}** (target <= 3); "
           f"authors: selections {a['selections_s']:.0f} s, re-reductions and joint selections {a['banks_s']:.0f} s, "
           f"candidate tables {a['tables_s']:.0f} s, trials {a['trials_s']:.0f} s; candidate-list fallback rate "
           f"{100 * a['fallback_rate']:.1f} %.")
    b = r.get("baseline_0.1.0")
    if b:
        joint_after = a["trial_joint_M1000_s"] + a["trial_joint_M3000_s"]
        joint_before = sum(v for k, v in b.items() if k.startswith("trial_joint"))
        out += (f" Same run, 0.1.0 (truncate, projection 128): bank stage {b['bank_stage_s']:.0f} s -> "
                f"{a['bank_stage_s']:.0f} s now with authors ({b['bank_stage_s'] / a['bank_stage_s']:.1f}x); "
                f"joint trials {joint_before:.0f} s -> {joint_after:.0f} s ({joint_before / joint_after:.1f}x; 0.1.0 "
                f"here gets its candidate tables prepared in the bank stage, where its sweep rebuilt them in "
                f"every joint trial).")
    return out + " (`benchmarks/bench_rebalance.py`)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme-from", metavar="JSONL", help="write the README lines from a saved output line")
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "orders.yaml"))
    ap.add_argument("--cache", default=os.environ.get("PCLSIM_CACHE_DIR", str(Path.home() / ".cache" / "pclsim")))
    ap.add_argument("--baseline", help="a checkout of pclsim 0.1.0 to time its bank stage and joint trials")
    a = ap.parse_args()
    if a.readme_from:
        replace_readme_block(ROOT / "README.md", "rebalance", readme_text(json_lines(a.readme_from)[-1]))
        return
    import torch

    from pclsim.study.scenario import load_scenario

    torch.set_num_threads(os.cpu_count() or 1)
    sc = load_scenario(a.scenario)
    tasks = load_tasks(sc, a.cache)
    res = {"scenario": a.scenario, "runs_per_mode": len(sc["strategies"]) * len(sc["memory_sizes"])}
    for rb in ("authors", "truncate"):
        res[rb] = stages(sc, tasks, rb)
        print(json.dumps({rb: res[rb]}), file=sys.stderr, flush=True)
    res["ratio_authors_vs_truncate"] = res["authors"]["total_s"] / res["truncate"]["total_s"]
    if a.baseline:
        import yaml

        old = dict(sc, coreset={"projection": "jl", "projection_dim": 128, "rebalance": "truncate",
                                "joint": "composable"})
        old.pop("pclsim_version", None)
        for k in ("resize", "feature_dtype"):
            old["dataset"].pop(k, None)
            old["model"].pop(k, None)
        path = Path(a.cache) / "baseline_scenario.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in old.items() if k in (
            "name", "dataset", "model", "orders", "strategies", "memory_sizes", "coreset", "seeds")}))
        r = subprocess.run([sys.executable, "-c", BASELINE, str(path), a.cache], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=a.baseline), cwd=a.baseline)
        if r.returncode == 0:
            res["baseline_0.1.0"] = json.loads(r.stdout.strip().splitlines()[-1])
        else:
            res["baseline_0.1.0_error"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
    emit("rebalance", res)


if __name__ == "__main__":
    main()
