"""The package's shape (ARCHITECTURE.md): layers that import only downward, no import cycle, modules of a
readable size, the Ray-free core without Ray, old import paths that still work."""

import ast
import importlib
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pclsim"

# The layers, lowest first (pclsim/__init__.py's docstring): a module may import its own layer and those below.
LAYERS = {"pclsim.errors": 0, "pclsim._version": 0, "pclsim.atomic": 0, "pclsim.data": 1, "pclsim.core": 2,
          "pclsim.store": 3, "pclsim.study": 4, "pclsim.results": 5, "pclsim.analysis": 6, "pclsim.report": 7,
          "pclsim.runner": 7, "pclsim.plan": 8}
TOP = 9  # pclsim/__init__, api, cli, the public facades (metrics, coreset) and the old-path table (_moved)
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, counting imports inside functions too (a lazy import is
    still a dependency), and the subpackage whose __init__ an import of one of its modules runs."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        here = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if not t or t == m:
                    continue
                graph[m].add(t)
                parent = t.rpartition(".")[0]
                if parent not in ("", "pclsim") and not m.startswith(parent + ".") and parent != m:
                    graph[m].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_lazy_import_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == {frozenset({"a", "b", "c"})}
    graph = import_graph()
    assert "pclsim.study.maskless" in graph["pclsim.runner.trials"]  # imported inside _trial only: still an edge
    assert "pclsim.data" in graph["pclsim.study.gallery"]  # importing pclsim.data.images runs pclsim/data/__init__


def test_no_import_cycle():
    assert not cycles(import_graph())


def layer_of(module: str) -> int:
    return LAYERS.get(".".join(module.split(".")[:2]), TOP)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a layer imports a higher one, or a sibling layer of the same rank."""
    bad = []
    for m, deps in graph.items():
        for d in deps:
            lm, ld = layer_of(m), layer_of(d)
            same_package = ".".join(m.split(".")[:2]) == ".".join(d.split(".")[:2])
            if ld > lm or (ld == lm and lm != TOP and not same_package and lm != 0):
                bad.append((m, d))
    return sorted(bad)


def test_layers_import_only_downward():
    assert upward_imports({"pclsim.core.knn": {"pclsim.study.banks"}}) == [("pclsim.core.knn", "pclsim.study.banks")]
    assert upward_imports({"pclsim.report.page": {"pclsim.runner.sweep"}})  # siblings stay apart
    assert not upward_imports({"pclsim.study.banks": {"pclsim.core.knn", "pclsim.errors"}})
    graph = import_graph()
    assert not upward_imports(graph)
    # every module of the package sits in a declared layer or at the top on purpose
    top = {m for m in graph if layer_of(m) == TOP}
    assert top == {"pclsim", "pclsim.api", "pclsim.cli", "pclsim.metrics", "pclsim.coreset", "pclsim._moved"}


def test_modules_stay_readable():
    sizes = {p.relative_to(PKG).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > MAX_LINES}


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc) > 120, init


def test_the_core_imports_without_ray():
    """The Ray-free layers (core, data, store, study, results, analysis, report) import with Ray hidden."""
    code = textwrap.dedent("""
        import builtins, sys
        real = builtins.__import__
        def no_ray(name, *a, **k):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError("No module named 'ray'")
            return real(name, *a, **k)
        builtins.__import__ = no_ray
        import importlib, pkgutil, pclsim
        for sub in ("core", "data", "store", "study", "results", "analysis", "report"):
            pkg = importlib.import_module("pclsim." + sub)
            for m in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"pclsim.{sub}.{m.name}")
        import pclsim.metrics, pclsim.coreset
        assert not any(k == "ray" or k.startswith("ray.") for k in sys.modules), "ray was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("old", sorted(importlib.import_module("pclsim._moved").MOVED))
def test_old_import_paths_warn_and_give_the_new_module(old):
    new = importlib.import_module("pclsim._moved").MOVED[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
