"""The record pclsim keeps in a results folder: scenario.yaml with the resolved scenario, its hash, the data
fingerprint, the versions and the trackers' run group (written by pclsim.runner.sweep.prepare_output)."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["results_record"]


def results_record(out: Path) -> dict | None:
    """The folder's pclsim record (scenario.yaml with a scenario_hash), or None: no record, or a
    scenario.yaml that pclsim did not write (the user's own)."""
    meta = out / "scenario.yaml"
    try:
        body = yaml.safe_load(meta.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and "scenario_hash" in body else None
