"""Time `build_report` on a fabricated full study: 6 tasks, all 720 orders, 4 strategies, 2 memory sizes.

Prints one JSON line {"benchmark": "report", "seconds": ..., "rows": ...}. The target is under a
minute on 2 cores (the sweep's largest headline study).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from _common import emit  # noqa: E402
from conftest_report_data import fabricate_results  # noqa: E402

from pclsim.report import build_report  # noqa: E402

TASKS = ["Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=6, help="number of tasks (orders = all permutations)")
    ap.add_argument("--gallery", type=int, default=4, help="gallery files per task")
    args = ap.parse_args()
    tasks = TASKS[: args.tasks] if args.tasks <= len(TASKS) else [f"task{i}" for i in range(args.tasks)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # every task masked: all 6 metrics on every cell, about 1.2M matrix rows
        info = fabricate_results(tmp, tasks=tasks, orders="all", memory_sizes=(1000, 3000), masked=tasks,
                                 gallery=args.gallery, matrices_as_folder=True, name="bench")
        fab = time.perf_counter() - t0
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        index = build_report(tmp, metric="image_f1")
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        n_png = len(list(index.parent.glob("*.png")))
    emit("report", {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "rows": info["matrix_rows"],
                    "orders": len(info["orders"]), "figures": n_png, "fabricate_seconds": round(fab, 3)})


if __name__ == "__main__":
    main()
