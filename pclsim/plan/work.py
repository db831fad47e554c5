"""What each stage of a sweep has to do, counted from the scenario's sizes (no feature read, no Ray).

The stages are the sweep's --debug marks: extraction (start -> "features done"), selections, re-reductions
(PatchCoreCL's re-reductions on the bank manager and the joint selections), candidate tables, trials,
summary. Each stage is a list of `Job`s, exactly the jobs the sweep runs (`plan_study` plans them, as
the sweep does): `Job.work` in the stage's unit (UNITS), `Job.memory` the bytes the job holds while it runs
(the formulas that size the sweep's Ray memory requests, `pclsim.runner.memory`), `Job.lane` where it runs.
A time is work x a coefficient measured on a node (pclsim.plan.calibration); nothing here is a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PclsimError
from .jobs import RESULT_BYTES_PER_CELL, Job, StageWork, matrix_cells
from .trials import trial_stage

__all__ = ["STAGES", "UNITS", "FAMILIES", "TaskSize", "Sizes", "Job", "StageWork", "sizes_from_stream",
           "sizes_from_caps", "study_runs", "study_work", "greedy_macs", "greedy_terms", "RESULT_BYTES_PER_CELL",
           "JOB_LINE", "TRIAL_LINE"]

STAGES = ("extraction", "selections", "re-reductions", "candidate tables", "trials", "summary")
# what a stage's makespan is measured in: extraction and summary in work, the others in seconds of their jobs
UNITS = {"extraction": "multiply-adds", "selections": "job seconds", "re-reductions": "job seconds",
         "candidate tables": "job seconds", "trials": "job seconds", "summary": "matrix cells"}
# A job of a family takes sum(coefficient x count) seconds over these counts (coefficients fitted to the jobs'
# measured times, benchmarks/bench_plan.py):
#   greedy (selections, joint selections, re-reduction chains): the job; the greedy steps (points selected); the
#          distance multiply-adds of the plain form (points x steps x distance dimension), apart for selections over
#          at most LAZY_MIN_POINTS points (the plain form on every device) and over more (on a CPU the lazy block
#          form, which skips blocks that cannot hold the farthest point: its rate is the fitted average); the
#          projection's multiply-adds
#   table: the job; the distance multiply-adds (query patches x candidates x D); the list entries written (x K)
#   trial: the trial; its states (metrics computed, each a routing and the image metrics); candidate-list lookups;
#          the reweighting's neighbour-search multiply-adds (test images x bank x D of the bank a task's images are
#          scored with); anomaly-map pixels
FAMILIES = {"greedy": ("job", "steps", "distance_macs", "lazy_distance_macs", "projection_macs"),
            "table": ("job", "distance_macs", "lists"),
            "trial": ("trial", "states", "lookups", "reweight_macs", "pixels", "search_macs")}
# what a sweep prints under --debug for each bank-stage job (pclsim.runner.actors) and each trial
# (pclsim.runner.trials): the measured times the job coefficients are fitted to
JOB_LINE = re.compile(r"job\[(.+?)\] ([\d.]+) s")
TRIAL_LINE = re.compile(r"trial (\S+): \d+ runs, compute ([\d.]+) s, write ([\d.]+) s")


@dataclass(frozen=True)
class TaskSize:
    """Image counts of one task. train: training images extracted (bank images and held-out ones);
    bank: those whose patches the banks draw from; held: held-out images scored like test images
    (dataset.calibration, a `valid` threshold's validation split); masks: pixel labels."""

    name: str
    train: int
    bank: int
    test: int
    held: int = 0
    masks: bool = True

    @property
    def extracted(self) -> int:
        return self.train + self.test

    @property
    def query(self) -> int:
        return self.test + self.held


@dataclass
class Sizes:
    """A study's sizes: per task image counts, the backbone's profile (`pclsim.runner.memory.backbone_profile`:
    grid, dim, macs a image, ...), image size, feature-store bytes a value, extraction batch size, and whether
    the counts were listed from the data (counted) or taken from the scenario's caps."""

    tasks: dict
    profile: dict
    image_size: int
    feature_bytes: int
    batch_size: int
    counted: bool

    @property
    def patches(self) -> int:
        h, w = self.profile["grid"]
        return int(h) * int(w)

    @property
    def dim(self) -> int:
        return int(self.profile["dim"])

    def bank_patches(self, task: str) -> int:
        return self.tasks[task].bank * self.patches

    def source_patches(self, source: tuple) -> int:
        what = source[1]
        return sum(self.bank_patches(t) for t in ([what] if isinstance(what, str) else what))


def _model_numbers(sc: dict) -> tuple[int, int]:
    dt = sc["model"].get("feature_dtype", "float16")
    return (2 if dt == "float16" else 4), int(sc["model"].get("batch_size", 32))


def sizes_from_stream(sc: dict, stream, profile: dict) -> Sizes:
    """Sizes from listed tasks (`pclsim.data.load_stream`: files listed, caps applied, nothing decoded)."""
    fb, batch = _model_numbers(sc)
    tasks = {}
    for t in stream:
        held = int(getattr(t, "n_calibration", 0)) + int(getattr(t, "n_validation", 0))
        tasks[t.name] = TaskSize(t.name, len(t.train), len(t.train) - held, len(t.test), held, bool(t.has_masks))
    return Sizes(tasks, profile, int(sc["dataset"]["image_size"]), fb, batch, True)


def sizes_from_caps(sc: dict, profile: dict) -> Sizes:
    """Sizes assumed from the scenario alone: every task holds dataset.max_train training and dataset.max_test
    test images (a data set may hold fewer). Raises PclsimError naming the key when a cap is not set."""
    from ..data.bmad import MASKED_TASKS
    from ..data.calibration import calibration_count

    ds = sc["dataset"]
    for key in ("max_train", "max_test"):
        if not ds.get(key):
            raise PclsimError(f"dataset.{key}: not set, so the image counts are unknown without the data: give "
                              f"--data-root (or set dataset.max_train and dataset.max_test)")
    if not isinstance(ds.get("tasks"), list):
        raise PclsimError("dataset.tasks: the tasks are found in the data: give --data-root")
    fb, batch = _model_numbers(sc)
    n, m = int(ds["max_train"]), int(ds["max_test"])
    held = calibration_count(n, ds["calibration"]) if ds.get("calibration") else 0
    tasks = {t: TaskSize(t, n, n - held, m, held, t in MASKED_TASKS if ds["kind"] == "bmad" else True)
             for t in ds["tasks"]}
    return Sizes(tasks, profile, int(ds["image_size"]), fb, batch, False)


def study_runs(sc: dict):
    """(runs, groups) the sweep runs: every run, and the Tune trials (`group_runs`). Orders decided by the
    tasks' difficulty are stood in for (the work does not depend on which order comes first)."""
    from ..study.scenario import expand_runs, group_runs, needs_difficulty

    stand_in = {t: 0.0 for t in sc["dataset"]["tasks"]} if needs_difficulty(sc) else None
    runs = expand_runs(sc, difficulty=stand_in)
    return runs, group_runs(runs)


def _projection(coreset: dict, n: int, dim: int) -> tuple[int, int]:
    """(dimension greedy k-center measures distances in, projection dimension or 0) for n points
    (`pclsim.core.coreset.greedy_coreset`: a JL dimension above D runs in its D-dimensional isometric image)."""
    from ..core.coreset import resolve_projection_dim

    if coreset.get("projection", "jl") != "jl":
        return dim, 0
    d, force = resolve_projection_dim(coreset.get("projection_dim", "auto"), max(int(n), 2))
    if d is None or d <= 0 or (d >= dim and not force):
        return dim, 0
    return min(int(d), dim), int(d)


def greedy_terms(n: int, k: int, coreset: dict, dim: int) -> tuple[float, float, float, float]:
    """(steps, distance multiply-adds over at most LAZY_MIN_POINTS points, over more, projection multiply-adds)
    of greedy k-center selecting k of n points: one distance pass over the n projected points a step in the plain
    form (n x k x d, d the dimension distances are measured in; `pclsim.core.coreset.greedy_coreset` runs
    larger selections on a CPU in lazy blocks, which do a data-dependent share of it) and the projection of the
    points (n x D x d, where there is one)."""
    from ..core.coreset import LAZY_MIN_POINTS

    n, k = int(n), min(int(k), int(n))
    if n <= 0 or k <= 0:
        return 0.0, 0.0, 0.0, 0.0
    d, proj = _projection(coreset, n, dim)
    dist = float(n) * k * d
    small = n <= LAZY_MIN_POINTS
    return float(k), dist if small else 0.0, 0.0 if small else dist, float(n) * dim * d if proj else 0.0


def greedy_macs(n: int, k: int, coreset: dict, dim: int) -> float:
    """Multiply-adds of greedy k-center selecting k of n points in the plain form (`greedy_terms`' distances and
    projection)."""
    _, small, large, proj = greedy_terms(n, k, coreset, dim)
    return small + large + proj


def _greedy_job(runs, memory: float, name: str, lane: str = "slot", request: float | None = None) -> Job:
    """A job of greedy k-center runs [(n, k, coreset, dim), ...] (a chain of re-reductions: several)."""
    t = [greedy_terms(*r) for r in runs]
    terms = tuple(sum(x[i] for x in t) for i in range(4))
    return Job(sum(terms[1:]), memory, lane, (1.0, *terms), name, "greedy", request)


def _selection_memory(n: int, dim: int, coreset: dict) -> float:
    from ..runner.memory import selection_memory_bytes

    _, proj = _projection(coreset, n, dim)
    return selection_memory_bytes(int(n), dim, proj or dim)


def _extraction(sc: dict, sz: Sizes) -> StageWork:
    from ..runner.cluster import CHUNK_BATCHES
    from ..runner.memory import extractor_memory_bytes

    per_actor = extractor_memory_bytes(sz.profile, sz.image_size, sz.batch_size)
    chunk = CHUNK_BATCHES * sz.batch_size
    jobs, volumes = [], []
    for t in sz.tasks.values():
        for n in (t.train, t.test):
            for s in range(0, n, chunk):
                m = min(chunk, n - s)
                jobs.append(Job(m * float(sz.profile["macs"]), per_actor, name=f"{t.name} chunk"))
        masks = t.test * sz.image_size ** 2 if t.masks else 0
        volumes.append(t.extracted * sz.patches * sz.dim * sz.feature_bytes + t.test * 8 + masks)
    # a task's chunk files and its assembled entry exist together while it is assembled
    return StageWork("extraction", jobs, float(sum(volumes)), float(max(volumes, default=0)), gpu=True)


def _rereductions(refs, sz: Sizes, coreset: dict) -> tuple[list, float, float]:
    """(greedy runs, largest re-reduction's memory, bank-cache bytes) of one task's re-reduction chains: every
    (arrival, step) of a `rereduced` bank after its arrival re-runs greedy k-center on the stored bank."""
    from ..study.strategies import per_task_size

    links, runs, mem, cache = set(), [], 0.0, 0.0
    for r in refs:
        if r.kind == "rereduced":
            links |= {(r.tasks[0], r.arrival, s, r.budget) for s in range(r.arrival + 1, r.step + 1)}
        cache += r.size * 8
    for task, _, s, m in sorted(links):
        prev = min(per_task_size(m, s), sz.bank_patches(task))
        runs.append((prev, per_task_size(m, s + 1), coreset, sz.dim))
        mem = max(mem, _selection_memory(prev, sz.dim, coreset))
    return runs, mem, cache


def _bank_jobs(sp, sz: Sizes, coreset: dict) -> tuple[list, float]:
    from ..runner.memory import WORKER_BASE_BYTES
    from ..study.engine import job_name

    jobs, cache = [], 0.0
    for refs in sp.bank_jobs:
        kind, tasks = refs[0].kind, refs[0].tasks
        name = job_name(sp.seed, "banks", refs)
        if kind == "joint":  # composable: greedy k-center over the union of the members' selection prefixes
            n = sp.needs.sizes[("joint", tasks, 0)]
            pool = sum(min(n, sp.needs.sizes.get(("select", t, 0), 0), sz.bank_patches(t)) for t in tasks)
            # the sweep asks Ray for a selection over all the members' patches (JobMemory.banks)
            ask = _selection_memory(sum(sz.bank_patches(t) for t in tasks), sz.dim, coreset)
            jobs.append(_greedy_job([(pool, n, coreset, sz.dim)], _selection_memory(pool, sz.dim, coreset), name,
                                    request=ask))
        elif kind == "pool":  # the pooled selection was a selection job: a prefix here
            jobs.append(_greedy_job([], WORKER_BASE_BYTES, name))
        else:
            runs, mem, c = _rereductions(refs, sz, coreset)
            cache += c
            jobs.append(_greedy_job(runs, mem or WORKER_BASE_BYTES, name, lane="manager"))
    return jobs, cache


def _candidates(sp, sz: Sizes, source: tuple) -> int:
    """A source's candidate count: the union of its selections' planned prefixes (at most its patches)."""
    from ..study.banks import selection_source

    want = sum(v for k, v in sp.needs.sizes.items() if k[0] != "joint" and selection_source(k) == source)
    return max(1, min(want, sz.source_patches(source)))


def study_work(sc: dict, sz: Sizes, runs=None, groups=None) -> dict:
    """{stage: StageWork} of a resolved scenario at the sizes `sz` (runs, groups: `study_runs(sc)` by default)."""
    from ..core.candidates import DEFAULT_K
    from ..runner.memory import WORKER_BASE_BYTES, table_memory_bytes
    from ..study.engine import job_name, plan_study
    from ..study.banks import selection_source

    if runs is None:
        runs, groups = study_runs(sc)
    coreset, P, D = sc["coreset"], sz.patches, sz.dim
    plan = plan_study(runs, coreset)
    stages = {"extraction": _extraction(sc, sz)}
    sel, banks, tables = (StageWork("selections", gpu=True), StageWork("re-reductions", gpu=True),
                          StageWork("candidate tables", gpu=True))
    query = sum(t.query for t in sz.tasks.values()) * P
    test = sum(t.test for t in sz.tasks.values()) * P
    k_of, c_of = {}, {}
    for sp in plan.seeds.values():
        for key in sp.selections:
            n = sz.source_patches(selection_source(key))
            k = min(sp.needs.sizes[key], n)
            name = job_name(sp.seed, "selection", key)
            if key[0] == "random":  # a seeded permutation: the job alone
                sel.jobs.append(_greedy_job([], WORKER_BASE_BYTES + n * 8.0, name))
            else:
                sel.jobs.append(_greedy_job([(n, k, coreset, D)], _selection_memory(n, D, coreset), name))
        jobs, cache = _bank_jobs(sp, sz, coreset)
        banks.jobs += jobs
        banks.disk += cache
        for src in sp.sources:
            c = _candidates(sp, sz, src)
            k = min(DEFAULT_K, c)
            k_of[(sp.seed, src)] = k
            c_of[(sp.seed, src)] = c
            macs = float(query) * c * D
            tables.jobs.append(Job(macs, table_memory_bytes(c, D, test, DEFAULT_K, 64 * P, True),
                                   terms=(1.0, macs, float(query) * k), name=job_name(sp.seed, "table", src),
                                   family="table"))
            tables.disk += query * k * 8.0 + c * 8.0
    stages.update({"selections": sel, "re-reductions": banks, "candidate tables": tables})
    stages["trials"] = trial_stage(sc, sz, groups, k_of, c_of)
    cells = sum(matrix_cells(sc, sz, r) for r in runs)
    # the summary's peak is the sweep's processes after the trials (its tables are small): no bytes of its own
    stages["summary"] = StageWork("summary", [Job(float(cells), 0.0, lane="driver", name="summary")],
                                  disk=cells * float(RESULT_BYTES_PER_CELL))
    return stages
