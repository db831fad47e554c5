"""`pclsim plan`'s work model against independent counting: the jobs the sweep runs, their work and disk, and
the trials' lookups against what a real memoized evaluator computes."""

import itertools
import math

import pytest

from pclsim.core.coreset import jl_dim
from pclsim.plan.predict import makespan, stage_memory_bytes
from pclsim.plan.work import Job, Sizes, TaskSize, greedy_macs, study_work
from pclsim.study.scenario import Run, group_runs
from toy_features import make_tasks

CORESET = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}
PROFILE = {"grid": (4, 4), "dim": 8, "macs": 1000, "params": 10, "peak_module_bytes": 100, "levels_bytes": 50}
TASKS = ("A", "B", "C")


def scenario(strategies, memory_sizes, orders, pixel=True, reweighting="paper"):
    return {"name": "t", "strategies": list(strategies), "memory_sizes": list(memory_sizes), "seeds": [0],
            "coreset": dict(CORESET), "model": {"reweighting": reweighting},
            "evaluation": {"pixel_metrics": pixel}, "dataset": {"tasks": list(TASKS)},
            "_orders": [tuple(o) for o in orders]}


def sizes(train=20, test=12, masks=("A",), dim=8, grid=(4, 4), batch=4):
    prof = dict(PROFILE, dim=dim, grid=grid)
    return Sizes({t: TaskSize(t, train, train, test, 0, t in masks) for t in TASKS}, prof, 32, 2, batch, True)


def work_of(sc, sz):
    runs = [Run(s, m, 0, o) for s in sc["strategies"] for m in sc["memory_sizes"] for o in sc["_orders"]]
    return study_work(sc, sz, runs, group_runs(runs)), runs


def d_eff(n, dim):
    return min(jl_dim(n), dim)


def brute_greedy(n, k, dim):
    k = min(k, n)
    return n * k * d_eff(n, dim) + n * dim * d_eff(n, dim)


def test_greedy_macs_is_one_pass_over_the_projected_points_a_step():
    assert greedy_macs(1000, 10, CORESET, 1536) == 1000 * 10 * jl_dim(1000) + 1000 * 1536 * jl_dim(1000)
    # a JL dimension above D runs in the D-dimensional isometric image (projected by a D x D matrix)
    assert greedy_macs(1000, 10, CORESET, 8) == 1000 * 10 * 8 + 1000 * 8 * 8
    assert greedy_macs(1000, 10, dict(CORESET, projection="none"), 8) == 1000 * 10 * 8
    assert greedy_macs(50, 80, CORESET, 8) == greedy_macs(50, 50, CORESET, 8)  # at most every point
    assert greedy_macs(0, 5, CORESET, 8) == 0


@pytest.mark.parametrize("memory", [[40], [40, 120]])
def test_selection_and_bank_work_against_counting_by_hand(memory):
    order = ("A", "B", "C")
    sc = scenario(["multi_model", "finetune", "patchcore_cl", "joint"], memory, [order])
    sz = sizes(train=20)
    P, D = 16, 8
    work, _ = work_of(sc, sz)
    # selections: one per task, as long as the largest bank any strategy takes from it (multi_model: M)
    assert len(work["selections"].jobs) == 3
    assert work["selections"].work == pytest.approx(sum(brute_greedy(20 * P, max(memory), D) for _ in TASKS))
    # re-reductions: every task arriving at a re-reduced at each later step, floor(M/s) -> floor(M/(s+1))
    rered = sum(brute_greedy(m // s, m // (s + 1), D) for m in memory for a in range(3) for s in range(a + 1, 3))
    manager = [j for j in work["re-reductions"].jobs if j.lane == "manager"]
    assert len(manager) == 3 and sum(j.work for j in manager) == pytest.approx(rered)
    # joint: one selection per prefix set of the order at the largest M, from |set| x M members' vectors
    joint = [j for j in work["re-reductions"].jobs if j.lane == "slot"]
    assert len(joint) == 3
    assert sum(j.work for j in joint) == pytest.approx(sum(brute_greedy(i * max(memory), max(memory), D)
                                                           for i in (1, 2, 3)))


def test_extraction_tables_and_disk_against_counting_by_hand():
    sc = scenario(["multi_model"], [50], [("A", "B", "C")])
    sz = sizes(train=10, test=6, batch=2)
    P, D, S = 16, 8, 32
    work, _ = work_of(sc, sz)
    ex = work["extraction"]
    chunk = 4 * 2  # CHUNK_BATCHES batches of 2
    assert len(ex.jobs) == 3 * (math.ceil(10 / chunk) + math.ceil(6 / chunk))
    assert ex.work == 3 * 16 * 1000
    assert ex.disk == 3 * (16 * P * D * 2 + 6 * 8) + 6 * S * S  # float16 features, labels, A's masks
    tb = work["candidate tables"]
    queries = 3 * 6 * P
    assert len(tb.jobs) == 3 and tb.work == 3 * queries * 50 * D
    assert tb.disk == 3 * (queries * min(64, 50) * 8 + 50 * 8)


def test_trials_are_the_groups_and_finetune_looks_up_every_step_and_task():
    sc = scenario(["finetune", "multi_model"], [30, 60], [("A", "B", "C")], pixel=True)
    sz = sizes(train=20, test=12, masks=("A",))
    work, runs = work_of(sc, sz)
    trials = {j.name: j for j in work["trials"].jobs}
    assert set(trials) == set(group_runs(runs))
    ft = trials["finetune-M60-s0-g0"].terms
    # finetune after step s holds the bank of task s: 3 banks x 3 eval tasks, K = 60 candidates
    assert ft[0] == 1 and ft[1] == 9  # one state a step and task
    ft = ft[1:]
    assert ft[1] == 9 * 12 * 16 * 60
    assert ft[2] == 9 * 12 * 60 * 8  # the reweighting: test images x bank x D of the bank each state scores with
    # states: (eval task, bank) per step; the pixels of A's states: 3 steps x 12 images x 32^2
    assert ft[3] == 3 * 12 * 32 * 32


@pytest.mark.parametrize("strategies", [("patchcore_cl",), ("multi_model", "joint"), ("finetune",)])
def test_trial_lookups_equal_what_the_memoized_evaluator_queries(strategies):
    """Independent count: run the groups for real (one evaluator per trial, as the sweep does) and compare the
    evaluator's nearest-neighbour queries with the model's lookups (x K: every source has C >= 64)."""
    from pclsim.study.engine import plan_study, prepare_seed, restore_evaluator, run_group

    tasks = make_tasks(3, seed=1, n_train=20, n_test=6)
    names = tuple(tasks)
    orders = list(itertools.permutations(names))[:3]
    runs = [Run(s, m, 0, o) for s in strategies for m in (90, 150) for o in orders]
    sz = Sizes({n: TaskSize(n, 20, 20, 6, 0, tasks[n].masks is not None) for n in names}, PROFILE, 32, 4, 4, True)
    sc = {"strategies": list(strategies), "coreset": CORESET, "model": {"reweighting": "paper"},
          "evaluation": {"pixel_metrics": True}, "dataset": {"tasks": list(names)}}
    groups = group_runs(runs)
    work = study_work(sc, sz, runs, groups)
    for job in work["trials"].jobs:
        rs = groups[job.name]
        sp = plan_study(rs, CORESET).seeds[0]
        orders_, banks, tables = prepare_seed(tasks, sp, CORESET)
        ev = restore_evaluator(tasks, sp, CORESET, orders_, banks, tables)
        run_group(rs, ev, CORESET)
        assert job.terms[2] == ev.stats["nn_queries"] * 64, job.name
        assert job.terms[1] == ev.stats["evaluations"] - ev.stats["state_hits"], job.name  # distinct states


def test_makespan_is_list_scheduling_and_the_manager_lane_shares_the_cpus():
    jobs = [Job(w, 1.0) for w in (3, 3, 2, 2, 2)]
    assert makespan(jobs, 2, 2) == 7  # 3|3, then 2 -> lane 1 (5), 2 -> lane 2 (5), 2 -> 7
    assert makespan(jobs, 5, 5) == 3
    with_manager = jobs + [Job(10, 1.0, lane="manager")]
    assert makespan(with_manager, 2, 2) == 11  # the manager's 10 alone: 10; all work over 2 CPUs: 22 / 2
    assert makespan([Job(4, 1.0, lane="driver")], 1, 1) == 4


def test_stage_memory_counts_the_jobs_that_run_at_once():
    jobs = [Job(1, m) for m in (5.0, 1.0, 3.0)] + [Job(1, 7.0, lane="manager"), Job(1, 2.0, lane="manager")]
    assert stage_memory_bytes(jobs, 2) == 5 + 3 + 7
    assert stage_memory_bytes(jobs, 1) == 5 + 7


def test_job_names_are_the_sweeps_and_its_timing_lines_parse(capsys):
    """The bank-stage jobs carry engine.job_name, the name the sweep's workers print their time under
    (runner.actors._timed, under --debug), which is what bench_plan fits the job coefficients to."""
    from pclsim.plan.work import JOB_LINE
    from pclsim.runner.actors import _timed
    from pclsim.study.engine import job_name, plan_study

    sc = scenario(["patchcore_cl", "joint"], [40], [("A", "B", "C")])
    work, runs = work_of(sc, sizes())
    sp = plan_study(runs, CORESET).seeds[0]
    assert [j.name for j in work["selections"].jobs] == [job_name(0, "selection", k) for k in sp.selections]
    assert [j.name for j in work["re-reductions"].jobs] == [job_name(0, "banks", r) for r in sp.bank_jobs]
    assert [j.name for j in work["candidate tables"].jobs] == [job_name(0, "table", s) for s in sp.sources]
    assert "s0 banks joint A+B" in {j.name for j in work["re-reductions"].jobs}
    assert _timed("s0 table task A", lambda x: x + 1, 1) == 2
    m = JOB_LINE.search(capsys.readouterr().err)
    assert m.group(1) == "s0 table task A" and float(m.group(2)) >= 0


def test_greedy_jobs_count_steps_and_a_chain_sums_its_links():
    sc = scenario(["patchcore_cl"], [60], [("A", "B", "C")])
    work, _ = work_of(sc, sizes(train=20))
    chains = {j.name: j for j in work["re-reductions"].jobs}
    first = chains["s0 banks task A"]  # arrived first: re-reduced at steps 1 and 2 (60 -> 30 -> 20)
    assert first.family == "greedy" and first.terms[0] == 1 and first.terms[1] == 30 + 20
    assert chains["s0 banks task C"].terms[1] == 0  # arrived last: never re-reduced
    sel = work["selections"].jobs[0]
    assert sel.terms == (1.0, 60.0, 320 * 60 * 8, 0.0, 320 * 8 * 8)  # jl_dim(320) > D = 8; 320 points: plain form


def test_selections_over_many_points_count_apart_as_the_lazy_form():
    from pclsim.core.coreset import LAZY_MIN_POINTS
    from pclsim.plan.work import greedy_terms

    n = LAZY_MIN_POINTS + 1
    steps, small, large, proj = greedy_terms(n, 100, CORESET, 1536)
    assert (steps, small) == (100, 0) and large == n * 100 * jl_dim(n) and proj == n * 1536 * jl_dim(n)
    assert greedy_terms(LAZY_MIN_POINTS, 100, CORESET, 1536)[1] == LAZY_MIN_POINTS * 100 * jl_dim(LAZY_MIN_POINTS)


def test_lanes_follow_the_ray_requests_and_trials_ask_for_a_cpu_only():
    from pclsim.plan.predict import Node, lanes_for
    from pclsim.plan.work import StageWork

    node = Node(cpus=8, gpus=0, memory=10e9, disk=1e12)  # Ray's share: 7 GB
    jobs = [Job(1, 1e9, request=3e9), Job(1, 1e9, request=3e9), Job(1, 1e9, request=3e9)]
    assert lanes_for(StageWork("re-reductions", jobs), node, PROFILE, 32, 4)[0] == 2  # 7 GB // 3 GB
    assert lanes_for(StageWork("trials", jobs), node, PROFILE, 32, 4)[0] == 3  # one a job, no memory request
    huge = [Job(1, 1e9, request=50e9)] * 4  # above the node: Ray caps the request, one at a time
    assert lanes_for(StageWork("selections", huge), node, PROFILE, 32, 4)[0] == 1
    assert lanes_for(StageWork("selections", jobs, gpu=True), Node(8, 1, 100e9, 1e12), PROFILE, 32, 4) == (3, "gpu")
    assert lanes_for(StageWork("trials", jobs), Node(8, 1, 100e9, 1e12), PROFILE, 32, 4) == (3, "cpu")


def test_the_reweighting_term_counts_the_bank_images_are_scored_with():
    """patchcore_cl looks a task up in every bank to route it but reweights in its own (M / (t + 1)); joint holds
    one bank of M. Each distinct (bank, task) once: test images x bank x D."""
    def terms(strategy, reweighting="paper"):
        sc = scenario([strategy], [60], [("A", "B", "C")], reweighting=reweighting)
        work, _ = work_of(sc, sizes(train=20, test=12))
        return work["trials"].jobs[0].terms[1:]  # without the trial's constant

    pc, jt = terms("patchcore_cl"), terms("joint")
    # lookups: K = the source's candidates (A selected 60 on arrival, B 30, C 20); A's banks meet 9 (bank, task)
    # pairs over the steps, B's 6, C's 3; joint: 18 pairs of parts with K = 60
    assert pc[1] == 12 * 16 * (9 * 60 + 6 * 30 + 3 * 20) and jt[1] == 12 * 16 * 18 * 60
    # step s: each task in its own bank of 60 // (s + 1); a task not seen yet in the first bank (as big)
    assert pc[2] == 12 * 8 * sum(3 * (60 // (s + 1)) for s in range(3))
    assert jt[2] == 12 * 8 * 9 * 60
    assert terms("joint", reweighting="none")[2] == 0
