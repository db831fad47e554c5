"""Work -> seconds, peak memory and disk per stage on a node, and what will not fit there.

A stage's jobs run in parallel up to its lanes: extraction on one extractor per GPU (else per CPU) as many as
the node's memory holds (`extractor_pool_size`); selection, joint and table jobs on one CPU each (a quarter
GPU each where there are GPUs: up to 4 a GPU), as many as their Ray memory requests fit in Ray's share of the
memory (RAY_MEMORY_SHARE); the bank manager's
re-reductions one after another beside them; trials one per CPU; the summary in the sweep's own process.
Jobs are handed out in the sweep's order to the first free lane (list scheduling), so a stage's makespan
is that schedule's length, at least its total work over the CPUs. Time = intercept + per-unit coefficient x
makespan; peak memory = intercept + slope x (the bytes of as many of its largest jobs as run at once).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .work import FAMILIES, STAGES, StageWork

__all__ = ["Node", "StagePlan", "Plan", "make_plan", "makespan", "stage_memory_bytes", "lanes_for", "job_seconds",
           "bank_size_problems", "RAY_MEMORY_SHARE", "GB"]

GB = 1e9
# Ray's `memory` resource on a node: what is left after its object store (30 % of the memory by default)
RAY_MEMORY_SHARE = 0.7
_JOBS_PER_GPU = 4  # selection / bank / table jobs ask for num_gpus=0.25 (pclsim.runner.cluster)


@dataclass
class Node:
    """The node a plan is for: CPUs, GPUs, memory (bytes available to the sweep) and disk (bytes free in the
    cache folder `disk_path`, where the feature store and the candidate tables go)."""

    cpus: int
    gpus: int
    memory: float
    disk: float
    disk_path: str = ""


@dataclass
class StagePlan:
    """One stage's prediction: jobs, lanes (how many run at once), device, seconds (None: not calibrated for
    that device), peak (bytes of memory, the process tree), disk (bytes it leaves), work (multiply-adds; trials:
    candidate-list lookups; summary: matrix cells), transient (extra bytes on disk while it runs)."""

    name: str
    jobs: int
    lanes: int
    device: str
    seconds: float | None
    peak: float
    disk: float
    work: float
    transient: float = 0.0


@dataclass
class Plan:
    """A study's plan on a node: per stage predictions, the problems that keep it from fitting (`will not fit`
    lines), notes (assumptions), and what it was computed from."""

    scenario: str
    node: Node
    stages: list
    runs: int
    trials: int
    tasks: dict
    patches: int
    dim: int
    counted: bool
    calibration: dict
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def seconds(self) -> float | None:
        secs = [s.seconds for s in self.stages]
        return None if any(s is None for s in secs) else float(sum(secs))

    @property
    def peak_memory(self) -> float:
        return max(s.peak for s in self.stages)

    @property
    def disk(self) -> float:
        """Bytes on disk at the sweep's peak: everything it leaves plus the largest stage's transient files."""
        return sum(s.disk for s in self.stages) + max(s.transient for s in self.stages)

    def as_json(self) -> dict:
        return {"scenario": self.scenario, "fits": self.fits, "problems": self.problems, "notes": self.notes,
                "node": vars(self.node), "runs": self.runs, "trials": self.trials, "counted": self.counted,
                "tasks": {n: vars(t) for n, t in self.tasks.items()}, "patches": self.patches, "dim": self.dim,
                "stages": [vars(s) for s in self.stages], "seconds": self.seconds, "peak_memory": self.peak_memory,
                "disk": self.disk, "calibration": self.calibration}

    def text(self) -> str:
        from .render import plan_text

        return plan_text(self)


def makespan(jobs, lanes: int, cpus: int) -> float:
    """Length of the stage's schedule in work units: slot jobs in order to the first free of `lanes` lanes; the
    bank manager's jobs one after another; the driver's in the driver. At least the slot and manager work
    together over the CPUs (the manager reserves no CPU: it shares them)."""
    free = [0.0] * max(1, int(lanes))
    slot = manager = driver = 0.0
    for j in jobs:
        if j.lane == "manager":
            manager += j.work
        elif j.lane == "driver":
            driver += j.work
        else:
            t = heapq.heappop(free) + j.work
            heapq.heappush(free, t)
            slot += j.work
    return max(max(free), manager, driver, (slot + manager) / max(1, int(cpus)))


def stage_memory_bytes(jobs, lanes: int) -> float:
    """Bytes the stage's jobs hold at once at most: its `lanes` largest slot jobs, the manager's and the
    driver's largest."""
    slot = sorted((j.memory for j in jobs if j.lane == "slot"), reverse=True)[: max(1, int(lanes))]
    other = [max((j.memory for j in jobs if j.lane == lane), default=0.0) for lane in ("manager", "driver")]
    return float(sum(slot) + sum(other))


def lanes_for(stage: StageWork, node: Node, profile: dict, image_size: int, batch: int) -> tuple[int, str]:
    """(jobs at once, device) of a stage on a node (see the module docstring)."""
    from ..runner.memory import extractor_memory_bytes, extractor_pool_size

    gpu = bool(node.gpus) and stage.gpu
    ray_memory = node.memory * RAY_MEMORY_SHARE
    if stage.name == "extraction":
        per = extractor_memory_bytes(profile, image_size, batch, on_gpu=gpu)
        return extractor_pool_size(node.gpus if gpu else node.cpus, ray_memory, per), "gpu" if gpu else "cpu"
    if stage.name == "summary":
        return 1, "cpu"
    slots = min(node.cpus, _JOBS_PER_GPU * node.gpus) if gpu else node.cpus
    # Ray starts as many as their memory requests fit in (a request above the node's is capped at it); Tune's
    # trials ask for a CPU only
    biggest = max((j.request or j.memory for j in stage.jobs if j.lane == "slot"), default=0.0)
    if biggest > 0 and stage.name != "trials":
        slots = min(slots, max(1, int(ray_memory // min(biggest, ray_memory))))
    n = sum(1 for j in stage.jobs if j.lane == "slot")
    return max(1, min(slots, n or 1)), "gpu" if gpu else "cpu"


def job_seconds(stage: StageWork, families: dict) -> StageWork:
    """The stage with the work of its family jobs set to their predicted seconds (coefficients x counts,
    pclsim.plan.work.FAMILIES); other jobs keep their work."""
    from dataclasses import replace

    def secs(j):
        if j.family is None:
            return j
        c = families[j.family]
        return replace(j, work=sum(c[t] * v for t, v in zip(FAMILIES[j.family], j.terms)))

    return replace(stage, jobs=[secs(j) for j in stage.jobs])


def bank_size_problems(sc: dict, sizes) -> list[str]:
    """`will not fit` lines for every (strategy, memory size) whose banks need more training patches than a task
    has (the preflight's check, `pclsim.study.preflight.check_memory`, once per pair so that all are named)."""
    from types import SimpleNamespace

    from ..errors import PclsimError
    from ..study.preflight import check_memory

    tasks = [SimpleNamespace(name=t.name, train=range(t.train), n_calibration=t.train - t.bank, n_validation=0)
             for t in sizes.tasks.values()]
    grid = tuple(sizes.profile["grid"])
    out = []
    for strategy in sc["strategies"]:
        for m in sc["memory_sizes"]:
            try:
                check_memory(dict(sc, strategies=[strategy], memory_sizes=[m]), tasks, grid)
            except PclsimError as e:
                out.append(str(e))
    return out


def make_plan(sc: dict, sizes, calibration, node: Node, runs=None, groups=None) -> Plan:
    """The plan of a resolved scenario at `sizes` (pclsim.plan.work.Sizes) on `node` with `calibration`."""
    from .work import study_runs, study_work

    if runs is None:
        runs, groups = study_runs(sc)
    work = study_work(sc, sizes, runs, groups)
    stages, notes = [], []
    for name in STAGES:
        st = work[name]
        lanes, device = lanes_for(st, node, sizes.profile, sizes.image_size, sizes.batch_size)
        coef = calibration.time.get("gpu" if node.gpus else "cpu") or (calibration.time.get("cpu")
                                                                        if device == "cpu" else None)
        if coef:
            st = job_seconds(st, coef["families"])
        span = makespan(st.jobs, lanes, node.cpus)
        seconds = coef[name]["intercept_s"] + coef[name]["per_unit_s"] * span if coef else None
        mem = calibration.memory[name]
        peak = mem["intercept_bytes"] + mem["slope"] * stage_memory_bytes(st.jobs, lanes)
        stages.append(StagePlan(name, len(st.jobs), lanes, device, seconds, peak, st.disk, work[name].work,
                                st.transient))
    if any(s.seconds is None for s in stages):
        notes.append(f"GPU times are not calibrated (the calibration holds {', '.join(calibration.devices())} "
                     "coefficients only): the GPU stages' times are left out; run benchmarks/bench_plan.py "
                     "--calibrate on a GPU node")
    from ..study.adaptive import is_adaptive

    if is_adaptive(sc):
        notes.append("the orders are decided in rounds from results (an adaptive design): this plan counts the "
                     "runs of the first round only; later rounds add trials and, for new orders, bank jobs")
    if not sizes.counted:
        notes.append("image counts assumed from dataset.max_train / max_test (every task that large); "
                     "--data-root counts the files")
    plan = Plan(sc["name"], node, stages, len(runs), len(groups), sizes.tasks, sizes.patches, sizes.dim,
                sizes.counted, {"path": calibration.path, **calibration.node,
                 **{k: calibration.measured.get(k) for k in ("date", "sizes", "test")}}, notes=notes)
    plan.problems += [f"memory size: {p}" for p in bank_size_problems(sc, sizes)]
    top = max(stages, key=lambda s: s.peak)
    if top.peak > node.memory:
        plan.problems.append(f"memory: stage {top.name} needs about {top.peak / GB:.1f} GB at its peak, the node "
                             f"has {node.memory / GB:.1f} GB (--memory)")
    if plan.disk > node.disk:
        store = work["extraction"].disk + work["extraction"].transient
        plan.problems.append(f"disk: the feature store ({store / GB:.1f} GB at its peak) and candidate tables "
                             f"({work['candidate tables'].disk / GB:.1f} GB) need {plan.disk / GB:.1f} GB in "
                             f"{node.disk_path or 'the cache folder'}, {node.disk / GB:.1f} GB free (--disk)")
    return plan

