"""Ray's temp path checked before any data is read: a long TMPDIR (SLURM, HPC sites) is one error line."""

from __future__ import annotations

import os
import time

import pytest

from pclsim.errors import PclsimError
from pclsim.runner.cluster import check_ray_temp_dir
from pclsim_cli import ROOT, cli


def test_socket_path_length_rule():
    check_ray_temp_dir({})  # /tmp
    check_ray_temp_dir({"TMPDIR": "/tmp/job-123"})
    base = "/scratch/" + "x" * 30
    # the longest socket path Ray builds: <base>/ray/session_<26 chars>_<pid, 7 digits>/sockets/plasma_store
    longest = len(base) + len("/ray/session_") + 26 + 1 + 7 + len("/sockets/plasma_store")
    ok = "/" + "d" * (107 - (longest - len(base)) - 1)
    check_ray_temp_dir({"TMPDIR": ok})  # exactly 107 bytes
    with pytest.raises(PclsimError, match=r"TMPDIR=.*too long for Ray's socket paths \(108 > 107 bytes.*RAY_TMPDIR"):
        check_ray_temp_dir({"TMPDIR": ok + "d"})
    # RAY_TMPDIR wins over TMPDIR, as in Ray
    check_ray_temp_dir({"TMPDIR": "/" + "t" * 150, "RAY_TMPDIR": "/tmp/r"})
    with pytest.raises(PclsimError, match="^RAY_TMPDIR="):
        check_ray_temp_dir({"TMPDIR": "/tmp", "RAY_TMPDIR": "/" + "t" * 150})


def test_long_tmpdir_fails_the_sweep_and_validate_before_the_data(tmp_path):
    long = tmp_path / ("slurm_job_" + "9" * 60) / ("node-" + "x" * 60)
    long.mkdir(parents=True)
    for args in (["validate", ROOT / "scenarios" / "smoke.yaml"],
                 ["sweep", ROOT / "scenarios" / "smoke.yaml", "--out", tmp_path / "o"]):
        t0 = time.perf_counter()
        r = cli(*args, env={"TMPDIR": str(long), "PCLSIM_CACHE_DIR": str(tmp_path / "cache")})
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.startswith(f"error: TMPDIR={long}: too long for Ray's socket paths") and \
            r.stderr.count("\n") == 1, r.stderr
        assert "export RAY_TMPDIR=" in r.stderr
        assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()
    assert not (long / "ray").exists()  # no Ray started there
