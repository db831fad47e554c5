"""Which code computed a results folder: the versions of pclsim and of the libraries its values depend on.

Every Parquet part a sweep writes carries, in its file metadata (key `pclsim.versions`, JSON), the
versions of the process that wrote it (`versions()`): pclsim, torch, timm. A resume compares them with
its own (`pclsim.runner.sweep.prepare_output`): results of two releases are never mixed in one folder
unless the user asks for it (`--accept-versions`), and each part still says which release computed it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from .._version import versions as _versions

__all__ = ["KEY", "versions", "part_versions", "folder_versions", "describe"]

KEY = b"pclsim.versions"
LIBRARIES = ("torch", "timm")  # as pclsim._version.versions


def versions() -> dict[str, str]:
    """The versions of this process (`pclsim._version.versions`: pclsim, torch, timm)."""
    return _versions()


def part_versions(path: str | Path) -> dict[str, str] | None:
    """The versions stored in one Parquet part (None: a part written before 0.3.1 holds none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(KEY)
    return json.loads(raw) if raw else None


def folder_versions(out: str | Path, groups, fallback: dict | None = None) -> dict[str, list[str]]:
    """{describe(versions): [group, ...]} over the finished groups' matrices parts of the folder `out`.

    fallback: the versions to assume for a part that holds none (the folder record's pclsim_version)."""
    found: dict[str, list[str]] = {}
    for g in sorted(groups):
        v = part_versions(Path(out) / "matrices.parquet" / f"part-{g}.parquet") or fallback or {}
        found.setdefault(describe(v), []).append(g)
    return found


def describe(v: dict) -> str:
    """'pclsim 0.3.1, torch 2.14.1, timm 1.0.15' (the keys present, in a fixed order)."""
    keys = ["pclsim", *LIBRARIES]
    return ", ".join(f"{k} {v[k]}" for k in keys if v.get(k)) or "unknown versions"
