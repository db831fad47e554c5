"""The sweep's last stage: the summary, the order statistics and the printed table of everything in the folder."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..results.tables import remove_table
from .control import say as _say

__all__ = ["finish", "check_complete"]


def finish(sc, out_dir: Path, stream, quiet, cache_root):
    """summary.parquet, statistics.parquet and the printed table of everything in the folder (rebuilt on
    every run, so a resume completes it). A failure of any of them is one FinishError naming what could
    not be computed and its cause; the trial tables are left as they are, and rerunning the same command
    recomputes only this stage (every trial is found done)."""
    for name in ("summary.parquet", "statistics.parquet"):  # never a summary of another set of runs
        remove_table(out_dir / name)
    with _finishing(out_dir, "summary.parquet", "the summary"):
        summary, tasks, mat = _write_summary(sc, out_dir)
    with _finishing(out_dir, "statistics.parquet", "the order statistics"):
        stats = _write_statistics(sc, out_dir, summary, mat, tasks, quiet)
    if not quiet:
        with _finishing(out_dir, "the printed table", "the printed table"):
            _print_table(summary, sc, stats)


@contextlib.contextmanager
def _finishing(out_dir: Path, what: str, label: str):
    from ..errors import FinishError, PclsimError

    try:
        yield
    except (PclsimError, KeyboardInterrupt):
        raise
    except OSError as e:
        raise PclsimError(f"{e.filename or out_dir}: cannot write {what}: {e.strerror or e}") from e
    except Exception as e:
        cause = " ".join(str(e).split()) or "no message"
        raise FinishError(f"{what}: could not compute {label} ({type(e).__name__}: {cause[:300]}); the trial "
                          f"results in {out_dir} are kept: rerun the same command to redo only this stage") from e


def _write_summary(sc, out_dir: Path):
    from ..analysis.summary import build_summary, chance_level
    from ..results.tables import read_table, write_table

    mat = read_table(out_dir / "matrices.parquet")
    steps = read_table(out_dir / "steps.parquet")
    tasks = read_table(out_dir / "tasks.parquet").set_index("task")
    baselines = {}
    for t, row in tasks.iterrows():
        for metric in mat["metric"].unique():
            pix = None if np.isnan(row.pixel_prevalence) else np.array([row.pixel_prevalence])
            if metric.startswith("pixel") and pix is None:
                continue
            baselines[(t, metric)] = chance_level(metric, np.array([row.image_prevalence]), pix, n_tasks=len(tasks))
    summary = build_summary(mat, steps, baselines, float(tasks["arch_mb"].iloc[0]))
    summary["maskless_pixels"] = sc["evaluation"].get("maskless_pixels", "skip")  # what pixel means run over
    write_table(summary, out_dir, "summary")
    return summary, tasks, mat


def _write_statistics(sc, out_dir: Path, summary: pd.DataFrame, mat: pd.DataFrame, tasks: pd.DataFrame, quiet):
    """statistics.parquet: the order-robustness study of everything in the folder (pclsim.analysis.statistics)."""
    from ..analysis.statistics import statistics_table
    from ..results.tables import write_table

    difficulty = None
    if "difficulty_image_auroc" in tasks.columns and tasks["difficulty_image_auroc"].notna().all():
        difficulty = {"values": tasks["difficulty_image_auroc"].astype(float).to_dict(),
                      "memory_size": max(sc["memory_sizes"]), "seeds": list(sc["seeds"])}
    _say(quiet, "order statistics ...")
    stats = statistics_table(summary, mat, difficulty=difficulty, progress=not quiet)
    write_table(stats, out_dir, "statistics")
    return stats


def _print_table(summary: pd.DataFrame, sc, stats: pd.DataFrame | None = None) -> None:
    from ..analysis.statistics import order_sentence

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


def check_complete(out_dir: Path, n_runs: int) -> None:
    """The folder against the results contract before a sweep says done: every table the sweep writes is
    there, matrices.parquet holds `n_runs` runs, each with its full T x T image_auroc matrix and T steps,
    and summary.parquet one row set per run. FinishError naming what is missing otherwise."""
    from ..errors import FinishError
    from ..results.schema import ORDER_SEPARATOR
    from ..results.tables import read_table

    missing = [n for n in ("matrices", "steps", "summary", "statistics", "tasks")
               if not list((out_dir / f"{n}.parquet").glob("*.parquet"))]
    missing = [f"{n}.parquet" for n in missing] + (["protocol.json"] if not (out_dir / "protocol.json").is_file() else [])
    if missing:
        raise FinishError(f"{out_dir}: incomplete results, no {', '.join(missing)}; rerun "
                          "the same command to complete the folder")
    mat = read_table(out_dir / "matrices.parquet", columns=["run_id", "order", "metric", "step", "eval_task"])
    img = mat[mat["metric"] == "image_auroc"]
    cells = img.groupby("run_id")[["step", "eval_task"]].apply(lambda g: len(set(zip(g.step, g.eval_task))))
    size = img.drop_duplicates("run_id").set_index("run_id")["order"].map(lambda o: len(o.split(ORDER_SEPARATOR)))
    short = cells[cells != size.reindex(cells.index) ** 2]
    steps = read_table(out_dir / "steps.parquet", columns=["run_id", "step"]).groupby("run_id")["step"].nunique()
    summary_runs = set(read_table(out_dir / "summary.parquet", columns=["run_id"])["run_id"])
    problems = []
    if mat["run_id"].nunique() != n_runs:
        problems.append(f"matrices.parquet holds {mat['run_id'].nunique()} runs, the scenario has {n_runs}")
    if len(short):
        problems.append(f"run {short.index[0]} has {short.iloc[0]} of its {size[short.index[0]] ** 2} image_auroc cells")
    lacking = sorted(set(size.index) - set(steps[steps == size.reindex(steps.index)].index))
    if lacking:
        problems.append(f"steps.parquet lacks steps of run {lacking[0]}")
    if summary_runs != set(mat["run_id"]):
        problems.append(f"summary.parquet covers {len(summary_runs)} of {mat['run_id'].nunique()} runs")
    if problems:
        raise FinishError(f"{out_dir}: incomplete results: {'; '.join(problems)}; rerun the same command")
