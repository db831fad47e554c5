"""How a scenario check fails: one ScenarioError naming the file and the key (pclsim.study.scenario, pclsim.study.orders)."""

from __future__ import annotations

from ..errors import ScenarioError

__all__ = ["fail", "check_int"]


def fail(src: str, key: str, msg: str):
    """Raise ScenarioError "<src>: key '<key>': <msg>" (the CLI prints it as one `error:` line)."""
    raise ScenarioError(f"{src}: key '{key}': {msg}")


def check_int(src, key, v, lo=None):
    """v when it is an integer (not a bool) >= lo; ScenarioError naming the key otherwise."""
    if isinstance(v, bool) or not isinstance(v, int):
        fail(src, key, f"expected an integer, got {v!r}")
    if lo is not None and v < lo:
        fail(src, key, f"must be >= {lo}, got {v}")
    return v
