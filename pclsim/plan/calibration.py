"""The coefficients `pclsim plan` turns work into seconds and bytes with, as measured on one node.

A calibration file is JSON written by benchmarks/bench_plan.py --calibrate from small sweeps on the node
at hand (README, "Sizing a node"):

    {"format": "pclsim-plan-calibration/v1",
     "node": {"cpus": 2, "gpus": 0, ...}, "measured": {"date": ..., "sizes": [...], ...},
     "time": {"cpu": {STAGE: {"intercept_s": s, "per_unit_s": s per unit}, ...,
                      "families": {FAMILY: {TERM: s per count, ...}, ...}},
              "gpu": {...}},                       # only where measured on a GPU node
     "memory": {STAGE: {"intercept_bytes": b, "slope": k}, ...}}

A job of a family (pclsim.plan.work.FAMILIES: greedy k-center, candidate table, trial) takes its terms'
counts x their coefficients in seconds; a stage's time is intercept_s + per_unit_s x its makespan
(pclsim.plan.work.UNITS: the schedule of its jobs' seconds, or extraction's multiply-adds and the summary's
matrix cells); its peak memory (the sweep's whole process tree, PSS) is intercept_bytes + slope x the bytes
its concurrent jobs hold by the formulas of pclsim.runner.memory. The "cpu" set was measured on a node
without GPUs, "gpu" on one with GPUs (all stages on that node). The bundled file (pclsim/plan/calibration.json) was measured on the project's
development machine; PCLSIM_PLAN_CALIBRATION or `pclsim plan --calibration FILE` names another.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PclsimError
from .work import FAMILIES, STAGES

__all__ = ["FORMAT", "BUNDLED", "ENV", "Calibration", "load_calibration", "calibration_path", "fit_line",
           "fit_terms"]

FORMAT = "pclsim-plan-calibration/v1"
BUNDLED = Path(__file__).with_name("calibration.json")
ENV = "PCLSIM_PLAN_CALIBRATION"
_RECALIBRATE = "python benchmarks/bench_plan.py --calibrate"


@dataclass
class Calibration:
    """Fitted coefficients (see the module docstring). time: {device: {stage: {...}, "trial_terms": {...}}};
    memory: {stage: {"intercept_bytes", "slope"}}; node, measured: what and where it was measured; path: the
    file it was read from (None when built in memory)."""

    time: dict
    memory: dict
    node: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    path: str | None = None

    def devices(self) -> list[str]:
        return sorted(self.time)

    def to_json(self) -> dict:
        return {"format": FORMAT, "node": self.node, "measured": self.measured, "time": self.time,
                "memory": self.memory}

    def save(self, path) -> Path:
        """Write the file atomically; returns its path."""
        from ..atomic import atomic_write_json

        path = Path(path)
        atomic_write_json(self.to_json(), path)
        return path


def calibration_path(path=None) -> Path:
    """The calibration file to read: `path`, else $PCLSIM_PLAN_CALIBRATION, else the bundled one."""
    return Path(path or os.environ.get(ENV) or BUNDLED).expanduser()


def _number(v, where: str, src: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise PclsimError(f"{src}: {where}: expected a non-negative number, got {v!r}; rerun {_RECALIBRATE}")
    return float(v)


def load_calibration(path=None) -> Calibration:
    """Read and check a calibration file (`calibration_path(path)`).

    Raises PclsimError naming the file (and the key at fault) when it is missing, not JSON, of another format,
    or lacks a stage's coefficients; the message says how to write one."""
    src = calibration_path(path)
    via = "--calibration" if path else (ENV if os.environ.get(ENV) else "the bundled calibration")
    try:
        raw = json.loads(src.read_text())
    except FileNotFoundError:
        raise PclsimError(f"{src}: calibration file not found ({via}); measure one with {_RECALIBRATE}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PclsimError(f"{src}: cannot read the calibration file ({e})") from None
    except ValueError as e:
        raise PclsimError(f"{src}: not a calibration file (not JSON: {e}); measure one with {_RECALIBRATE}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise PclsimError(f"{src}: format {got!r}, expected {FORMAT!r}; measure one with {_RECALIBRATE}")
    time, memory = raw.get("time"), raw.get("memory")
    if not isinstance(time, dict) or not time or not isinstance(memory, dict):
        raise PclsimError(f"{src}: no 'time' or 'memory' coefficients; measure one with {_RECALIBRATE}")
    for dev, stages in time.items():
        if not isinstance(stages, dict):
            raise PclsimError(f"{src}: time.{dev}: expected a mapping of stages; rerun {_RECALIBRATE}")
        for st in STAGES:
            c = stages.get(st)
            if not isinstance(c, dict):
                raise PclsimError(f"{src}: time.{dev}.{st}: missing; rerun {_RECALIBRATE}")
            for k in ("intercept_s", "per_unit_s"):
                c[k] = _number(c.get(k), f"time.{dev}.{st}.{k}", src)
        fams = stages.get("families")
        for fam, names in FAMILIES.items():
            terms = fams.get(fam) if isinstance(fams, dict) else None
            if not isinstance(terms, dict):
                raise PclsimError(f"{src}: time.{dev}.families.{fam}: missing; rerun {_RECALIBRATE}")
            for t in names:
                terms[t] = _number(terms.get(t), f"time.{dev}.families.{fam}.{t}", src)
    for st in STAGES:
        c = memory.get(st)
        if not isinstance(c, dict):
            raise PclsimError(f"{src}: memory.{st}: missing; rerun {_RECALIBRATE}")
        for k in ("intercept_bytes", "slope"):
            c[k] = _number(c.get(k), f"memory.{st}.{k}", src)
    return Calibration(time, memory, raw.get("node") or {}, raw.get("measured") or {}, str(src))


def fit_line(x, y, prior_slope: float | None = None, min_spread: float = 0.05) -> tuple[float, float]:
    """(intercept, slope) >= 0 of y ~ intercept + slope x by least squares.

    Where x varies too little to tell a slope from an intercept (max - min below min_spread x its mean
    magnitude) or the least-squares slope is negative (noise over a flat stretch), the slope is prior_slope
    and the intercept the mean remainder (a negative remainder: no intercept, the slope y / x on average);
    without a prior, y's mean (x does not explain y). A negative least-squares intercept is held at 0 and the
    slope refitted. Raises ValueError without points."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) == 0:
        raise ValueError("fit_line: no points")
    mean = float(np.mean(np.abs(x)))
    flat = len(x) < 2 or mean == 0 or float(np.ptp(x)) / mean < min_spread
    through_0 = (0.0, float(np.dot(x, y) / np.dot(x, x))) if np.dot(x, x) > 0 else (max(0.0, float(np.mean(y))), 0.0)
    if not flat:
        slope, icpt = np.polyfit(x, y, 1)
        if slope >= 0:
            return (float(icpt), float(slope)) if icpt >= 0 else through_0
    if prior_slope is not None:
        icpt = float(np.mean(y - prior_slope * x))
        return (icpt, float(prior_slope)) if icpt >= 0 else (0.0, float(np.mean(y) / mean) if mean else 0.0)
    return max(0.0, float(np.mean(y))), 0.0


def fit_terms(rows, y, floor_s: float = 1.0) -> list[float]:
    """Non-negative least squares on relative errors: coefficients c >= 0 with rows @ c ~ y (rows: one list of
    counts per observation), each observation weighted by 1 / max(y, floor_s), so a job of 100 s weighs no more
    than one of 1 s (the check compares ratios; jobs under floor_s weigh less, their times being mostly noise).
    Each column is scaled to unit norm first, so counts of very different sizes weigh alike."""
    import numpy as np
    from scipy.optimize import nnls

    a, y = np.asarray(rows, dtype=float), np.asarray(y, dtype=float)
    w = 1.0 / np.maximum(y, floor_s)
    a, y = a * w[:, None], y * w
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    c, _ = nnls(a / norm, y)
    return [float(v) for v in c / norm]
