"""The method's headline behaviour on the real pipeline: synthetic stream, bundled backbone.

Finetune forgets far more than PatchCoreCL; PatchCoreCL stays close to joint; multi_model is the
upper bound; bank MB is vectors x D x 4 / 1e6. Small images keep it to seconds.
"""

import itertools

import numpy as np
import pytest

from pclsim import metrics as M
from pclsim.store.cache import load_or_extract
from pclsim.data import synthetic_stream
from pclsim.study.engine import simulate
from pclsim.core.features import FeatureExtractor
from pclsim.study.scenario import Run, resolve


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    names = ("Brain_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD")
    stream = synthetic_stream(names, train=16, test=24, size=112, seed=0)
    ex = FeatureExtractor(image_size=112, device="cpu", batch_size=16)
    tasks = {t.name: load_or_extract(t, ex, cache_root=tmp_path_factory.mktemp("cache"), workers=1) for t in stream}
    sc = resolve({"memory_sizes": [1600]})
    orders = list(itertools.permutations(names))[::6]  # 4 orders, each task first once
    runs = [Run(s, 1600, 0, o) for s in ("patchcore_cl", "finetune", "joint", "multi_model") for o in orders]
    return {(r.strategy, r.order): res for r, res in simulate(runs, tasks, sc, device="cpu")}, orders, ex.dim


def test_finetune_forgets_patchcore_cl_does_not(results):
    res, orders, _ = results
    ft = np.mean([M.average_forgetting(res[("finetune", o)].matrices["image_auroc"]) for o in orders])
    cl = np.mean([M.average_forgetting(res[("patchcore_cl", o)].matrices["image_auroc"]) for o in orders])
    assert ft > 20 and ft > cl + 15, (ft, cl)


def test_patchcore_cl_close_to_joint_and_below_multi_model(results):
    res, orders, _ = results
    final = {s: np.mean([M.final_mean(res[(s, o)].matrices["image_auroc"]) for o in orders])
             for s in ("patchcore_cl", "joint", "multi_model", "finetune")}
    # 24 test images per task at 112 px: AUROC moves in steps of ~0.007, hence the loose band
    assert final["patchcore_cl"] >= final["joint"] - 0.08, final
    assert final["multi_model"] >= final["patchcore_cl"] - 0.01, final
    assert final["finetune"] < final["patchcore_cl"], final
    ident = np.mean([res[("patchcore_cl", o)].matrices["task_id_acc"][-1].mean() for o in orders])
    assert ident > 0.9  # the domains are told apart


def test_bank_sizes(results):
    res, orders, dim = results
    o = orders[0]
    assert res[("patchcore_cl", o)].bank_vectors == [1600, 1600, 1599, 1600]  # 3 x floor(1600 / 3) = 1599
    assert res[("multi_model", o)].bank_vectors == [1600, 3200, 4800, 6400]
    assert res[("joint", o)].bank_vectors == [1600] * 4 and res[("finetune", o)].bank_vectors == [1600] * 4
    assert dim == 152 and M.memory_mb(1600, dim) == pytest.approx(1600 * 152 * 4 / 1e6)
