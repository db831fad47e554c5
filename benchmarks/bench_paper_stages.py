"""A scenario's whole study in ONE process, without Ray, stage by stage: where the time and memory go.

The stages are a sweep's (pclsim.runner.cluster): extraction into the feature store, the selections, the
re-reductions and joint selections (the bank manager's work), the candidate tables, the runs (the Tune
trials' work: every metric on every task after every step). Each is timed (wall seconds) with the peak
resident memory of this process during it (sampled every 0.2 s; in one process this is the whole study,
no Ray) and, with --profile, the functions that took the most time (cProfile, cumulative).

Made for two uses:
- the GPU check (benchmarks/gpu_check.sh): the reduced paper_table1 study on `--device cuda`, where Ray is
  not installed;
- the before/after profile of issue 20: it calls only study functions that 0.3.2 already had, so
  `PYTHONPATH=<an older checkout> python benchmarks/bench_paper_stages.py ...` profiles that version the same way.

    python benchmarks/bench_paper_stages.py scenarios/paper_table1.yaml --synth 60 40 --weights none   # or --data-root DIR
    python benchmarks/bench_paper_stages.py scenarios/paper_table1.yaml --data-root /tmp/bmad60 --weights none \\
        [--memory-sizes 10000 30000] [--device cpu|cuda] [--threads 2] [--profile 25] [--cache DIR]

Prints one JSON line (benchmark "paper_stages") with the stages' seconds and peak GB, a table, and what
`pclsim plan` predicts for the same scenario and data on this node (its table, for the sweep's stages).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import emit

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS(threading.Thread):
    """Peak resident set (bytes) of this process, sampled every 0.2 s, per stage (`stage`)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stage, self.peak, self.stop = "start", {}, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run(self):
        while not self.stop.is_set():
            r = self.rss()
            self.peak[self.stage] = max(self.peak.get(self.stage, 0), r)
            self.stop.wait(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--data-root")
    ap.add_argument("--synth", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                    help="write `pclsim data synth --train TRAIN --test TEST` into a temporary folder and use it")
    ap.add_argument("--weights", help="model.weights for this run (e.g. none: random weights, no checkpoint)")
    ap.add_argument("--memory-sizes", type=int, nargs="+")
    ap.add_argument("--strategies", nargs="+")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cache", help="feature store folder (default: a new empty one: extraction is measured)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions per stage")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from pclsim.core.features import FeatureExtractor
    from pclsim.data import load_stream
    from pclsim.store.cache import load_or_extract
    from pclsim.study.engine import (candidate_rows, evaluator_options, plan_study, restore_evaluator, run_banks,
                                     run_group, run_selection, run_table)
    from pclsim.study.maskless import apply_maskless_policy
    from pclsim.study.scenario import expand_runs, load_scenario

    synth_dir = tempfile.TemporaryDirectory() if a.synth and not a.data_root else None
    if synth_dir is not None:
        import subprocess

        a.data_root = str(Path(synth_dir.name) / "bmad")
        subprocess.run([sys.executable, "-m", "pclsim.cli", "data", "synth", a.data_root, "--train", str(a.synth[0]),
                        "--test", str(a.synth[1])], check=True, stdout=subprocess.DEVNULL)
    sc = load_scenario(a.scenario, data_root=a.data_root)
    if a.weights:
        sc["model"]["weights"] = a.weights
    if a.memory_sizes:
        sc["memory_sizes"] = list(a.memory_sizes)
    if a.strategies:
        sc["strategies"] = list(a.strategies)
    stream = load_stream(sc["dataset"], sc["dataset"]["root"])
    runs = expand_runs(sc)
    co = sc["coreset"]
    dev = None if a.device == "auto" else a.device
    sampler = PeakRSS()
    sampler.start()
    seconds, profiles, stats = {}, {}, {}

    def stage(name, fn):
        sampler.stage = name
        prof = cProfile.Profile() if a.profile else None
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        if prof:
            prof.enable()
        out = fn()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        if prof:
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(a.profile)
            profiles[name] = s.getvalue()
        seconds[name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {seconds[name]:.1f} s, peak {sampler.peak.get(name, 0) / 1e9:.2f} GB", file=sys.stderr,
              flush=True)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(a.cache or tmp)
        m = sc["model"]

        def extract():
            fx = FeatureExtractor(m["backbone"], m["weights"], m["layers"], image_size=sc["dataset"]["image_size"],
                                  device=dev)
            return {t.name: load_or_extract(t, fx, cache_root=cache) for t in stream}

        tasks = stage("extraction", extract)
        n_images = sum(len(t.train) + len(t.test) for t in stream)
        tasks = apply_maskless_policy(tasks, sc["evaluation"].get("maskless_pixels", "skip"),
                                      sc["dataset"].get("seed", 0))
        results = []
        for seed, sp in plan_study(runs, co).seeds.items():
            orders = stage("selections", lambda: {k: run_selection(tasks, sp.needs, co, seed, k, dev)
                                                  for k in sp.selections})

            def banks():
                out = {}
                for refs in sp.bank_jobs:
                    out.update(run_banks(tasks, sp.needs, co, seed, orders, refs, dev))
                return out

            bank_parts = stage("re-reductions", banks)
            tables = stage("candidate tables", lambda: {
                s: run_table(tasks, sp.needs, co, seed, s, candidate_rows(sp.needs, orders, s), device=dev)
                for s in sp.sources})

            def trials():
                ev = restore_evaluator(tasks, sp, co, orders, bank_parts, tables, device=dev,
                                       **evaluator_options(sc))
                out = run_group([r for r in runs if r.seed == seed], ev, co)
                for k, v in ev.stats.items():
                    stats[k] = stats.get(k, 0) + int(v)
                return out

            results += stage("trials", trials)
    sampler.stop.set()
    line = {"scenario": sc["name"], "device": a.device, "threads": a.threads, "images": n_images,
            "runs": len(results), "memory_sizes": sc["memory_sizes"], "seconds": seconds,
            "total_s": round(sum(seconds.values()), 1),
            "peak_gb": {k: round(v / 1e9, 2) for k, v in sampler.peak.items() if k != "start"},
            "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
            "extraction_images_per_s": round(n_images / seconds["extraction"], 1),
            "evaluator": stats}  # nearest-neighbour queries and those answered by the exact fallback
    try:
        from pclsim import __version__
        line["pclsim"] = __version__
    except ImportError:
        pass
    emit("paper_stages", line)
    print(f"\n{'stage':<18}{'time (s)':>10}{'peak (GB)':>11}", file=sys.stderr)
    for k, v in seconds.items():
        print(f"{k:<18}{v:>10.1f}{line['peak_gb'].get(k, 0):>11.2f}", file=sys.stderr)
    for k, text in profiles.items():
        print(f"\n== {k}\n{text}", file=sys.stderr)
    try:  # what `pclsim plan` predicts for the same scenario and data on this node (Ray's stages, not these)
        import yaml

        from pclsim.plan.command import plan_scenario
        from pclsim.plan.render import plan_text

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "scenario.yaml"
            raw = yaml.safe_load(Path(a.scenario).read_text())
            raw.setdefault("model", {})["weights"] = sc["model"]["weights"]
            raw["memory_sizes"] = sc["memory_sizes"]
            raw["strategies"] = sc["strategies"]
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            print("\n" + plan_text(plan_scenario(path, data_root=a.data_root)), file=sys.stderr)
    except Exception as e:  # the plan is a comparison, not the benchmark
        print(f"\n(pclsim plan for this scenario: {type(e).__name__}: {e})", file=sys.stderr)
    if synth_dir is not None:
        synth_dir.cleanup()


if __name__ == "__main__":
    main()
