"""Shared benchmark helpers: timing, JSON output, optional anomalib oracle."""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # oracles draw progress bars; benchmarks print JSON only


def timed(fn, *args, repeat: int = 1, **kw):
    """(best seconds over `repeat` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def emit(name: str, payload: dict) -> None:
    """Print one JSON line; append it to $PCLSIM_BENCH_OUT when set."""
    line = json.dumps({"benchmark": name, **payload}, default=float)
    print(line, flush=True)
    path = os.environ.get("PCLSIM_BENCH_OUT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def anomalib_or_none(what: str):
    try:
        if what == "kcenter":
            from anomalib.models.components.sampling import KCenterGreedy

            return KCenterGreedy
        if what == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            return PatchcoreModel
    except Exception as e:  # anomalib is an optional oracle (pip install -e '.[bench]')
        print(f"anomalib unavailable ({type(e).__name__}: {e}); its baseline is skipped", file=sys.stderr)
    return None


def json_lines(*paths) -> list[dict]:
    """The JSON objects a benchmark printed, from saved output files (other lines skipped)."""
    return [json.loads(x) for p in paths for x in open(p) if x.strip().startswith("{")]


def replace_readme_block(readme, name: str, body: str) -> None:
    """Put `body` between README's `<!-- name:begin -->` and `<!-- name:end -->` markers (atomic rewrite).

    Raises SystemExit naming the file when a marker is missing."""
    from pathlib import Path

    readme = Path(readme)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: {readme}: markers {begin} ... {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = body if body.endswith("\n") else body + "\n"
    tmp = readme.with_name("." + readme.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{body}{end}{tail}")
    os.replace(tmp, readme)
