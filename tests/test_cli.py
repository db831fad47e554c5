"""The command line: version, validate, data synth, and every bad-input case of interface.md.

Each bad input must give exit code 2, exactly one stderr line starting with `error:` that names
the file or key, no traceback, and leave an existing results folder untouched.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pclsim.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=e, timeout=300)


def assert_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def results(tmp_path):
    """A results folder that already holds something a bad run must not touch."""
    out = tmp_path / "results"
    (out / "matrices.parquet").mkdir(parents=True)
    (out / "matrices.parquet" / "part-x.parquet").write_bytes(b"earlier results")
    (out / "scenario.yaml").write_text("name: earlier\nscenario_hash: 0123456789abcdef\n")  # pclsim's record
    return out


def scenario(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return p


def png(path: Path, size=(48, 48), mode="L", value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    a = rng.integers(0, 255, size[::-1] + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    if value is not None:
        a[:] = value
    Image.fromarray(a, mode=mode).save(path)


def folder_dataset(root: Path):
    for i in range(3):
        png(root / "cat" / "train" / "good" / f"{i}.png")
        png(root / "cat" / "test" / "good" / f"{i}.png")
        png(root / "cat" / "test" / "crack" / f"{i}.png")
    return root


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("pclsim 0.")


def test_validate_prints_counts():
    r = cli("validate", "scenarios/orders.yaml")
    assert r.returncode == 0, r.stderr
    assert "orders: 720" in r.stdout and "runs: 5760" in r.stdout and "strategies: 4" in r.stdout


def test_replicates_scenario_expands_seeds_as_replicates():
    r = cli("validate", "scenarios/orders_replicates.yaml")
    assert r.returncode == 0, r.stderr
    assert "seeds: 3" in r.stdout and "runs: 4320" in r.stdout and "rebalance: authors" in r.stdout


def test_data_synth_writes_bmad_layout(tmp_path):
    r = cli("data", "synth", tmp_path / "synth", "--tasks", "Brain_AD,Chest_AD", "--train", "3", "--test", "4",
            "--size", "64")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "synth" / "Brain_AD" / "train" / "good").glob("*.png"))) == 3
    assert list((tmp_path / "synth" / "Brain_AD" / "test" / "Ungood" / "label").glob("*.png"))
    r = cli("validate", scenario(tmp_path, {"dataset": {"kind": "bmad", "root": str(tmp_path / "synth"),
                                                        "tasks": ["Brain_AD", "Chest_AD"]},
                                            "memory_sizes": [10]}))
    assert r.returncode == 0, r.stderr
    assert "task Brain_AD: 3 train, 4 test" in r.stdout


@pytest.mark.parametrize("body,needles", [
    ("name: x\nstrategies: [patchcore_cl\n", ["malformed YAML"]),
    ({"name": "x", "modle": {}}, ["'modle'", "unknown key"]),
    ({"name": "x", "strategies": ["patchcore_cl", "replay"]}, ["'strategies'", "replay"]),
    ({"name": "x", "memory_sizes": [4]}, ["'memory_sizes'", "smaller than the number of tasks"]),
    ({"name": "x", "orders": [["Brain_AD", "Liver_AD", "Brain_AD"]]}, ["'orders[0]'", "duplicate task"]),
    ({"name": "x", "orders": [["Brain_AD", "Kidney_AD"]]}, ["'orders[0]'", "unknown task"]),
    ({"name": "x", "dataset": {"kind": "bmad", "root": "/nonexistent/bmad"}}, ["/nonexistent/bmad"]),
])
def test_bad_scenarios(tmp_path, results, body, needles):
    p = scenario(tmp_path, body)
    before = tree_digest(results)
    for cmd in (["validate", p], ["sweep", p, "--out", results]):
        r = cli(*cmd)
        assert_error(r, *needles)
        if "malformed" not in needles[0]:
            assert str(p) in r.stderr or "/nonexistent" in r.stderr
    assert tree_digest(results) == before


def test_missing_scenario_file(tmp_path):
    assert_error(cli("sweep", tmp_path / "nope.yaml"), "nope.yaml")


def test_corrupt_and_empty_images_and_mask_mismatch(tmp_path, results):
    before = tree_digest(results)
    root = folder_dataset(tmp_path / "data")
    (root / "cat" / "test" / "crack" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    sc = {"name": "x", "dataset": {"kind": "folder", "root": str(root), "tasks": ["cat"]}, "memory_sizes": [10],
          "strategies": ["finetune"]}
    r = cli("sweep", scenario(tmp_path, sc), "--out", results)
    assert_error(r, "1.png")
    assert tree_digest(results) == before
    # an empty file and a mask whose size differs from its image are named just as clearly
    (root / "cat" / "test" / "crack" / "1.png").unlink()
    (root / "cat" / "test" / "crack" / "2.png").write_bytes(b"")
    r = cli("sweep", scenario(tmp_path, sc), "--out", results)
    assert_error(r, "2.png")
    png(root / "cat" / "test" / "crack" / "2.png")
    png(root / "cat" / "ground_truth" / "crack" / "0_mask.png", size=(20, 20))
    png(root / "cat" / "ground_truth" / "crack" / "2_mask.png")
    r = cli("sweep", scenario(tmp_path, sc), "--out", results)
    assert_error(r, "0_mask.png")
    assert tree_digest(results) == before


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("sweep", "scenarios/smoke.yaml", "--out", blocker / "sub")
    assert_error(r, str(blocker / "sub"))


def test_results_of_another_scenario_are_protected(tmp_path, results):
    before = tree_digest(results)
    r = cli("sweep", "scenarios/smoke.yaml", "--out", results)
    assert_error(r, "scenario.yaml", "--fresh")
    assert tree_digest(results) == before
