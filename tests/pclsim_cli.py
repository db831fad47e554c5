"""Running the `pclsim` command line in a subprocess, on this checkout, against a local Ray only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`pclsim ARGS` from the repository root with this checkout's package; `env` adds variables."""
    e = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pclsim.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=timeout)
