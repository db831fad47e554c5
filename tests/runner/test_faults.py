"""Issue 22: faults real machines throw. A full disk under the results folder is one `error:` line naming
the folder and the cause (exit 2, no traceback under --quiet), what was written stays valid and the rerun
after freeing space resumes; two sweeps share a feature cache, a third into a busy folder refuses; SIGTERM
stops like Ctrl-C and the rerun resumes; the sweep's last step checks the folder is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pclsim.runner.control import unwrap
from pclsim.runner.finish import check_complete

from pclsim_cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def small_disk(tmp_path):
    """A 160 KiB tmpfs: the smoke study's results (about 400 KB) cannot fit. Needs root and mount."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): full-disk case untested")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(small_disk, tmp_path):
    env = {"PCLSIM_CACHE_DIR": str(tmp_path / "cache")}
    out = small_disk / "out"
    r = cli("sweep", "scenarios/smoke.yaml", "--out", out, "--quiet", env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and "no space left on device" in lines[0] and str(out) in lines[0]
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)  # space freed
    r = cli("sweep", "scenarios/smoke.yaml", "--out", out, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    done = int(r.stderr.split(" already done)")[0].rsplit("(", 1)[1])
    assert done >= 1  # what was written before the disk filled is kept, not recomputed
    check_complete(out, 48)  # and the folder ends complete


def test_unwrapping_keeps_the_innermost_cause_of_a_multi_line_error():
    class TuneError(Exception):
        pass

    e = TuneError("Traceback (most recent call last):\n  File \"cb.py\", line 9, in on_trial_result\n"
                  "    client.log_metric(...)\nmlflow.exceptions.MlflowException: Run 'abc' not found\n")
    assert str(unwrap(e)) == "MlflowException: Run 'abc' not found"
    assert str(unwrap(ValueError("first line\nmiddle\nlast line"))) == "ValueError: first line ... last line"
    assert str(unwrap(ValueError("one line"), "trial g0")) == "trial g0: ValueError: one line"


def _popen(out: Path, cache: Path, *extra):
    e = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT), PCLSIM_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-m", "pclsim.cli", "sweep", str(ROOT / "scenarios/smoke.yaml"),
                             "--out", str(out), "--quiet", *extra], env=e, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(cond, p, seconds=500):
    deadline = time.time() + seconds
    while not cond():
        assert p.poll() is None and time.time() < deadline, "the sweep ended first"
        time.sleep(0.2)


def test_two_sweeps_share_a_cache_and_a_third_into_a_busy_folder_refuses(tmp_path):
    cache = tmp_path / "cache"
    a, b = _popen(tmp_path / "a", cache), _popen(tmp_path / "b", cache)
    _wait_for(lambda: (tmp_path / "a" / "scenario.yaml").exists(), a)
    r = cli("sweep", "scenarios/smoke.yaml", "--out", tmp_path / "a", "--quiet", env={"PCLSIM_CACHE_DIR": str(cache)})
    assert r.returncode == 2 and r.stderr.strip() == (f"error: {tmp_path / 'a'}: another pclsim sweep is writing into "
                                                      "this folder; wait for it to end or use another --out")
    for p in (a, b):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    for table in ("matrices", "summary", "statistics", "tasks"):
        x, y = (pd.read_parquet(f / f"{table}.parquet") for f in (tmp_path / "a", tmp_path / "b"))
        cols = [c for c in x.columns if "second" not in c and x[c].dtype != object or c in ("run_id", "metric")]
        keys = [c for c in ("run_id", "metric", "step", "eval_task", "task", "strategy", "memory_size", "quantity",
                            "statistic") if c in x.columns]
        pd.testing.assert_frame_equal(x[cols].sort_values(keys).reset_index(drop=True),
                                      y[cols].sort_values(keys).reset_index(drop=True))


def test_sigterm_stops_like_ctrl_c(tmp_path):
    out = tmp_path / "out"
    p = _popen(out, tmp_path / "cache", "--max-concurrent", "1")
    parts = out / "matrices.parquet"
    _wait_for(lambda: parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 2, p)
    p.send_signal(signal.SIGTERM)  # what Kubernetes sends the driver on preemption: the driver alone
    _, err = p.communicate(timeout=300)
    done = len(list(parts.glob("part-*.parquet")))
    assert p.returncode == 130, err[-3000:]
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        f"error: interrupted after {done} of 8 trials; rerun the same command to resume"], err[-3000:]
    assert not (out / "summary.parquet").exists()  # the finished groups stay; the Ctrl-C test shows the resume
    from pclsim.errors import FinishError

    with pytest.raises(FinishError, match="incomplete results, no summary.parquet, statistics.parquet"):
        check_complete(out, 48)  # the last step's check would never call this folder complete
