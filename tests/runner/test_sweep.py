"""The sweep through Ray, end to end: tables, resume after SIGKILL, determinism, a two-node cluster.

These start real Ray clusters, so they are the slowest tests of the suite (about a minute each).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def sweep_cmd(out, *extra):
    return [sys.executable, "-m", "pclsim.cli", "sweep", str(SMOKE), "--out", str(out), "--quiet", *extra]


def env(cache):
    return dict(os.environ, PCLSIM_CACHE_DIR=str(cache), RAY_ADDRESS="")


def run(cmd, e, timeout=600):
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def table(out: Path, name: str) -> pd.DataFrame:
    df = pd.read_parquet(out / name)
    keys = [c for c in ("run_id", "step", "eval_task", "metric") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted sweep of the smoke scenario."""
    d = tmp_path_factory.mktemp("ref")
    run(sweep_cmd(d / "out", "--fresh", "--gallery", "2"), env(d / "cache"))
    return d / "out", d / "cache"


def test_tables_hold_full_matrices(reference):
    out, _ = reference
    sc = yaml.safe_load((out / "scenario.yaml").read_text())
    assert sc["pclsim_version"] and sc["scenario_hash"] and sc["model"]["reweighting"] == "paper"
    m = table(out, "matrices.parquet")
    assert list(pd.read_parquet(out / "matrices.parquet").columns) == [
        "run_id", "strategy", "memory_size", "seed", "order", "step", "train_task", "eval_task", "metric", "value"]
    assert m.run_id.nunique() == 6 * 4 * 2  # 3! orders x 4 strategies x 2 memory sizes
    img = m[m.metric == "image_auroc"]
    assert (img.groupby("run_id").size() == 9).all()  # full 3 x 3 after every step
    pix = m[m.metric == "pixel_auroc"]
    assert set(pix.eval_task) == {"Brain_AD", "Liver_AD"}  # masks only for those
    assert set(m[m.metric == "task_id_acc"].strategy) == {"patchcore_cl"}
    assert m.value.between(0, 1).all()
    s = pd.read_parquet(out / "summary.parquet")
    assert len(s) == m.groupby(["run_id", "metric"]).ngroups
    cl = s[(s.strategy == "patchcore_cl") & (s.metric == "image_f1")]
    assert cl.relative_gap.notna().all()
    assert (s[s.strategy == "joint"].relative_gap.isna()).all()
    # bank memory: vectors x D x 4 bytes, D = 152 for the bundled backbone
    steps = pd.read_parquet(out / "steps.parquet")
    assert np.allclose(steps.bank_mb, steps.bank_vectors * 152 * 4 / 1e6)
    assert len(list((out / "gallery").glob("*.npz"))) == 3 * 2


def test_serial_simulate_equals_ray_sweep(reference):
    """The study core in one process (engine.simulate) gives the Ray sweep's Parquet values exactly."""
    from pclsim.store.cache import load_or_extract
    from pclsim.data import load_stream
    from pclsim.study.engine import simulate
    from pclsim.core.features import FeatureExtractor
    from pclsim.results.tables import rows_table
    from pclsim.study.scenario import expand_runs, load_scenario

    out, cache = reference
    sc = load_scenario(SMOKE)
    assert sc["coreset"]["rebalance"] == "authors"
    streams = load_stream(sc["dataset"], sc["dataset"]["root"])
    fx = FeatureExtractor(sc["model"]["backbone"], sc["model"]["weights"], sc["model"]["layers"],
                          image_size=sc["dataset"]["image_size"])
    tasks = {t.name: load_or_extract(t, fx, cache_root=cache) for t in streams}
    serial = rows_table(simulate(expand_runs(sc), tasks, sc)).to_pandas()
    keys = ["run_id", "step", "eval_task", "metric"]
    serial = serial.sort_values(keys).reset_index(drop=True)
    swept = table(out, "matrices.parquet")
    assert len(serial) == len(swept)
    pd.testing.assert_frame_equal(serial, swept[serial.columns], check_exact=True)


def test_resume_after_sigkill_matches_uninterrupted_run(reference, tmp_path):
    ref_out, cache = reference
    out = tmp_path / "out"
    p = subprocess.Popen(sweep_cmd(out, "--fresh", "--max-concurrent", "1"), env=env(cache), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out / "matrices.parquet"
    deadline = time.time() + 400
    while time.time() < deadline and not (parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 2):
        assert p.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(parts.glob("part-*.parquet")))
    assert 2 <= done < 8, done
    assert not (out / "summary.parquet").exists()
    resume = [c for c in sweep_cmd(out) if c != "--quiet"]  # the banner says how many trials it skipped
    r = run(resume, env(cache))
    assert f"({done} already done)" in r.stderr or f"({done + 1} already done)" in r.stderr
    for name in ("matrices.parquet", "summary.parquet"):
        a, b = table(ref_out, name), table(out, name)
        assert not b.duplicated(subset=[c for c in ("run_id", "step", "eval_task", "metric") if c in b]).any()
        pd.testing.assert_frame_equal(a, b)  # identical values: determinism across runs, no duplicates


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_node_cluster(*worker_args):
    """A head and a worker raylet on 127.0.0.1, one CPU each; yields the address."""
    if shutil.which("ray") is None:
        pytest.skip("ray CLI not on PATH")
    port = _free_port()
    # the test cluster lives on loopback: no token authentication between its two nodes and the driver
    e = dict(os.environ, RAY_ADDRESS="", RAY_AUTH_MODE="disabled")
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=True, env=e,
                       capture_output=True, timeout=120)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *worker_args,
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=True, env=e,
                       capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["ray", "stop", "--force"], env=e, capture_output=True, timeout=120)


def test_two_node_cluster_spreads_extractors(reference, tmp_path):
    ref_out, _ = reference
    with two_node_cluster() as address:
        out = tmp_path / "out"
        # a fresh cache: the two nodes extract the features themselves
        run(sweep_cmd(out, "--fresh", "--address", address), dict(env(tmp_path / "cache"), RAY_AUTH_MODE="disabled"))
        info = json.loads((out / "run_info.json").read_text())
        assert info["ray_nodes"] == 2
        assert len(info["extractor_nodes"]) == 2  # one extractor actor on each node
        # both nodes wrote chunks into the shared store, and a task written by both was assembled on one
        # of them from the other's chunk files: features travel through the store, not the object store
        fs = info["feature_store"]
        assert set(fs["chunks_by_node"]) == set(info["extractor_nodes"])
        assert any(len(w) == 2 and fs["finalisers"][t] in w for t, w in fs["chunk_writers"].items())
        entries = [d for d in (tmp_path / "cache" / "features").iterdir()]
        assert len(entries) == 3 and all((d / "meta.json").is_file() for d in entries)  # no chunk folders left
        for name in ("matrices.parquet", "summary.parquet"):
            pd.testing.assert_frame_equal(table(ref_out, name), table(out, name))


def test_report_of_a_real_sweep(reference, tmp_path):
    from PIL import Image

    from pclsim.report import build_report

    out, _ = reference
    index = build_report(out, out_dir=tmp_path / "report")
    html = index.read_text()
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert len(pngs) >= 6 and (tmp_path / "report" / "gallery.png").exists()
    for p in pngs:
        assert p.name in html
        with Image.open(p) as im:
            im.load()
            assert min(im.size) >= 200
    t1 = pd.read_csv(tmp_path / "report" / "table1.csv", index_col=0)
    s = pd.read_parquet(out / "summary.parquet")
    want = s[(s.strategy == "patchcore_cl") & (s.memory_size == 90) & (s.metric == "image_auroc")].final_mean.mean()
    col = next(c for c in t1.columns if "CL" in c and "90" in c)
    row = next(r for r in t1.index if "image_auroc" in r.lower() or "image auroc" in r.lower())
    assert t1.loc[row, col] == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_losing_the_worker_node_mid_sweep_still_completes(reference, tmp_path):
    """Kill the second node's raylet while trials run: Tune retries the trial on the head node, which
    takes the lost features from the shared cache, and the results equal the uninterrupted run."""
    ref_out, _ = reference
    nm_port = _free_port()
    with two_node_cluster(f"--node-manager-port={nm_port}") as address:
        out = tmp_path / "out"
        p = subprocess.Popen(sweep_cmd(out, "--fresh", "--address", address),
                             env=dict(env(tmp_path / "cache"), RAY_AUTH_MODE="disabled"), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # wait until the first trial has written its part: trials are running on both nodes
        parts = out / "matrices.parquet"
        deadline = time.time() + 400
        while time.time() < deadline and not (parts.is_dir() and any(parts.glob("part-*.parquet"))):
            assert p.poll() is None, p.stderr.read()[-2000:]
            time.sleep(0.2)
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
        raylets = [int(ln.split()[0]) for ln in ps.splitlines() if "raylet" in ln and f"={nm_port}" in ln]
        assert raylets, "worker raylet not found"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        pd.testing.assert_frame_equal(table(ref_out, "summary.parquet"), table(out, "summary.parquet"))
