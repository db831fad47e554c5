"""Issue 28: `--out` never destroys what pclsim did not write.

pclsim recognises its folder by its record (scenario.yaml with a scenario_hash); it never overwrites the
user's scenario; --fresh deletes only what pclsim writes, only in a folder pclsim wrote. Every user file
is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pclsim.errors import PclsimError
from pclsim.runner.sweep import WRITTEN, prepare_output, results_record
from pclsim.study.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
USER_SCENARIO = "# my study, with my comments\n" + (ROOT / "scenarios/smoke.yaml").read_text()


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_users_scenario_in_out_is_never_overwritten(tmp_path):
    exp = tmp_path / "exp1"
    exp.mkdir()
    (exp / "scenario.yaml").write_text(USER_SCENARIO)
    sc = load_scenario(exp / "scenario.yaml")
    before = digest(exp)
    for fresh in (False, True):
        with pytest.raises(PclsimError, match=r"scenario.yaml: not a pclsim results record .* never overwrites yours"):
            prepare_output(sc, exp, fresh=fresh)
        assert digest(exp) == before
    # the suggested folder works and leaves the user's files alone
    prepare_output(sc, exp / "results", fresh=False)
    assert results_record(exp / "results")["scenario_hash"] and digest(exp)["scenario.yaml"] == before["scenario.yaml"]


def test_a_scenario_under_another_name_gets_the_record_beside_it(tmp_path):
    exp = tmp_path / "exp1"
    exp.mkdir()
    (exp / "my_study.yaml").write_text(USER_SCENARIO)
    sc = load_scenario(exp / "my_study.yaml")
    prepare_output(sc, exp, fresh=False)
    assert (exp / "my_study.yaml").read_text() == USER_SCENARIO
    assert results_record(exp) is not None


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_pclsim_did_not_write_is_refused_when_it_holds_pclsims_names(tmp_path, fresh):
    own = tmp_path / "mine"
    (own / "report").mkdir(parents=True)
    (own / "report" / "index.html").write_text("<p>my own report</p>")
    (own / ".tune").mkdir()
    (own / ".tune" / "x").write_text("mine")
    (own / "data.json").write_text("{}")
    (own / "notes.txt").write_text("notes")
    sc = load_scenario(ROOT / "scenarios/smoke.yaml")
    before = digest(own)
    with pytest.raises(PclsimError, match=r"mine: holds .*report.* but no pclsim record"):
        prepare_output(sc, own, fresh=fresh)
    assert digest(own) == before


def test_fresh_on_a_pclsim_folder_deletes_only_what_pclsim_writes(tmp_path):
    out = tmp_path / "out"
    sc = load_scenario(ROOT / "scenarios/smoke.yaml")
    prepare_output(sc, out, fresh=False)
    for name, patterns in WRITTEN.items():  # everything pclsim writes, as a file or a folder
        p = out / name
        if patterns is None:
            p.write_text("{}")
        else:
            p.mkdir()
            (p / ("part-0.parquet" if name.endswith(".parquet") else "index.html" if name == "report"
                  else "t_0.npz" if name == "gallery" else "state")).write_bytes(b"x")
    (out / "notes.txt").write_text("my notes")
    (out / "analysis").mkdir()
    (out / "analysis" / "fig.py").write_text("print(1)")
    (out / "report" / "mine.md").write_text("my reading notes")          # the user's file in pclsim's folder
    (out / "matrices.parquet" / "README.txt").write_text("about these")
    keep = {k: v for k, v in digest(out).items() if k.startswith(("notes", "analysis")) or k.endswith(("md", "txt"))}
    prepare_output(sc, out, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == ["analysis", "matrices.parquet", "notes.txt",
                                                    "protocol.json", "report", "scenario.yaml"]
    assert {k: v for k, v in digest(out).items() if k not in ("scenario.yaml", "protocol.json")} == keep


def test_the_cli_refuses_with_one_error_line_naming_the_file(tmp_path):
    exp = tmp_path / "exp1"
    exp.mkdir()
    (exp / "scenario.yaml").write_text(USER_SCENARIO)
    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(exp / "scenario.yaml"), "--out", str(exp),
                        "--fresh"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {exp / 'scenario.yaml'}: not a pclsim results record")
    assert (exp / "scenario.yaml").read_text() == USER_SCENARIO and sorted(os.listdir(exp)) == ["scenario.yaml"]
    assert yaml.safe_load(USER_SCENARIO)["name"] == "smoke"
