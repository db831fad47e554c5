"""Parquet tables and the summary, checked against the matrices they come from."""

import itertools

import numpy as np
import pandas as pd
import pytest

from toy_features import make_tasks
from pclsim import metrics as metric_fns
from pclsim.study.engine import simulate
from pclsim.analysis.summary import build_summary
from pclsim.results.tables import (MATRIX_SCHEMA, STEPS_SCHEMA, SUMMARY_COLUMNS, atomic_write_table,
                            read_table, rows_table, steps_table)
from pclsim.study.scenario import Run

SC = {"coreset": {"projection": "jl", "projection_dim": 4, "joint": "composable"},
      "model": {"reweighting": "paper"}, "evaluation": {"pixel_metrics": True}}


@pytest.fixture(scope="module")
def pairs():
    tasks = make_tasks(3, seed=5)
    orders = list(itertools.permutations(tasks))[:3]
    runs = [Run(s, 45, 0, o) for s in ("patchcore_cl", "joint", "finetune") for o in orders]
    return simulate(runs, tasks, SC, device="cpu")


def test_matrix_rows_hold_every_cell(pairs, tmp_path):
    t = rows_table(pairs)
    assert t.schema == MATRIX_SCHEMA
    atomic_write_table(t, tmp_path / "matrices.parquet" / "part-a.parquet")
    df = pd.read_parquet(tmp_path / "matrices.parquet")
    assert not list(tmp_path.joinpath("matrices.parquet").glob(".tmp-*"))
    one = df[(df.run_id == pairs[0][0].run_id) & (df.metric == "image_auroc")]
    assert len(one) == 9  # 3 steps x 3 evaluated tasks, seen or not
    pix = df[(df.run_id == pairs[0][0].run_id) & (df.metric == "pixel_auroc")]
    assert set(pix.eval_task) == {"T0"}  # only the task with masks
    run, res = pairs[0]
    mat = res.matrices["image_auroc"]
    for row in one.itertuples():
        assert row.value == mat[row.step, run.order.index(row.eval_task)]
        assert row.train_task == run.order[row.step] and row.order == " > ".join(run.order)


def test_summary_equals_metrics_of_each_matrix(pairs):
    df = rows_table(pairs).to_pandas()
    steps = steps_table(pairs, dim=8).to_pandas()
    base = {(t, m): 0.5 for t in ("T0", "T1", "T2") for m in df.metric.unique()}
    s = build_summary(df, steps, base, arch_mb=12.5)
    assert list(s.columns) == SUMMARY_COLUMNS
    by = {(r.run_id, r.metric): r for r in s.itertuples()}
    finals = {}
    for run, res in pairs:
        a = res.matrices["image_f1"]
        r = by[(run.run_id, "image_f1")]
        assert r.final_mean == pytest.approx(metric_fns.final_mean(a))
        assert r.avg_forgetting_pct == pytest.approx(metric_fns.average_forgetting(a))
        assert r.avg_forgetting_paper_pct == pytest.approx(metric_fns.average_forgetting(a, paper_compatible=True))
        assert r.bwt == pytest.approx(metric_fns.bwt(a))
        assert r.fwt == pytest.approx(metric_fns.fwt(a, np.full(3, 0.5)))
        assert r.bank_mb == pytest.approx(metric_fns.memory_mb(res.bank_vectors[-1], 8))
        finals[(run.strategy, run.order)] = metric_fns.final_mean(a)
    for run, res in pairs:
        gap = by[(run.run_id, "image_f1")].relative_gap
        if run.strategy == "joint":
            assert np.isnan(gap)
        else:
            assert gap == pytest.approx(finals[("joint", run.order)] - finals[(run.strategy, run.order)])


def test_steps_table_bank_sizes(pairs):
    table = steps_table(pairs, dim=8)
    assert table.schema == STEPS_SCHEMA
    st = table.to_pandas()
    cl = st[st.run_id == next(r.run_id for r, _ in pairs if r.strategy == "patchcore_cl")]
    assert cl.bank_vectors.tolist() == [45, 44, 45]  # floor(45/1), 2*floor(45/2), 3*floor(45/3)
    assert cl.bank_mb.tolist() == pytest.approx([n * 8 * 4 / 1e6 for n in (45, 44, 45)])


def test_old_trial_id_column_is_read_as_run_id(pairs, tmp_path):
    """0.1.0 folders name the run column trial_id: read_table and build_summary accept it."""
    new = rows_table(pairs)
    old = new.rename_columns(["trial_id" if c == "run_id" else c for c in new.column_names])
    atomic_write_table(old, tmp_path / "matrices.parquet" / "part-x.parquet")
    df = read_table(tmp_path / "matrices.parquet")
    assert "trial_id" not in df.columns
    pd.testing.assert_frame_equal(df, new.to_pandas())
    sub = read_table(tmp_path / "matrices.parquet", columns=["run_id", "value"])
    assert list(sub.columns) == ["run_id", "value"] and sub.run_id.tolist() == df.run_id.tolist()
    steps = steps_table(pairs, dim=8).to_pandas()
    base = {(t, m): 0.5 for t in ("T0", "T1", "T2") for m in df.metric.unique()}
    want = build_summary(new.to_pandas(), steps, base, arch_mb=1.0)
    got = build_summary(old.to_pandas(), steps.rename(columns={"run_id": "trial_id"}), base, arch_mb=1.0)
    pd.testing.assert_frame_equal(want, got)
    assert pairs[0][0].trial_id == pairs[0][0].run_id  # the deprecated alias
