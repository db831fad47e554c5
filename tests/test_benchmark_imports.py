"""The benchmarks (and gpu_check.sh, which runs some of them on a lent GPU with no chance to fix a
typo) import only names pclsim still has: a benchmark that broke with a refactor fails here, on CPU CI."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def pclsim_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pclsim":
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_pclsim_name_a_benchmark_imports_exists(path):
    missing = []
    for module, name in pclsim_imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names pclsim no longer has: {missing}"


def test_the_check_sees_a_missing_name(tmp_path):
    p = tmp_path / "bench_old.py"
    p.write_text("def main():\n    from pclsim.core.knn import prefix_nn\n")
    assert list(pclsim_imports(p)) == [("pclsim.core.knn", "prefix_nn")]
    assert not hasattr(importlib.import_module("pclsim.core.knn"), "prefix_nn")
