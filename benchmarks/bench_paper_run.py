"""The reduced paper run: scenarios/paper_table1.yaml end to end through Ray, its stages' time and memory.

The paper's dimensions unchanged (WRN50-2 layer2 + layer3 at 224 px: D = 1,536, P = 784; six BMAD-layout
tasks; multi_model, joint, finetune, patchcore_cl; M = 10,000 and 30,000; the authors' rebalance), random
weights (`model.weights: none`), at reduced image counts: `pclsim data synth DIR --train 60 --test 40`
(47,040 training patches a task, so M = 30,000 is legal). One `pclsim sweep --debug` from an empty feature
cache in a fresh process; the PSS of its whole process tree (Ray included) is sampled every 0.5 s and
booked per stage by the sweep's --debug marks (benchmarks/_common.measured_run). Targets (issue 20): at
most 30 minutes and at most 6 GB above idle on the 2-core development machine.

    python benchmarks/bench_paper_run.py [--train 60 --test 40] [--data DIR]
    PCLSIM_BENCH_OUT=benchmarks/paper_run.jsonl python benchmarks/bench_paper_run.py
    python benchmarks/bench_paper_run.py --from-log sweep.log      # a sweep --debug log already run (times only)
    python benchmarks/bench_paper_run.py --from-plan plan.jsonl    # the 60 + 40 sweep bench_plan.py --check measured
    python benchmarks/bench_paper_run.py --readme-from benchmarks/paper_run.jsonl
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from _common import emit, json_lines, mark_times, measured_run, replace_readme_block

ROOT = Path(__file__).resolve().parents[1]
MARKS = ("ray started", "extractors ready", "features done", "selections done", "re-reductions done",
         "candidate tables done", "banks done", "trials done", "summary done", "finished")
# stage: (the mark it starts after, the mark it ends at)
SPANS = {"extraction": (None, "features done"), "selections": ("features done", "selections done"),
         "re-reductions": ("selections done", "re-reductions done"),
         "candidate tables": ("re-reductions done", "candidate tables done"),
         "trials": ("candidate tables done", "trials done"), "summary": ("trials done", "summary done")}
# the marks a stage's memory is booked under (the sampler books the work that ENDS at a mark under it)
BOOKED = {"extraction": ("ray started", "extractors ready", "features done"), "selections": ("selections done",),
          "re-reductions": ("re-reductions done",), "candidate tables": ("candidate tables done",),
          "trials": ("banks done", "trials done"), "summary": ("summary done",)}


def stage_seconds(marks: dict) -> dict:
    out = {}
    for st, (a, b) in SPANS.items():
        if b in marks:
            out[st] = round(marks[b] - (marks.get(a, 0.0) if a else 0.0), 1)
    return out


def scenario(data: Path) -> dict:
    sc = yaml.safe_load((ROOT / "scenarios" / "paper_table1.yaml").read_text())
    sc["name"] = "paper_table1_reduced"
    sc["dataset"]["root"] = str(data)
    sc["model"]["weights"] = "none"
    return sc


def idle_used_gb() -> float:
    """Memory in use on the machine before the run (MemTotal - MemAvailable), GB."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            info[k] = int(v.split()[0]) * 1024
    return round((info["MemTotal"] - info["MemAvailable"]) / 1e9, 2)


def run(a) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = Path(a.data) if a.data else tmp / "bmad"
        if not a.data:
            subprocess.run([sys.executable, "-m", "pclsim.cli", "data", "synth", str(data), "--train", str(a.train),
                            "--test", str(a.test)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        path = tmp / "paper_reduced.yaml"
        path.write_text(yaml.safe_dump(scenario(data), sort_keys=False))
        env = dict(os.environ, PCLSIM_CACHE_DIR=str(tmp / "cache"), RAY_ADDRESS="local",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        idle = idle_used_gb()
        load = round(os.getloadavg()[0], 2)
        cmd = [sys.executable, "-m", "pclsim.cli", "sweep", str(path), "--out", str(tmp / "out"), "--quiet", "--debug"]
        rc, err, s, wall = measured_run(cmd, env, ROOT, MARKS)
        if rc != 0:
            raise SystemExit(f"error: the reduced paper sweep failed:\n{err[-3000:]}")
        peak = {st: round(max((s.by_stage.get(m, {}).get("pss", 0) for m in ms), default=0) / 1e9, 2)
                for st, ms in BOOKED.items()}
        return {"train": a.train, "test": a.test, "wall_s": round(wall, 1), "stage_s": stage_seconds(mark_times(err)),
                "stage_peak_pss_gb": peak, "peak_pss_gb": round(s.peak_pss / 1e9, 2), "idle_used_gb": idle,
                "load_before": load, "cpus": os.cpu_count(), "memory_sampled": True}


def from_log(path: str, a) -> dict:
    """A sweep --debug log (with /usr/bin/time -v's lines where present): its stages' times; memory was not
    sampled (the driver's max RSS only, from time -v)."""
    text = Path(path).read_text(errors="replace").replace("\r", "\n")
    marks = mark_times(text)
    out = {"train": a.train, "test": a.test, "wall_s": round(marks.get("summary done", 0.0), 1),
           "stage_s": stage_seconds(marks), "cpus": os.cpu_count(), "memory_sampled": False, "log": path}
    for line in text.splitlines():
        if "Maximum resident set size" in line:
            out["driver_max_rss_gb"] = round(int(line.rsplit(":", 1)[1]) * 1024 / 1e9, 2)
    return out


def from_plan(path: str, a) -> dict:
    """The sweep `benchmarks/bench_plan.py --check` measured at a.train + a.test images (its plan_sweep line: the
    same scenario, from an empty feature cache, with the same process-tree sampler and stage marks)."""
    lines = [x for x in json_lines(path) if x.get("benchmark") == "plan_sweep" and x["train"] == a.train
             and x["test"] == a.test and x.get("orders", 1) == 1]
    if not lines:
        raise SystemExit(f"error: {path}: no plan_sweep line at {a.train} train + {a.test} test images")
    x = lines[-1]
    return {"train": a.train, "test": a.test, "wall_s": x["wall_s"], "stage_s": x["stage_s"],
            "stage_peak_pss_gb": {k: round(v / 1e9, 2) for k, v in x["stage_peak_bytes"].items()},
            "peak_pss_gb": round(x["peak_pss_bytes"] / 1e9, 2), "load_before": x["load_before"],
            "cpus": x["node"]["cpus"], "memory_sampled": True, "from": path}


def readme_text(x: dict) -> str:
    rows = ["| stage | time (s) | peak PSS of the process tree (GB) |", "|---|---|---|"]
    for st in SPANS:
        mem = x.get("stage_peak_pss_gb", {}).get(st)
        rows.append(f"| {st} | {x['stage_s'].get(st, float('nan')):.0f} | "
                    f"{'not sampled' if mem is None else f'{mem:.2f}'} |")
    total = x["wall_s"]
    head = (f"The reduced paper run (`benchmarks/bench_paper_run.py`: scenarios/paper_table1.yaml with random "
            f"weights on `pclsim data synth --train {x['train']} --test {x['test']}`, WRN50-2 at 224 px, D = 1,536, "
            f"P = 784, M = 10,000 and 30,000, four strategies, authors' rebalance; {x['cpus']} cores, no GPU, "
            f"empty feature cache): **{total / 60:.1f} minutes** end to end (target 30).")
    if x.get("memory_sampled"):
        idle = f"{x['idle_used_gb']:.2f} GB were in use before; " if "idle_used_gb" in x else ""
        via = (f" Measured by `benchmarks/bench_plan.py --check` (its sweep at {x['train']} + {x['test']} images, "
               "read with `--from-plan`)." if x.get("from") else "")
        head += (f" Peak PSS of the whole process tree {x['peak_pss_gb']:.2f} GB (target: 6 GB above idle; the "
                 f"tree holds nothing at idle; {idle}load {x['load_before']} when it started).{via}")
    else:
        head += (" Times from the sweep's --debug marks (`--from-log`); the process tree's memory was not sampled "
                 f"in that run (the driver's own peak: {x.get('driver_max_rss_gb', float('nan')):.2f} GB); the "
                 "run shared the machine with a calibration sweep, so the times are upper bounds.")
    return head + "\n\n" + "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--data", help="a `pclsim data synth` folder (default: written into a temporary folder)")
    ap.add_argument("--from-log", metavar="LOG", help="read the stage times of a sweep --debug log instead")
    ap.add_argument("--from-plan", metavar="JSONL", help="read the sweep bench_plan.py --check measured at these "
                    "counts (its plan_sweep line) instead")
    ap.add_argument("--readme-from", metavar="JSONL", help="write README's paper-run block from a saved line")
    a = ap.parse_args()
    if a.readme_from:
        lines = [x for x in json_lines(a.readme_from) if x.get("benchmark") == "paper_run"]
        if not lines:
            raise SystemExit(f"error: {a.readme_from}: no 'paper_run' line")
        replace_readme_block(ROOT / "README.md", "paper-run", readme_text(lines[-1]))
        return
    line = from_log(a.from_log, a) if a.from_log else from_plan(a.from_plan, a) if a.from_plan else run(a)
    emit("paper_run", line)
    print(readme_text(line), file=sys.stderr)


if __name__ == "__main__":
    main()
