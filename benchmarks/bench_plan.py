"""Calibrate `pclsim plan` on this node, and check its predictions against measured sweeps.

The reduced paper scenario: scenarios/paper_table1.yaml with random weights (WRN50-2 layer2 + layer3 at
224 px: D = 1,536, P = 784; multi_model, joint, finetune, patchcore_cl; M = 10,000 and 30,000, each capped
at a task's training patches) on six BMAD-layout synthetic tasks (`pclsim data synth`), at a few
train-image counts. Each count runs `pclsim sweep --debug` in a fresh process from an empty feature cache; a
sampler reads the PSS of the sweep's whole process tree (Ray included) every 0.5 s, booked per stage by the
--debug marks, and each trial's compute time is read from its log line.

  --calibrate      fit the coefficients (pclsim/plan/calibration.py) and write the calibration file
                   (default pclsim/plan/calibration.json, the bundled one)
  --check          predict every stage with a calibration file and compare with the measured sweep: time and
                   peak memory within 35 % for every stage that takes more than 10 s
  --fit-from F     calibrate from the sweeps a saved run measured (its plan_sweep lines), without sweeping
  --check-from F   check the sweeps a saved run measured against the calibration, without sweeping (sweeps measured
                   one at a time, e.g. the largest first, checked together after the calibration)
  --paper          only the paper-size prediction (`pclsim plan scenarios/paper_table1.yaml` with the calibration)
  --readme-from F  README's plan block: the check's table (if the file has one) and the paper-size prediction

    python benchmarks/bench_plan.py --calibrate --sizes 4 4 8 12 30 --test 8 8 16 24 30 --orders 1 12 1 1 1
    PCLSIM_BENCH_OUT=benchmarks/plan_result.jsonl python benchmarks/bench_plan.py --check --sizes 20 40 60 --test 40
    python benchmarks/bench_plan.py --readme-from benchmarks/plan_result.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from _common import emit, json_lines, mark_times, measured_run, replace_readme_block

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pclsim, as the sweeps it starts (PYTHONPATH) run it
PAPER = ROOT / "scenarios" / "paper_table1.yaml"
# the sweep's --debug marks in order; the memory of the work that ENDS at a mark is booked under it
MARKS = ("ray started", "extractors ready", "features done", "selections done", "re-reductions done",
         "candidate tables done", "banks done", "trials done", "summary done", "finished")
# each stage of pclsim.plan: (the mark it starts after, the mark it ends at, the marks its memory is booked under)
SPANS = {"extraction": (None, "features done", ("ray started", "extractors ready", "features done")),
         "selections": ("features done", "selections done", ("selections done",)),
         "re-reductions": ("selections done", "re-reductions done", ("re-reductions done",)),
         "candidate tables": ("re-reductions done", "candidate tables done", ("candidate tables done",)),
         "trials": ("candidate tables done", "trials done", ("banks done", "trials done")),
         "summary": ("trials done", "summary done", ("summary done",))}
CHECK_SECONDS, CHECK_TOLERANCE = 10.0, 0.35

from pclsim.plan.work import JOB_LINE, TRIAL_LINE  # noqa: E402  (after the checkout is on the path)


def bench_scenario(n_train: int, n_test: int, data: Path, memory_sizes=None, orders: int = 1) -> dict:
    """The paper's scenario at n_train + n_test images a task on the synthetic data, random weights, its memory
    sizes capped at a task's training patches (n_train x 784); orders > 1: a seeded sample of that many orders
    instead of the paper's one (more runs share each trial's memo: its states and lookups vary apart)."""
    sc = yaml.safe_load(PAPER.read_text())
    sc["name"] = f"plan_bench_{n_train}_{n_test}_{orders}"
    sc["dataset"].update(root=str(data), max_train=int(n_train), max_test=int(n_test))
    if orders > 1:
        sc["orders"] = {"sample": int(orders), "seed": 0}
    sc["model"]["weights"] = "none"
    patches = int(n_train) * 784
    sc["memory_sizes"] = sorted({min(int(m), patches) for m in (memory_sizes or sc["memory_sizes"])})
    return sc


def _resolved(raw: dict):
    from pclsim.study.scenario import resolve

    return resolve(raw, f"<{raw['name']}>")


@functools.lru_cache(maxsize=None)
def _profile(backbone: str, layers: tuple | None, image_size: int) -> dict:
    from pclsim.runner.memory import backbone_profile

    return backbone_profile(backbone, list(layers) if layers else None, image_size)


def _sizes(sc: dict, tasks: dict):
    """pclsim.plan Sizes from the counts a sweep line recorded."""
    from pclsim.plan.work import Sizes, TaskSize

    m = sc["model"]
    profile = _profile(m["backbone"], tuple(m.get("layers") or ()) or None, int(sc["dataset"]["image_size"]))
    return Sizes({n: TaskSize(n, *v) for n, v in tasks.items()}, profile, int(sc["dataset"]["image_size"]),
                 2 if m.get("feature_dtype", "float16") == "float16" else 4, int(m.get("batch_size", 32)), True)


def _node(line: dict):
    from pclsim.plan.predict import Node

    return Node(int(line["node"]["cpus"]), int(line["node"].get("gpus", 0)), float(line["node"]["memory"]),
                float("inf"))


def run_sweep(n_train: int, n_test: int, orders: int, a, data: Path, tmp: Path) -> dict:
    """One measured sweep: stage seconds and peak PSS, each job's and trial's seconds, the counts and the node."""
    from pclsim.data import load_stream
    from pclsim.plan.command import this_node

    raw = bench_scenario(n_train, n_test, data, a.memory_sizes, orders)
    tag = raw["name"]
    path = tmp / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    sc = _resolved(raw)
    stream = load_stream(sc["dataset"], sc["dataset"]["root"])
    tasks = {t.name: [len(t.train), len(t.train) - t.n_calibration - t.n_validation, len(t.test),
                      t.n_calibration + t.n_validation, bool(t.has_masks)] for t in stream}
    node = this_node(cache_dir=tmp)
    env = dict(os.environ, PCLSIM_CACHE_DIR=str(tmp / f"cache-{tag}"), RAY_ADDRESS="", RAY_DEDUP_LOGS="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pclsim.cli", "sweep", str(path), "--out", str(tmp / f"out-{tag}"), "--quiet",
           "--debug", "--fresh"]
    load = round(os.getloadavg()[0], 2)
    rc, err, s, wall = measured_run(cmd, env, ROOT, MARKS)
    if rc != 0:
        raise SystemExit(f"sweep at {n_train} train images failed (exit code {rc}):\n{err[-3000:]}")
    marks = mark_times(err)
    missing = [m for m in MARKS[:-1] if m not in marks]
    if missing:
        raise SystemExit(f"sweep at {n_train} train images printed no {missing[0]!r} mark (a pclsim before the "
                         "staged bank preparation?)")
    stage_s, peak = {}, {}
    for st, (begin, end, booked) in SPANS.items():
        stage_s[st] = round(marks[end] - (marks[begin] if begin else 0.0), 2)
        peak[st] = max(s.by_stage.get(b, {}).get("pss", 0) for b in booked)
    # the memory Ray saw when the sweep started decides how many jobs ran at once: predict with that
    import json

    ray_memory = json.loads((tmp / f"out-{tag}" / "run_info.json").read_text())["cluster_resources"].get("memory")
    if ray_memory:
        from pclsim.plan.predict import RAY_MEMORY_SHARE

        node.memory = float(ray_memory) / RAY_MEMORY_SHARE
    jobs = {m.group(1): float(m.group(2)) for m in JOB_LINE.finditer(err)}
    jobs.update({m.group(1): round(float(m.group(2)) + float(m.group(3)), 2) for m in TRIAL_LINE.finditer(err)})
    return {"train": n_train, "test": n_test, "orders": orders, "scenario": raw, "tasks": tasks,
            "node": {"cpus": node.cpus, "gpus": node.gpus, "memory": node.memory}, "load_before": load,
            "stage_s": stage_s, "stage_peak_bytes": peak, "job_s": jobs, "peak_pss_bytes": s.peak_pss,
            "wall_s": round(wall, 1)}


def _work(line: dict) -> dict:
    """{stage: StageWork} of a measured sweep, as pclsim.plan counts it."""
    from pclsim.plan.work import study_work

    sc = _resolved(line["scenario"])
    return study_work(sc, _sizes(sc, line["tasks"]))


def _stage_inputs(line: dict, work: dict, families: dict) -> dict:
    """{stage: (makespan: job seconds or work units, bytes its concurrent jobs hold)} of a measured sweep, as
    pclsim.plan computes them with the job coefficients `families`."""
    from pclsim.plan.predict import job_seconds, lanes_for, makespan, stage_memory_bytes

    node = _node(line)
    sz = _sizes(_resolved(line["scenario"]), line["tasks"])
    out = {}
    for st, w in work.items():
        lanes, _ = lanes_for(w, node, sz.profile, sz.image_size, sz.batch_size)
        w = job_seconds(w, families)
        out[st] = (makespan(w.jobs, lanes, node.cpus), stage_memory_bytes(w.jobs, lanes))
    return out


def fit(lines: list[dict], command: str):
    """A Calibration fitted to measured sweeps (their plan_sweep lines): each job family's coefficients to the
    jobs' measured seconds (non-negative least squares), then each stage's intercept (and, for extraction and
    the summary, its seconds per unit) to the stage's measured seconds, and its memory line to its peak."""
    from pclsim.plan.calibration import Calibration, fit_line, fit_terms
    from pclsim.plan.work import FAMILIES, STAGES

    if len(lines) < 2:
        raise SystemExit("error: --calibrate needs at least two sweeps (--sizes with two or more counts)")
    works = [_work(line) for line in lines]
    families, quality = {}, {}
    for fam, names in FAMILIES.items():
        rows, ys = [], []
        for line, work in zip(lines, works):
            for w in work.values():
                rows += [j.terms for j in w.jobs if j.family == fam and j.name in line["job_s"]]
                ys += [line["job_s"][j.name] for j in w.jobs if j.family == fam and j.name in line["job_s"]]
        if not rows:
            raise SystemExit(f"error: no timing line of a {fam} job in the sweeps' output (they print with --debug, "
                             "RAY_DEDUP_LOGS=0)")
        families[fam] = dict(zip(names, fit_terms(rows, ys)))
        pred = [sum(c * v for c, v in zip(families[fam].values(), r)) for r in rows]
        quality[fam] = {"jobs": len(rows), "measured_s": [round(v, 2) for v in ys], "fitted_s": [round(v, 2) for v in pred]}
    inputs = [_stage_inputs(line, work, families) for line, work in zip(lines, works)]
    time, memory, residuals = {}, {}, {"families": quality}
    for st in STAGES:
        x = [i[st][0] for i in inputs]
        y = [line["stage_s"][st] for line in lines]
        # job-seconds stages: the schedule of the fitted job times, plus the stage's own overhead
        icpt, slope = fit_line(x, y) if st in ("extraction", "summary") else \
            fit_line(x, y, prior_slope=1.0, min_spread=float("inf"))
        time[st] = {"intercept_s": icpt, "per_unit_s": slope}
        mx = [i[st][1] for i in inputs]
        my = [line["stage_peak_bytes"][st] for line in lines]
        micpt, mslope = fit_line(mx, my, prior_slope=1.0, min_spread=0.5)
        memory[st] = {"intercept_bytes": micpt, "slope": mslope}
        residuals[st] = {"seconds": [[round(a, 1), round(icpt + slope * b, 1)] for a, b in zip(y, x)],
                         "peak_gb": [[round(a / 1e9, 2), round((micpt + mslope * b) / 1e9, 2)] for a, b in zip(my, mx)]}
    time["families"] = families
    first = lines[0]
    node = {"cpus": first["node"]["cpus"], "gpus": first["node"].get("gpus", 0),
            "memory_gb": round(first["node"]["memory"] / 1e9, 1), "cpu_model": _cpu_model()}
    measured = {"date": datetime.date.today().isoformat(), "command": command,
                "sizes": [line["train"] for line in lines], "test": [line["test"] for line in lines],
                "orders": [line.get("orders", 1) for line in lines],
                "load_before": [line["load_before"] for line in lines], "fit": residuals}
    device = "gpu" if node["gpus"] else "cpu"
    return Calibration({device: time}, memory, node, measured)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def check(lines: list[dict], cal) -> list[dict]:
    """Predicted vs measured per sweep and stage: rows with the ratios and whether each checked stage passes."""
    from pclsim.plan.predict import make_plan

    out = []
    for line in lines:
        sc = _resolved(line["scenario"])
        plan = make_plan(sc, _sizes(sc, line["tasks"]), cal, _node(line))
        for sp in plan.stages:
            secs, peak = line["stage_s"][sp.name], line["stage_peak_bytes"][sp.name]
            checked = secs > CHECK_SECONDS
            rt = sp.seconds / secs if sp.seconds is not None and secs else None
            rm = sp.peak / peak if peak else None
            ok = (None if not checked else rt is not None and rm is not None
                  and abs(rt - 1) <= CHECK_TOLERANCE and abs(rm - 1) <= CHECK_TOLERANCE)
            out.append({"train": line["train"], "test": line["test"], "stage": sp.name, "measured_s": secs,
                        "predicted_s": None if sp.seconds is None else round(sp.seconds, 1),
                        "time_ratio": None if rt is None else round(rt, 3), "measured_peak_gb": round(peak / 1e9, 2),
                        "predicted_peak_gb": round(sp.peak / 1e9, 2), "memory_ratio": None if rm is None else round(rm, 3),
                        "checked": checked, "ok": ok})
    return out


def paper_prediction(cal_path: str) -> dict:
    """`pclsim plan scenarios/paper_table1.yaml` on this node with the calibration (the caps' 2,000 + 2,000 images
    a task: the data are not read), as text and JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    base = [sys.executable, "-m", "pclsim.cli", "plan", str(PAPER), "--calibration", cal_path]
    text = subprocess.run(base, capture_output=True, text=True, env=env, cwd=ROOT)
    if text.returncode not in (0, 2) or not text.stdout:
        raise SystemExit(f"pclsim plan failed:\n{text.stderr[-2000:]}")
    import json

    js = subprocess.run(base + ["--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    return {"text": text.stdout.rstrip(), "plan": json.loads(js.stdout), "exit_code": text.returncode}


def readme_text(lines: list[dict]) -> str:
    """README's plan block from saved lines: the last check's table (where there is one) and the last paper-size
    prediction."""
    summary = next((x for x in reversed(lines) if x["benchmark"] == "plan_check"), None)
    paper = next((x for x in reversed(lines) if x["benchmark"] == "plan_paper"), None)
    if paper is None:
        raise SystemExit("error: the file holds no plan_paper line (run --check or --paper with PCLSIM_BENCH_OUT)")
    out = []
    if summary is None:
        out += ["The check has not been run with these coefficients yet: `PCLSIM_BENCH_OUT=benchmarks/plan_result.jsonl "
                "python benchmarks/bench_plan.py --check --sizes 20 40 60 --test 40`, then `--readme-from` writes "
                "its table here.", ""]
    else:
        rows = [x for x in lines if x["benchmark"] == "plan_check_row" and x["train"] in summary["sizes"]]
        rows = rows[-len(summary["sizes"]) * 6:]
        out += [f"Measured by `benchmarks/bench_plan.py --check` (train images a task {', '.join(map(str, summary['sizes']))}; "
                f"test {summary['test']}) on {summary['cpus']} cores (load at most {summary['load_before']} as a sweep "
                "started), checked with the "
                f"calibration of {summary['calibration_date']} (train images {summary['calibration_sizes']}): the "
                "reduced paper scenario (six synthetic BMAD-layout tasks, WRN50-2 random weights, 224 px, the four "
                "strategies, M = 10,000 and 30,000 capped at a task's patches), each stage predicted by `pclsim plan` "
                "and measured (peak: PSS of the whole process tree). A stage is checked when it takes more than 10 s; "
                "it passes when its time and its peak memory are both within 35 %.", "",
                "| train images a task | stage | measured | predicted | ratio | peak measured | predicted | ratio | check |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ok = "pass" if r["ok"] else "FAIL" if r["checked"] else "(< 10 s)"
            pred = "n/c" if r["predicted_s"] is None else f"{r['predicted_s']:.0f} s"
            rt = "" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"
            out.append(f"| {r['train']} | {r['stage']} | {r['measured_s']:.0f} s | {pred} | {rt} | "
                       f"{r['measured_peak_gb']:.2f} GB | {r['predicted_peak_gb']:.2f} GB | {r['memory_ratio']:.2f} | "
                       f"{ok} |")
        out += ["", f"{summary['passed']} of {summary['checked']} checked stages within 35 % "
                f"({'all pass' if summary['ok'] else 'NOT all'}).", ""]
    cal = paper["plan"]["calibration"]
    out += [f"The paper's size (`pclsim plan scenarios/paper_table1.yaml`: 2,000 + 2,000 images a task, M = 10,000 "
            f"and 30,000) on this node with the calibration of {cal.get('date')} (train images {cal.get('sizes')}, "
            f"test {cal.get('test')}), exit code {paper['exit_code']}:", "", "```", paper["text"], "```"]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--calibrate", action="store_true")
    what.add_argument("--check", action="store_true")
    what.add_argument("--fit-from", metavar="JSONL")
    what.add_argument("--readme-from", metavar="JSONL")
    what.add_argument("--check-from", metavar="JSONL", help="check the sweeps a saved run measured (plan_sweep lines) "
                      "against the calibration, without sweeping")
    what.add_argument("--paper", action="store_true", help="only the paper-size prediction with the calibration")
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="train images a task, a sweep each (default: 4 4 8 12 30 to calibrate, 20 40 60 to check)")
    ap.add_argument("--test", type=int, nargs="+", default=None,
                    help="test images a task: one count for every size, or one per size (default: 8 8 16 24 30 "
                         "to calibrate, 40 to check)")
    ap.add_argument("--orders", type=int, nargs="+", default=None,
                    help="orders a sweep runs (1: the paper's; N: a seeded sample of N): one count, or one per size "
                         "(default: 1 12 1 1 1 to calibrate, 1 to check)")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=None, help="default: the paper's 10000 30000")
    ap.add_argument("--calibration", default=None, help="the file --calibrate writes / --check reads "
                    "(default: pclsim/plan/calibration.json)")
    ap.add_argument("--data", default=None, help="a `pclsim data synth` folder with enough images (default: "
                    "written in a temporary folder)")
    a = ap.parse_args()
    from pclsim.plan.calibration import BUNDLED, load_calibration

    cal_path = a.calibration or str(BUNDLED)
    if a.readme_from:
        replace_readme_block(ROOT / "README.md", "plan", readme_text(json_lines(a.readme_from)))
        return
    if a.paper:
        load_calibration(cal_path)  # a bad file: its error here, not pclsim plan's
        emit("plan_paper", paper_prediction(cal_path))
        return
    if a.check_from:  # sweeps measured before (their plan_sweep lines), against this calibration
        lines = [x for x in json_lines(a.check_from) if x["benchmark"] == "plan_sweep"]
        if a.sizes:
            lines = [x for x in lines if x["train"] in a.sizes]
        if not lines:
            raise SystemExit(f"error: {a.check_from}: no plan_sweep line" + (f" at --sizes {a.sizes}" if a.sizes else ""))
        report_check(lines, load_calibration(cal_path), cal_path, a)
        return
    if a.fit_from:
        lines = [x for x in json_lines(a.fit_from) if x["benchmark"] == "plan_sweep"]
        if a.sizes:
            lines = [x for x in lines if x["train"] in a.sizes]
        path = fit(lines, " ".join(sys.argv)).save(cal_path)
        print(f"wrote {path}", file=sys.stderr)
        return
    if a.calibrate and not a.sizes:  # test counts that vary unlike the train counts, and a sweep of many orders
        a.sizes, a.test, a.orders = [4, 4, 8, 12, 30], a.test or [8, 8, 16, 24, 30], a.orders or [1, 12, 1, 1, 1]
    a.sizes = a.sizes or [20, 40, 60]
    a.test, a.orders = a.test or [40], a.orders or [1]
    for flag, v in (("--test", a.test), ("--orders", a.orders)):
        if len(v) not in (1, len(a.sizes)):
            raise SystemExit(f"error: {flag}: one count, or one per --sizes count")
    per = lambda v: v * len(a.sizes) if len(v) == 1 else v  # noqa: E731
    pairs = list(zip(a.sizes, per(a.test), per(a.orders)))
    cal = None if a.calibrate else load_calibration(cal_path)
    lines = []
    with tempfile.TemporaryDirectory(prefix="pclsim-plan-") as d:
        tmp = Path(d)
        data = Path(a.data) if a.data else tmp / "data"
        if not a.data:
            subprocess.run([sys.executable, "-m", "pclsim.cli", "data", "synth", str(data), "--train",
                            str(max(a.sizes)), "--test", str(max(a.test))], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        for n, m, o in pairs:
            lines.append(run_sweep(n, m, o, a, data, tmp))
            emit("plan_sweep", lines[-1])
    if a.calibrate:
        path = fit(lines, " ".join(sys.argv)).save(cal_path)
        print(f"wrote {path}", file=sys.stderr)
        return
    report_check(lines, cal, cal_path, a)


def report_check(lines: list[dict], cal, cal_path: str, a) -> None:
    """Emit the check's rows, its summary and the paper-size prediction; print the table on stderr."""
    rows = check(lines, cal)
    for r in rows:
        emit("plan_check_row", r)
    checked = [r for r in rows if r["checked"]]
    sizes, test = [x["train"] for x in lines], [x["test"] for x in lines]
    emit("plan_check", {"sizes": sizes, "test": test[0] if len(set(test)) == 1 else test, "cpus": lines[0]["node"]["cpus"],
                        "load_before": max(x["load_before"] for x in lines), "calibration": cal_path,
                        "calibration_date": cal.measured.get("date"), "calibration_sizes": cal.measured.get("sizes"),
                        "checked": len(checked), "passed": sum(bool(r["ok"]) for r in checked),
                        "ok": all(r["ok"] for r in checked)})
    emit("plan_paper", paper_prediction(cal_path))
    print(f"{'train':>5} {'stage':<17} {'measured':>9} {'predicted':>9} {'ratio':>6} {'peak':>7} {'pred':>7} "
          f"{'ratio':>6}  check", file=sys.stderr)
    for r in rows:
        print(f"{r['train']:>5} {r['stage']:<17} {r['measured_s']:>8.1f}s {r['predicted_s'] or 0:>8.1f}s "
              f"{r['time_ratio'] or 0:>6.2f} {r['measured_peak_gb']:>6.2f}G {r['predicted_peak_gb']:>6.2f}G "
              f"{r['memory_ratio'] or 0:>6.2f}  {'pass' if r['ok'] else 'FAIL' if r['checked'] else '-'}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
