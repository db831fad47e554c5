"""The headline, timed as a new user meets it: `pclsim sweep scenarios/orders.yaml` from a fresh clone
of this commit, with an empty feature cache, in a new process.

    python benchmarks/bench_headline.py                  # time it, print JSON
    python benchmarks/bench_headline.py --readme         # ... and write the figure into README.md
    python benchmarks/bench_headline.py --keep results/orders   # keep the results folder
    python benchmarks/bench_headline.py --readme-from headline.jsonl  # README figure from a saved line

Prints one JSON line: wall seconds in all, the seconds at which each stage ended (the sweep's
`--debug` stage stamps: Ray up, features, bank sources, trials), the peak resident memory of the
largest process (the driver or a Ray worker, from getrusage), runs and matrix rows written. The
clone is of HEAD (commit what you measure); the machine's load is printed with it, because on
2 shared cores other jobs change the figure.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, json_lines, replace_readme_block

ROOT = Path(__file__).resolve().parents[1]


def run(scenario: str, keep: str | None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                text=True, check=True).stdout.strip()
        env = dict(os.environ, PCLSIM_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=str(clone), TQDM_DISABLE="1")
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", scenario, "--debug"], cwd=clone, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"error: the headline sweep failed (exit {p.returncode}):\n{tail}")
        stages = {m.group(2): float(m.group(1))
                  for m in re.finditer(r"^\[\s*([\d.]+) s\] (.+)$", p.stderr, flags=re.MULTILINE)}
        out = {"commit": commit, "scenario": scenario, "wall_s": round(wall, 1), "load_before": round(load, 2),
               "stage_end_s": stages,
               "peak_rss_gb_largest_process": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2),
               "cpus": os.cpu_count()}
        res = clone / "results" / Path(scenario).stem
        try:
            import pandas as pd

            mat = pd.read_parquet(res / "matrices.parquet")
            out["matrix_rows"] = int(len(mat))
            out["runs"] = int(mat["run_id"].nunique())
        except Exception as e:  # the figure still stands without the counts
            out["counts_error"] = f"{type(e).__name__}: {e}"
        if keep:
            dest = Path(keep).resolve()
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(res, dest)
        return out


def readme_line(r: dict) -> str:
    m, s = divmod(int(round(r["wall_s"])), 60)
    st = r["stage_end_s"]

    def at(key):
        return next((v for k, v in st.items() if k.startswith(key)), float("nan"))

    ray, feats, banks, trials = at("ray started"), at("features done"), at("banks done"), at("trials done")
    return (f"Headline: `pclsim sweep scenarios/orders.yaml` (`rebalance: authors`) from a fresh clone of commit "
            f"{r['commit']} with an empty feature cache took **{m} min {s:02d} s** in all: Ray {ray:.0f} s, features {feats - ray:.0f} s, "
            f"bank sources {banks - feats:.0f} s, trials {trials - banks:.0f} s, summary and statistics "
            f"{r['wall_s'] - trials:.0f} s; {r.get('runs', '?')} runs, {r.get('matrix_rows', '?'):,} matrix rows; "
            f"peak RSS of the largest process {r['peak_rss_gb_largest_process']} GB "
            f"(written by `benchmarks/bench_headline.py`; load average {r['load_before']} before).")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="scenarios/orders.yaml", help="path inside the clone")
    ap.add_argument("--keep", help="copy the results folder here")
    ap.add_argument("--readme", action="store_true", help="write the figure into README.md between the markers")
    ap.add_argument("--readme-from", metavar="JSONL", help="write the README figure from this benchmark's saved "
                                                          "output line (the last one) instead of running")
    a = ap.parse_args()
    if a.readme_from:
        r = json_lines(a.readme_from)[-1]
    else:
        r = run(a.scenario, a.keep)
        emit("headline", r)
    if a.readme or a.readme_from:
        replace_readme_block(ROOT / "README.md", "headline", readme_line(r))


if __name__ == "__main__":
    main()
