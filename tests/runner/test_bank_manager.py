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


def test_persisted_rebalancing_is_keyed_by_version_and_selections_and_fresh_skips_it(ray_local, tmp_path):
    """Issue 26: a release that selects differently never reuses old re-reductions; --fresh reads none."""
    ray = ray_local
    from pclsim.runner.actors import BankManagerActor

    tasks = make_tasks(3, seed=3, n_train=40)
    runs = [Run("patchcore_cl", 60, 0, o) for o in itertools.permutations(tasks)]
    sp = plan_study(runs, CORESET).seeds[0]
    names, keys = list(tasks), list(sp.selections)
    orders = [run_selection(tasks, sp.needs, CORESET, 0, k) for k in keys]
    feats = [ray.put(tasks[n]) for n in names]
    fkeys = {n: f"key-{n}" for n in names}

    def run(manager, ords):
        out = ray.get([manager.rebalance.remote(sp.needs, 0, refs, names, keys, *feats, *ords)
                       for refs in sp.bank_jobs])
        return out, ray.get(manager.__ray_call__.remote(lambda self: self.computed))

    first, n = run(BankManagerActor.remote(str(tmp_path), fkeys, CORESET), orders)
    assert n == len(sp.bank_jobs)
    _, n = run(BankManagerActor.remote(str(tmp_path), fkeys, CORESET), orders)
    assert n == 0  # answered from the cache
    fresh, n = run(BankManagerActor.remote(str(tmp_path), fkeys, CORESET, False), orders)
    assert n == len(sp.bank_jobs)  # --fresh: recomputed, the same banks
    assert [sorted(map(repr, g)) for g in fresh] == [sorted(map(repr, g)) for g in first]
    # other input selections (a release that selects differently): other files, recomputed
    changed = [o.copy() for o in orders]
    changed[0][[0, 1]] = changed[0][[1, 0]]
    _, n = run(BankManagerActor.remote(str(tmp_path), fkeys, CORESET), changed)
    assert n == len(sp.bank_jobs)
    # another pclsim version: another file for the same inputs
    m = BankManagerActor.remote(str(tmp_path), fkeys, CORESET)
    refs = sp.bank_jobs[0]

    def path_under(version):
        def f(self):
            import sys

            sys.modules["pclsim._version"].__version__ = version
            return str(self._path(0, refs, orders))
        return ray.get(m.__ray_call__.remote(f))

    assert path_under("0.3.0") != path_under("9.9.9")
