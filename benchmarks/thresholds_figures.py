"""The README's "Deployed thresholds" figures, from a real run of scenarios/thresholds.yaml.

    python benchmarks/thresholds_figures.py                             # sweep scenarios/thresholds.yaml, then write
    python benchmarks/thresholds_figures.py --results results/thresholds  # an existing results folder

For each strategy, memory size and label-free threshold policy (pclsim.core.thresholds): the final mean
image F1 at the fitted thresholds, the oracle F1-max, their gap, the FPR reached (the fpr policy targets
0.05), the mean threshold drift, and whether the ORDER moves the deployed F1 (statistics.parquet: the
order test's p-value and the best-worst gap over orders). Means over runs (orders x seeds) of each run's
final mean over tasks. Writes benchmarks/thresholds_figures.md, prints it, and copies it into README.md
between `<!-- thresholds-figures:begin -->` and `<!-- thresholds-figures:end -->`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pclsim  # noqa: E402
from _common import replace_readme_block  # noqa: E402
from pclsim.report.deployed import deployed_table  # noqa: E402

MARKER = "thresholds-figures"


def order_effect(stats: pd.DataFrame, strategy: str, m: int, metric: str) -> tuple[float, float]:
    """(order test p-value, best-worst gap) of the final mean of `metric` (NaN where not computed)."""
    s = stats[(stats.strategy == strategy) & (stats.memory_size == m) & (stats.metric == metric)
              & (stats.quantity == "final_mean")]

    def one(stat, col):
        v = s[s.statistic == stat][col]
        return float(v.iloc[0]) if len(v) else float("nan")

    return one("order_test", "p_value"), one("best_worst_gap", "value")


def figures(results: Path, wall_s: float | None) -> str:
    res = pclsim.load_results(results)
    tab = deployed_table(res.summary)
    if tab.empty:
        raise SystemExit(f"error: {results}: no threshold metrics (the scenario sets no evaluation.thresholds)")
    lines = ["| strategy | M | policy | oracle F1 (test labels) | deployed F1 | gap | FPR | threshold drift | "
             "order test p | best-worst gap over orders |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in tab.iterrows():
        p, gap = order_effect(res.statistics, r.strategy, int(r.memory_size), f"image_f1@{r.policy}")
        lines.append(f"| {r.strategy} | {int(r.memory_size)} | {r.policy} | {r.oracle_f1:.3f} | {r.deployed_f1:.3f} "
                     f"| {r.gap:.3f} | {r.fpr:.3f} | {r.threshold_drift:+.3f} | {p:.2g} | {gap:.3f} |")
    n_runs = res.summary.run_id.nunique()
    lines.append("")
    lines.append(f"_{results.name}: {n_runs} runs, written by `benchmarks/thresholds_figures.py`"
                 + (f" (sweep wall time {wall_s:.0f} s on this machine)" if wall_s else "") + ". Final means over tasks, "
                 "then over runs; drift: relative change of a task's threshold from its own step to the end "
                 "(re-reduced banks score higher); order test: statistics.parquet's test of \"the order has no "
                 "effect\" on the deployed F1._")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, help="an existing results folder (default: run the scenario)")
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "thresholds.yaml")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    a = ap.parse_args(argv)
    wall = None
    results = a.results
    if results is None:
        results = ROOT / "results" / "thresholds"
        t0 = time.perf_counter()
        pclsim.sweep(a.scenario, out=results)
        wall = time.perf_counter() - t0
    body = figures(results, wall)
    (ROOT / "benchmarks" / "thresholds_figures.md").write_text(body)
    print(body, end="")
    replace_readme_block(a.readme, MARKER, body)


if __name__ == "__main__":
    main()
