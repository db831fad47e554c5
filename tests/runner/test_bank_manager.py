"""The bank-manager actor: killing it mid-work loses nothing (its re-reductions persist in the cache)."""

import itertools

import numpy as np
import pytest

from toy_features import make_tasks
from pclsim.study.engine import plan_study, run_banks, run_selection
from pclsim.study.scenario import Run

CORESET = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             address="local")
    yield ray
    ray.shutdown()


def test_killed_bank_manager_restarts_and_answers_from_the_cache(ray_local, tmp_path):
    ray = ray_local
    from pclsim.runner.actors import BankManagerActor

    tasks = make_tasks(3, seed=2, n_train=40)
    runs = [Run("patchcore_cl", 60, 0, o) for o in itertools.permutations(tasks)]
    sp = plan_study(runs, CORESET).seeds[0]
    names = list(tasks)
    keys = list(sp.selections)
    orders = {k: run_selection(tasks, sp.needs, CORESET, 0, k) for k in keys}
    feats = [ray.put(tasks[n]) for n in names]
    order_refs = [ray.put(orders[k]) for k in keys]
    manager = BankManagerActor.remote(str(tmp_path), {n: f"key-{n}" for n in names}, CORESET)
    pid0 = ray.get(manager.pid.remote())
    # kill it while its first job is in flight: Ray restarts it and retries the call
    inflight = [manager.rebalance.remote(sp.needs, 0, refs, names, keys, *feats, *order_refs) for refs in sp.bank_jobs]
    ray.kill(manager, no_restart=False)
    got = ray.get(inflight)
    assert ray.get(manager.pid.remote()) != pid0
    for refs, banks in zip(sp.bank_jobs, got):
        want = run_banks(tasks, sp.needs, CORESET, 0, orders, refs)
        assert set(banks) == set(want)
        for ref in want:
            for (s1, i1), (s2, i2) in zip(banks[ref], want[ref]):
                assert s1 == s2
                np.testing.assert_array_equal(i1, i2)
    # every job is now persisted: a second kill, and the new actor recomputes nothing
    assert len(list((tmp_path / "banks").glob("*.pkl"))) == len(sp.bank_jobs)
    ray.kill(manager, no_restart=False)
    again = ray.get([manager.rebalance.remote(sp.needs, 0, refs, names, keys, *feats, *order_refs)
                     for refs in sp.bank_jobs])
    assert ray.get(manager.__ray_call__.remote(lambda self: self.computed)) == 0
    assert [sorted(map(repr, g)) for g in again] == [sorted(map(repr, g)) for g in got]
