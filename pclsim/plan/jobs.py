"""pclsim plan's units of work: a stage's jobs (`Job`, `StageWork`) and what a run writes (`matrix_cells`).

Imports: nothing of pclsim (pclsim.plan.work and pclsim.plan.trials build on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Job", "StageWork", "matrix_cells", "RESULT_BYTES_PER_CELL"]

RESULT_BYTES_PER_CELL = 64  # Parquet bytes of one matrix cell (all tables of a results folder, compressed)


@dataclass(frozen=True)
class Job:
    """One job of a stage: work (multiply-adds, or the stage's unit), memory (bytes while it runs), lane ("slot":
    one CPU or GPU share, "manager": the bank manager's one serial lane, "driver": the sweep's own process),
    family and terms (its FAMILIES counts: its time is coefficients x terms), name (`engine.job_name`, a trial's
    group), request (the Ray memory request that decides how many run at once, where it differs from memory)."""

    work: float
    memory: float
    lane: str = "slot"
    terms: tuple = ()
    name: str = ""
    family: str | None = None
    request: float | None = None


@dataclass
class StageWork:
    """A stage's jobs, the bytes it leaves on disk (disk), the extra bytes on disk while it runs (transient),
    and whether its jobs run on GPUs where the node has them (gpu)."""

    name: str
    jobs: list = field(default_factory=list)
    disk: float = 0.0
    transient: float = 0.0
    gpu: bool = False

    @property
    def work(self) -> float:
        return float(sum(j.work for j in self.jobs))


def matrix_cells(sc: dict, sz, run) -> int:
    """Matrix cells a run writes: T x T per metric (image metrics, task_id_acc where the strategy routes, the pixel
    metrics of tasks with masks)."""
    T = len(run.order)
    pixel = 5 if sc["evaluation"].get("pixel_metrics", True) else 0
    masked = sum(1 for t in run.order if sz.tasks[t].masks)
    return T * T * 3 + T * masked * pixel
