"""Issue 21: the scenario's keys in one table (pclsim.study.keys): a new key is one call, validated with an
`error:` line naming it, visible in `pclsim validate`; the README's key table is generated from the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pclsim.errors import ScenarioError
from pclsim.study.keys import KEYS, Key, integer, markdown_table, register_key
from pclsim.study.scenario import DEFAULTS, resolve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def toy_key():
    key = register_key(Key("evaluation.toy_top_k", 3, "a toy key of this test", integer(1)))
    yield key
    del KEYS[key.path]


def test_a_new_key_is_one_call(toy_key):
    assert resolve({})["evaluation"]["toy_top_k"] == 3                     # its default
    assert resolve({"evaluation": {"toy_top_k": 5}})["evaluation"]["toy_top_k"] == 5
    with pytest.raises(ScenarioError, match="key 'evaluation.toy_top_k': must be >= 1, got 0"):
        resolve({"evaluation": {"toy_top_k": 0}})
    with pytest.raises(ScenarioError, match="key 'evaluation.toy_top_k': expected an integer"):
        resolve({"evaluation": {"toy_top_k": "many"}})
    assert "`evaluation.toy_top_k` | `3` | a toy key of this test |" in markdown_table()


def test_a_new_key_shows_in_validate(tmp_path):
    sc = tmp_path / "s.yaml"
    sc.write_text((ROOT / "scenarios/smoke.yaml").read_text() + "evaluation: {toy_top_k: 7}\n")
    prog = ("from pclsim.study.keys import Key, integer, register_key\n"
            "register_key(Key('evaluation.toy_top_k', 3, 'a toy key', integer(1)))\n"
            "import sys\nfrom pclsim.cli import main\nsys.argv = ['pclsim'] + sys.argv[1:]\nmain()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", prog, "validate", str(sc), "--headers-only"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "evaluation.toy_top_k=7" in r.stdout
    sc.write_text((ROOT / "scenarios/smoke.yaml").read_text() + "evaluation: {toy_top_k: -1}\n")
    r = subprocess.run([sys.executable, "-c", prog, "validate", str(sc)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {sc}: key 'evaluation.toy_top_k': must be >= 1, got -1"


def test_every_built_in_key_is_in_the_table_and_the_readme_table_is_current():
    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert set(leaves(DEFAULTS)) == set(KEYS)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- scenario-keys:begin -->\n", 1)[1].split("<!-- scenario-keys:end -->", 1)[0]
    assert block == markdown_table(), "run: python -m pclsim.study.keys --readme README.md"


def test_a_key_cannot_be_defined_twice():
    with pytest.raises(ValueError, match="already defined"):
        register_key(Key("dataset.kind", "x", "again"))
    with pytest.raises(ValueError, match="clashes"):
        register_key(Key("dataset", 1, "a section"))
