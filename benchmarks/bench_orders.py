"""Wall time of a sweep over ALL orders divided by the same sweep over ONE order (target <= 5; naive = 720).

Both runs use the same scenario (scenarios/orders.yaml unless --scenario) and a warm feature cache
(a first run fills it), so the ratio measures what the memoized engine adds per extra order.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from _common import emit
from pclsim.runner.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep_seconds(sc: dict, tmp: Path, tag: str, cache: Path) -> float:
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(sc))
    t0 = time.perf_counter()
    run_sweep(str(path), out=str(tmp / tag), fresh=True, quiet=True, cache_dir=str(cache))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "orders.yaml"))
    ap.add_argument("--keep", help="copy the all-orders results folder here")
    a = ap.parse_args()
    base = yaml.safe_load(Path(a.scenario).read_text())
    tasks = base["dataset"]["tasks"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cache = tmp / "cache"
        one = copy.deepcopy(base)
        one["orders"] = [list(tasks)]
        sweep_seconds(one, tmp, "warmup", cache)  # fills the feature cache
        t_one = sweep_seconds(one, tmp, "one", cache)
        t_all = sweep_seconds(base, tmp, "all", cache)
        if a.keep:
            shutil.copytree(tmp / "all", a.keep, dirs_exist_ok=True)
    emit("orders", {"scenario": a.scenario, "seconds_one_order": t_one, "seconds_all_orders": t_all,
                    "ratio_all_vs_one": t_all / t_one, "naive_ratio": 720})


if __name__ == "__main__":
    main()
