"""Issue 21: a new strategy, metric, data-set kind and order design is ONE file, nothing else edited.

Each toy is written to its own file by the test (as a user would write a module), imported, and then
used through the public path: the scenario accepts it, `pclsim.simulate` runs it, its values are checked
against an independent computation. The registries are restored afterwards.
"""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest
from toy_features import make_tasks

import pclsim
from pclsim.core.metric_registry import METRICS
from pclsim.data.kinds import DATASET_KINDS
from pclsim.study.orders import ORDER_DESIGNS
from pclsim.study.scenario import Run, expand_runs, resolve
from pclsim.study.strategies import STRATEGIES

SC = {"coreset": {"projection": "jl", "projection_dim": 4, "rebalance": "truncate"},
      "model": {"reweighting": "none"}, "dataset": {"tasks": ["T0", "T1", "T2"]}, "memory_sizes": [30]}


@pytest.fixture()
def one_file(tmp_path):
    """load(name, source): write `source` to tmp_path/name.py and import it; registries restored after."""
    saved = [dict(r) for r in (STRATEGIES, METRICS, DATASET_KINDS, ORDER_DESIGNS)]

    def load(name: str, source: str):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    yield load
    for reg, old in zip((STRATEGIES, METRICS, DATASET_KINDS, ORDER_DESIGNS), saved):
        reg.clear()
        reg.update(old)


def test_a_toy_strategy_is_one_file(one_file):
    one_file("latest_only", """
        from pclsim import register_strategy
        from pclsim.study.strategies import BankRef, Strategy

        @register_strategy
        class LatestOnly(Strategy):
            '''One bank of M/2 vectors: the newest task's, the older ones dropped.'''
            name = "latest_half"

            def banks(self, seen):
                return (BankRef("task", (seen[-1],), self.memory_size // 2),)
    """)
    sc = resolve(dict(SC, strategies=["latest_half"], orders=[["T0", "T1", "T2"]]))
    tasks = make_tasks(3)
    ((run, res),) = pclsim.simulate(expand_runs(sc), tasks, sc)
    assert run.strategy == "latest_half" and res.bank_vectors == [15, 15, 15]
    # the same banks as finetune at M = 15 (the newest task's first 15 selected vectors): the same matrices
    ref_sc = resolve(dict(SC, strategies=["finetune"], memory_sizes=[15], orders=[["T0", "T1", "T2"]]))
    ((_, ref),) = pclsim.simulate(expand_runs(ref_sc), tasks, ref_sc)
    for metric, a in ref.matrices.items():
        np.testing.assert_array_equal(res.matrices[metric], a)


def test_a_toy_metric_is_one_file(one_file):
    one_file("recall_at_median", """
        import numpy as np
        from pclsim import register_metric
        from pclsim.core.metric_registry import Metric

        def recall_at_median(labels, scores):
            '''Share of anomalous images scored above the median score.'''
            return float(np.mean(scores[labels == 1] > np.median(scores)))

        register_metric(Metric("image_recall_at_median", "image", "recall at the median",
                               lambda p, n: 0.5, recall_at_median))
    """)
    sc = resolve(dict(SC, strategies=["multi_model"], orders=[["T0", "T1"]], dataset={"tasks": ["T0", "T1"]}))
    tasks = make_tasks(2)
    ((run, res),) = pclsim.simulate(expand_runs(sc), tasks, sc)
    got = res.matrices["image_recall_at_median"]
    # recomputed from the image scores the evaluator gives each (step, task): multi_model scores a seen task
    # with its own bank, an unseen one with the bank task identification picks
    from pclsim.core.metrics import image_auroc
    from pclsim.study.engine import plan_study, prepare_seed, restore_evaluator
    from pclsim.study.strategies import get_strategy

    sp = plan_study([run], sc["coreset"]).seeds[0]
    ev = restore_evaluator(tasks, sp, sc["coreset"], *prepare_seed(tasks, sp, sc["coreset"]), reweighting="none")
    strat = get_strategy("multi_model", 30, "truncate")
    for step in range(2):
        banks = strat.banks(("T0", "T1")[: step + 1])
        for j, name in enumerate(("T0", "T1")):
            sb, ident = strat.scoring(banks, name)
            chosen = ev.route(name, sb, ident)
            scores, _ = ev.scores(name, tuple(sb[c] for c in chosen))
            labels = tasks[name].labels
            assert res.matrices["image_auroc"][step, j] == pytest.approx(image_auroc(labels, scores))
            assert got[step, j] == np.mean(scores[labels == 1] > np.median(scores))


def test_a_toy_dataset_kind_is_one_file(one_file, tmp_path):
    one_file("two_domains", """
        from pclsim import register_dataset_kind
        from pclsim.data import synthetic_stream
        from pclsim.data.kinds import DatasetKind

        def load(dataset, root, tasks):
            by_name = {t.name: t for t in synthetic_stream(["Brain_AD", "Liver_AD"], train=3, test=4, size=32)}
            return list(by_name.values()) if tasks is None else [by_name[name] for name in tasks]

        register_dataset_kind(DatasetKind("two_domains", load, needs_root=False))
    """)
    from pclsim.data import load_stream

    sc = resolve({"dataset": {"kind": "two_domains", "tasks": ["Liver_AD", "Brain_AD"], "image_size": 32},
                  "memory_sizes": [10]})
    assert [t.name for t in load_stream(sc["dataset"], None)] == ["Liver_AD", "Brain_AD"]


def test_a_toy_order_design_is_one_file(one_file):
    one_file("rotations", """
        from pclsim import register_order_design
        from pclsim.study.orders import OrderDesign

        def rotations(tasks, params):
            n = params["rotations"]
            return [tasks[k:] + tasks[:k] for k in range(0, len(tasks), params["every"])][:n]

        register_order_design(OrderDesign("rotations", rotations, lambda p: f"{p['rotations']} rotations",
                                          options={"every": 1}))
    """)
    sc = resolve(dict(SC, strategies=["finetune"], orders={"rotations": 2}))
    assert [r.order for r in expand_runs(sc)] == [("T0", "T1", "T2"), ("T1", "T2", "T0")]
    from pclsim.errors import ScenarioError

    with pytest.raises(ScenarioError, match="key 'orders.evry': unknown option of the rotations design"):
        resolve(dict(SC, strategies=["finetune"], orders={"rotations": 2, "evry": 1}))
    with pytest.raises(ScenarioError, match="key 'orders.rotations': must be >= 1"):
        resolve(dict(SC, strategies=["finetune"], orders={"rotations": 0}))
    assert Run("finetune", 30, 0, ("T1", "T2", "T0")) in expand_runs(sc)
