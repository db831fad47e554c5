"""The sweep's last stage: the summary, the order statistics and the printed table of everything in the folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .sweep_control import say as _say

__all__ = ["finish"]


def finish(sc, out_dir: Path, stream, quiet, cache_root):
    """Summary of everything in the folder (rebuilt on every run, so a resume completes it)."""
    import pyarrow as pa

    from .results import atomic_write_table, build_summary, chance_level

    from .results import read_table

    mat = read_table(out_dir / "matrices.parquet")
    steps = read_table(out_dir / "steps.parquet")
    tasks = pd.read_parquet(out_dir / "tasks.parquet").set_index("task")
    baselines = {}
    for t, row in tasks.iterrows():
        for metric in mat["metric"].unique():
            pix = None if np.isnan(row.pixel_prevalence) else np.array([row.pixel_prevalence])
            if metric.startswith("pixel") and pix is None:
                continue
            baselines[(t, metric)] = chance_level(metric, np.array([row.image_prevalence]), pix, n_tasks=len(tasks))
    summary = build_summary(mat, steps, baselines, float(tasks["arch_mb"].iloc[0]))
    summary["maskless_pixels"] = sc["evaluation"].get("maskless_pixels", "skip")  # what pixel means run over
    atomic_write_table(pa.Table.from_pandas(summary, preserve_index=False), out_dir / "summary.parquet")
    stats = _write_statistics(sc, out_dir, summary, mat, tasks, quiet)
    if not quiet:
        _print_table(summary, sc, stats)


def _write_statistics(sc, out_dir: Path, summary: pd.DataFrame, mat: pd.DataFrame, tasks: pd.DataFrame, quiet):
    """statistics.parquet: the order-robustness study of everything in the folder (pclsim.statistics)."""
    import pyarrow as pa

    from .results import STATISTICS_SCHEMA, atomic_write_table
    from .statistics import statistics_table

    difficulty = None
    if "difficulty_image_auroc" in tasks.columns and tasks["difficulty_image_auroc"].notna().all():
        difficulty = {"values": tasks["difficulty_image_auroc"].astype(float).to_dict(),
                      "memory_size": max(sc["memory_sizes"]), "seeds": list(sc["seeds"])}
    _say(quiet, "order statistics ...")
    stats = statistics_table(summary, mat, difficulty=difficulty, progress=not quiet)
    atomic_write_table(pa.Table.from_pandas(stats, schema=STATISTICS_SCHEMA, preserve_index=False),
                       out_dir / "statistics.parquet")
    return stats


def _print_table(summary: pd.DataFrame, sc, stats: pd.DataFrame | None = None) -> None:
    from .statistics import order_sentence

    key = "image_f1" if "image_f1" in set(summary.metric) else summary.metric.iloc[0]
    s = summary[summary.metric == key]
    t = s.groupby(["strategy", "memory_size"]).agg(final_mean=("final_mean", "mean"),
                                                    std_over_runs=("final_mean", "std"),
                                                    forgetting_pct=("avg_forgetting_pct", "mean"),
                                                    bank_mb=("bank_mb", "mean"), runs=("run_id", "count"))
    print(f"\n{key}: mean over orders and seeds (std over runs: how much order and seed move the final mean; "
          f"rebalance: {sc['coreset']['rebalance']})", file=sys.stderr)
    print(t.round(3).to_string(), file=sys.stderr)
    if stats is not None and s["order"].nunique() > 1:
        print("\nDoes the order matter? (statistics.parquet)", file=sys.stderr)
        for strategy, m in t.index:
            print("  " + order_sentence(stats, strategy, int(m), key), file=sys.stderr)
