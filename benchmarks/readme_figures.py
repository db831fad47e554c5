"""The README's figures, produced from a real run so they cannot drift from what the code computes.

    python benchmarks/readme_figures.py                         # run scenarios/readme.yaml, then write
    python benchmarks/readme_figures.py --results results/orders  # an existing results folder (e.g. the headline)

Writes benchmarks/readme_figures.md (a Markdown table plus a line naming the scenario, the
backbone and weights, the resize mode, the reweighting, the rebalancing and the mask-less pixel
policy it used) and copies it verbatim into README.md between the markers
`<!-- readme-figures:begin -->` and `<!-- readme-figures:end -->`.
Cells: mean over runs (orders x seeds) of each run's final mean (method.md section 6); forgetting
is the average forgetting in percent of image F1; pixel AUROC is over the tasks with masks unless
the scenario says `maskless_pixels: paper`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _common, also when this file is loaded by path (tests)

import pclsim  # noqa: E402
from _common import replace_readme_block  # noqa: E402

MARKER = "readme-figures"
BEGIN, END = f"<!-- {MARKER}:begin -->", f"<!-- {MARKER}:end -->"

_NAMES = {"multi_model": "multi_model", "patchcore_cl": "patchcore_cl", "joint": "joint", "finetune": "finetune"}
_ORDER = ["multi_model", "patchcore_cl", "joint", "finetune"]


def _cell(v: np.ndarray, digits: int = 3) -> str:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "-"
    if v.size == 1 or np.allclose(v, v[0]):
        return f"{v.mean():.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def figures_markdown(res, seconds: float | None = None) -> str:
    """The README's table of a results folder (pclsim.api.Results) and the line saying how it was made."""
    sc = res.scenario
    s = res.summary
    if s is None:
        raise SystemExit(f"{res.folder}: no summary.parquet (the sweep did not finish)")
    ds, model, ev, cs = sc.get("dataset", {}), sc.get("model", {}), sc.get("evaluation", {}), sc.get("coreset", {})
    runs = s.groupby(["strategy", "memory_size"])["run_id"].nunique()
    n_orders = s["order"].nunique()
    lines = [
        f"Scenario `{sc.get('name')}` (hash {sc.get('scenario_hash', '?')}, pclsim {sc.get('pclsim_version', '?')}): "
        f"{ds.get('kind')} data, {len(ds.get('tasks') or [])} tasks, {n_orders} orders, seeds {sc.get('seeds')}; "
        f"backbone {model.get('backbone')} (weights {model.get('weights')}), image size {ds.get('image_size')}, "
        f"**resize `{ds.get('resize', 'crop')}`**, **reweighting `{model.get('reweighting')}`**, "
        f"rebalance `{cs.get('rebalance')}`, mask-less pixels `{ev.get('maskless_pixels', 'skip')}`"
        f"{', executor ' + sc['executor'] if sc.get('executor') else ''}. "
        "Cells: mean ± standard deviation over the runs (orders x seeds) of the final mean over tasks "
        "after the last step; forgetting: average forgetting of image F1 in percent.",
        "",
        "| strategy | M | runs | image AUROC | image F1 | pixel AUROC | forgetting % (image F1) | bank MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    strategies = sorted(s.strategy.unique(), key=lambda x: (_ORDER.index(x) if x in _ORDER else 99, x))
    for strat in strategies:
        for m in sorted(s[s.strategy == strat].memory_size.unique()):
            g = s[(s.strategy == strat) & (s.memory_size == m)]

            def col(metric, field="final_mean"):
                return g[g.metric == metric][field].to_numpy(dtype=float)

            lines.append(f"| {_NAMES.get(strat, strat)} | {m} | {runs[(strat, m)]} | {_cell(col('image_auroc'))} | "
                         f"{_cell(col('image_f1'))} | {_cell(col('pixel_auroc'))} | "
                         f"{_cell(col('image_f1', 'avg_forgetting_pct'), 1)} | "
                         f"{_cell(g[g.metric == 'image_f1'].bank_mb.to_numpy(dtype=float), 2)} |")
    st = getattr(res, "statistics", None)
    if st is not None and len(st):
        from pclsim.analysis.statistics import order_sentence

        lines += ["", "Does the order matter? (`statistics.parquet`, final image AUROC; `pclsim/statistics.py` says "
                      "which test and why)", ""]
        for strat in strategies:
            for m in sorted(s[s.strategy == strat].memory_size.unique()):
                lines.append(f"- {order_sentence(st, strat, int(m), 'image_auroc')}")
    when = datetime.date.today().isoformat()
    took = f", {seconds:.0f} s" if seconds is not None else ""
    lines += ["", f"Written by `benchmarks/readme_figures.py` from `{os.path.relpath(res.folder, ROOT)}` "
                  f"on {when}{took}."]
    return "\n".join(lines) + "\n"


def run_serial(scenario: str, out: Path):
    """The scenario through the in-process executor (engine.simulate: the same plan and core the Ray trials
    run, with equal results), written as a results folder; for machines where Ray cannot be kept up."""
    import yaml

    from pclsim.store.cache import load_or_extract
    from pclsim.data import load_stream
    from pclsim.study.engine import simulate
    from pclsim.core.features import FeatureExtractor
    from pclsim.analysis.summary import build_summary
    from pclsim.results.tables import rows_table, steps_table, write_table
    from pclsim.study.scenario import expand_runs, load_scenario, scenario_hash

    sc = load_scenario(scenario)
    streams = load_stream(sc["dataset"], sc["dataset"]["root"])
    m = sc["model"]
    ex = FeatureExtractor(m["backbone"], m["weights"], m["layers"], image_size=sc["dataset"]["image_size"],
                          batch_size=m["batch_size"], resize=sc["dataset"]["resize"])
    tasks = {t.name: load_or_extract(t, ex) for t in streams}
    pairs = simulate(expand_runs(sc), tasks, sc)
    write_table(rows_table(pairs), out, "matrices", "part-serial")
    write_table(steps_table(pairs, ex.dim), out, "steps", "part-serial")
    from pclsim.core.backbones import architecture_mb

    summary = build_summary(pd_read(out / "matrices.parquet"), pd_read(out / "steps.parquet"), {},
                            architecture_mb(ex.model))
    write_table(summary, out, "summary")
    (out / "scenario.yaml").write_text(yaml.safe_dump(dict(sc, pclsim_version=pclsim.__version__,
                                                           scenario_hash=scenario_hash(sc),
                                                           executor="serial (engine.simulate)"), sort_keys=False))
    return pclsim.load_results(out)


def pd_read(p):
    import pandas as pd

    return pd.read_parquet(p)



def update_readme(readme: Path, body: str) -> None:
    """Put the figures between README's readme-figures markers."""
    replace_readme_block(readme, MARKER, body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--results", help="an existing results folder (nothing is run)")
    g.add_argument("--scenario", default=str(ROOT / "scenarios" / "readme.yaml"), help="scenario to run")
    ap.add_argument("--out", help="results folder for --scenario (default results/<name>)")
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "readme_figures.md"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--no-readme", action="store_true", help="write only the Markdown file")
    ap.add_argument("--serial", action="store_true", help="run --scenario in this process instead of a Ray sweep")
    a = ap.parse_args()
    t0 = time.perf_counter()
    if a.results:
        res, secs = pclsim.load_results(a.results), None
    elif a.serial:
        res = run_serial(a.scenario, Path(a.out or ROOT / "results" / "readme-serial").resolve())
        secs = time.perf_counter() - t0
    else:
        res = pclsim.sweep(a.scenario, out=a.out, quiet=False)
        secs = time.perf_counter() - t0
    body = figures_markdown(res, secs)
    Path(a.md).write_text(body)
    if not a.no_readme:
        update_readme(Path(a.readme), body)
    print(body)


if __name__ == "__main__":
    main()
