"""Issue 23: an adaptive order design as a sweep. The search's rounds run as Tune trials, design.parquet
records every decision, and a sweep interrupted between rounds resumes with the same decisions, running only
what is missing."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from pclsim.runner.adaptive import FolderObserver
from pclsim.study.adaptive import replay
from pclsim.study.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def sweep(scenario, out, cache):
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(scenario), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env=dict(os.environ, PCLSIM_CACHE_DIR=str(cache), RAY_ADDRESS=""))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_search_sweep_rounds_design_table_and_resume(tmp_path):
    sc_path = tmp_path / "search.yaml"
    sc_path.write_text(yaml.safe_dump({
        "name": "search", "dataset": {"kind": "synthetic", "tasks": ["Brain_AD", "Liver_AD", "Chest_AD", "Retina_RESC_AD"],
                                      "image_size": 64, "synthetic": {"train": 6, "test": 8}},
        "orders": {"search": "worst", "budget": 6, "batch": 2, "uniform": False},
        "strategies": ["patchcore_cl"], "memory_sizes": [30]}))
    out, cache = tmp_path / "out", tmp_path / "cache"
    sweep(sc_path, out, cache)
    design = pd.read_parquet(out / "design.parquet")
    import pyarrow.dataset as ds

    from pclsim.results.schema import DESIGN

    schema = ds.dataset(out / "design.parquet", format="parquet").schema
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in DESIGN.schema_of(schema.names)]
    own = design[(design.kind == "order") & (design.role == "search")]
    assert len(own) == 6 == own.order.nunique() and sorted(own["round"].unique()) == [0, 1, 2]
    summ = pd.read_parquet(out / "summary.parquet")
    auroc = summ[summ.metric == "image_auroc"].set_index("order")["final_mean"]
    assert set(auroc.index) == set(own.order)
    for o, v in zip(own.order, own.value):  # an order's value is its run's final mean
        assert abs(auroc[o] - v) < 1e-12
    found = design[design.kind == "result"].iloc[0]
    assert found.value == auroc.min() and found.order == auroc.idxmin()
    # the stored results decide the same plan again
    sc = load_scenario(sc_path)
    plan = replay(sc, FolderObserver(out, sc))
    assert plan.finished and [list(r) for r in plan.rounds] == [
        [tuple(o.split(" > ")) for o in own[own["round"] == k].order] for k in range(3)]
    # an interruption after round 1: round 2's trials are gone; the resume reruns exactly them
    before = {p.name: p.stat().st_mtime_ns for p in (out / "matrices.parquet").glob("part-*.parquet")}
    for table in ("matrices", "steps", "routing", "routed"):
        for p in (out / f"{table}.parquet").glob("part-r2-*.parquet"):
            p.unlink()
    sweep(sc_path, out, cache)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "matrices.parquet").glob("part-*.parquet")}
    assert set(after) == set(before)
    assert all(after[n] == before[n] for n in after if not n.startswith("part-r2-"))  # not run again
    again = pd.read_parquet(out / "design.parquet")
    pd.testing.assert_frame_equal(again.reset_index(drop=True), design.reset_index(drop=True))


def test_closing_note_says_how_much_the_order_moves_the_result():
    from pclsim.runner.adaptive import closing_note
    from tests.study.test_adaptive_orders import Planted, sc_of

    obj = Planted(seed=2, scale=0.2)
    plan = replay(sc_of([{"sample": "auto", "precision": 0.01, "max": 36},
                         {"search": "worst", "budget": 18, "batch": 6}]), obj)
    lines = closing_note(plan)
    sampled = [o for o in plan.orders if any(r["order"] == " > ".join(o) and r["role"] == "sample"
                                             for r in plan.log)]
    mean = sum(obj.values[o] for o in sampled) / len(sampled)
    assert lines[0].startswith(f"patchcore_cl M=100: mean final image_auroc over {len(sampled)} sampled orders "
                               f"{mean:.3f} ± ")
    log = pd.DataFrame(plan.log)
    ev = log[(log.design == "search") & (log.kind == "order")].value
    assert lines[1].endswith(f"by at least {ev.max() - ev.min():.3f} (best minus worst order evaluated)")
