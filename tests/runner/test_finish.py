"""Issue 27: a finished study never dies in its summary.

- Look-alike tasks (one CT category tested twice): routing sends the second task's images to the first
  task's bank, task_id_acc is 0 on the diagonal, and the sweep still exits 0 with every table, the
  undefined summary cells null with their reason.
- A failure injected into the finish: one `error:` line naming what could not be computed, the trial
  tables stay, and the rerun completes the folder without running a trial again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pclsim.data import synthetic_stream
from pclsim.results.schema import TABLES

ROOT = Path(__file__).resolve().parents[2]


def run(args, code: str | None = None, timeout=600):
    """`pclsim ARGS` in a subprocess; `code` runs first in the same interpreter (to inject a fault)."""
    prog = (code or "") + "\nimport sys\nfrom pclsim.cli import main\nsys.argv = ['pclsim'] + sys.argv[1:]\nmain()\n"
    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", prog, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def write_mvtec_twins(root: Path) -> None:
    """MVTec layout of three tasks: ct_a (synthetic CT: Liver), ct_b, whose test set is ct_a's own test images
    (one category scanned twice, the second time with other normal training scans: Chest), and other
    (Brain). Routing sends ct_b's test images to ct_a's bank, so ct_b's task_id_acc is 0 at its own step."""
    liver, chest, brain = synthetic_stream(["Liver_AD", "Chest_AD", "Brain_AD"], train=10, test=8, size=64, seed=0)
    for name, train, test in (("ct_a", liver, liver), ("ct_b", chest, liver), ("other", brain, brain)):
        for i, s in enumerate(train.train):
            img, _ = s.load()
            _save(root / name / "train/good" / f"{i:03d}.png", img)
        for i, s in enumerate(test.test):
            img, mask = s.load()
            kind = "bad" if s.label else "good"
            _save(root / name / "test" / kind / f"{i:03d}.png", img)
            if s.label and test.has_masks:
                _save(root / name / "ground_truth" / kind / f"{i:03d}_mask.png", (mask > 0).astype(np.uint8) * 255)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path)


def test_look_alike_tasks_finish_with_every_table_and_reasons_for_the_undefined(tmp_path):
    write_mvtec_twins(tmp_path / "data")
    sc = tmp_path / "twins.yaml"
    sc.write_text(f"""name: twins
dataset: {{kind: mvtec, root: {tmp_path / 'data'}, tasks: [ct_a, ct_b, other], image_size: 64}}
orders: [[ct_a, ct_b, other]]
strategies: [patchcore_cl]
memory_sizes: [100]
""")
    r = run(["sweep", sc, "--out", tmp_path / "out", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    for t in TABLES.values():
        if t.name not in ("categories", "design"):  # merged tasks only; adaptive order designs only
            assert (out / t.file).exists(), t.file
    mat = pd.read_parquet(out / "matrices.parquet")
    routing = pd.read_parquet(out / "routing.parquet")
    for strategy in ("patchcore_cl",):
        m = mat[(mat.metric == "task_id_acc") & (mat.strategy == strategy)]
        tid = m.set_index(["step", "eval_task"])["value"]
        r_s = routing[routing.strategy == strategy]
        for step in (1, 2):  # task_id_acc is the share of ct_b's images routed to ct_b's own bank
            r_b = r_s[(r_s.step == step) & (r_s.true_task == "ct_b")]
            assert tid[(step, "ct_b")] == r_b.loc[r_b.chosen_task == "ct_b", "images"].sum() / r_b["images"].sum()
    mm = mat[(mat.metric == "task_id_acc") & (mat.strategy == "patchcore_cl")].set_index(["step", "eval_task"])["value"]
    assert mm[(1, "ct_b")] == 0.0  # routing chose ct_a: a zero on the diagonal, the case that ended 0.2's sweep
    summary = pd.read_parquet(out / "summary.parquet")
    row = summary[(summary.metric == "task_id_acc") & (summary.strategy == "patchcore_cl")].iloc[0]
    assert np.isnan(row.avg_forgetting_pct) and "avg_forgetting_pct: not defined for task_id_acc" in row.undefined
    assert row.final_mean == 2 / 3 and row.bwt == 0.0
    for r_ in summary.itertuples():  # every null quantity has its reason
        for q in ("final_mean", "avg_forgetting_pct", "bwt", "fwt"):
            if np.isnan(getattr(r_, q)):
                assert f"{q}: " in (r_.undefined or ""), (r_.metric, q)
    assert (out / "statistics.parquet").exists()
    report = run(["report", out])
    assert report.returncode == 0, report.stderr[-2000:]


BOOM = """
import pclsim.analysis.summary as s
def _boom(*a, **k):
    raise ZeroDivisionError("injected into the summary")
s.build_summary = _boom
"""


def test_a_failed_finish_keeps_the_trials_and_the_rerun_redoes_only_the_finish(tmp_path):
    out = tmp_path / "out"
    r = run(["sweep", "scenarios/smoke.yaml", "--out", out, "--quiet"], code=BOOM)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: summary.parquet: could not compute the summary"), r.stderr
    assert "ZeroDivisionError: injected into the summary" in lines[0] and "rerun the same command" in lines[0]
    assert not (out / "summary.parquet").exists() and not (out / "statistics.parquet").exists()
    parts = {p: p.stat().st_mtime_ns for p in (out / "matrices.parquet").rglob("*.parquet")}
    assert parts
    t0 = time.perf_counter()
    r = run(["sweep", "scenarios/smoke.yaml", "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(8 already done)" in r.stderr, r.stderr[-2000:]  # every trial found done: none is run again
    assert {p: p.stat().st_mtime_ns for p in (out / "matrices.parquet").rglob("*.parquet")} == parts
    assert (out / "summary.parquet").exists() and (out / "statistics.parquet").exists()
    assert time.perf_counter() - t0 < 60
