"""scenarios/long_stream.yaml from an empty feature cache: wall time (issue 23 asks <= 10 min on 2 cores) and
its answer, how much the order moves the final metric (the sweep's closing note, from design.parquet).

Prints one JSON line (benchmarks/_common.emit); --readme README.md writes the figures into README.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import emit, replace_readme_block
from pclsim.runner.adaptive import closing_note, plan_rounds
from pclsim.runner.sweep import run_sweep
from pclsim.study.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "long_stream.yaml"))
    ap.add_argument("--readme", help="write the figures into this README (<!-- long-stream:begin/end -->)")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        os.environ["PCLSIM_CACHE_DIR"] = str(Path(d) / "cache")  # empty: features extracted in the timing
        t0 = time.perf_counter()
        out = run_sweep(a.scenario, out=str(Path(d) / "out"), quiet=True)
        wall = time.perf_counter() - t0
        sc = load_scenario(a.scenario)
        plan, groups = plan_rounds(sc, out)
        note = [plan.stop] + closing_note(plan)
    runs = sum(map(len, groups.values()))
    emit("long_stream", {"wall_s": wall, "load_before": load, "cpus": os.cpu_count(), "orders": len(plan.orders),
                         "runs": runs, "rounds": len(plan.rounds), "closing_note": note})
    if a.readme:
        body = (f"`pclsim sweep scenarios/long_stream.yaml` (12 tasks, patchcore_cl, M = 1000 and 3000, `sample: auto` "
                f"beside a worst-order search) from an empty feature cache took "
                f"**{wall // 60:.0f} min {wall % 60:.0f} s** "
                f"on {os.cpu_count()} cores (load {load:.2f} before): {len(plan.orders)} orders, {runs} runs in "
                f"{len(plan.rounds)} rounds (`benchmarks/bench_long_stream.py`). Its closing note:\n\n"
                + "\n".join(f"- {x}" for x in note) + "\n")
        replace_readme_block(a.readme, "long-stream", body)


if __name__ == "__main__":
    main()
