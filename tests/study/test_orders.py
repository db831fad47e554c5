"""Order generators: easy_to_hard / hard_to_easy from measured difficulty, and what `validate` says about orders."""

import subprocess
import sys

import pytest
import yaml

from pclsim.errors import ScenarioError
from pclsim.study.scenario import describe_orders, expand_runs, load_scenario


def write(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return p


def test_difficulty_orders_sort_by_measured_auroc(tmp_path):
    """easy_to_hard puts the highest single-task AUROC first; hard_to_easy is its reverse; ties keep the
    scenario's task order; the runs cannot be expanded before the difficulty is known."""
    from pclsim.study.scenario import needs_difficulty

    tasks = ["A", "B", "C", "D"]
    sc = load_scenario(write(tmp_path, {"dataset": {"tasks": tasks}, "orders": "easy_to_hard",
                                        "strategies": ["patchcore_cl"], "memory_sizes": [10]}))
    assert needs_difficulty(sc)
    with pytest.raises(ScenarioError, match="difficulty"):
        expand_runs(sc)
    diff = {"A": 0.7, "B": 0.95, "C": 0.7, "D": 0.8}
    assert [r.order for r in expand_runs(sc, diff)] == [("B", "D", "A", "C")]  # A before C: scenario order
    sc2 = load_scenario(write(tmp_path, {"dataset": {"tasks": tasks}, "strategies": ["joint"], "memory_sizes": [10],
                                         "orders": ["easy_to_hard", "hard_to_easy", ["B", "D", "A", "C"]],
                                         "seeds": [0, 1]}, name="b.yaml"))
    runs = expand_runs(sc2, diff)
    # the explicit list equals easy_to_hard: run once per seed
    assert [r.order for r in runs if r.seed == 1] == [("B", "D", "A", "C"), ("C", "A", "D", "B")]
    with pytest.raises(ScenarioError, match="missing for C"):
        expand_runs(sc2, {"A": 0.7, "B": 0.9, "D": 0.8})
    with pytest.raises(ScenarioError, match="missing for A"):
        expand_runs(sc2, {"A": float("nan"), "B": 0.9, "C": 0.8, "D": 0.8})
    plain = load_scenario(write(tmp_path, {"dataset": {"tasks": tasks}, "orders": [["A", "B"]],
                                           "memory_sizes": [10]}, name="c.yaml"))
    assert not needs_difficulty(plain) and expand_runs(plain, diff) == expand_runs(plain)


@pytest.mark.parametrize("orders,key", [
    (["easy_to_hardd"], "orders[0]"),
    ("hardest_first", "orders"),
])
def test_bad_order_keyword_names_the_key(tmp_path, orders, key):
    with pytest.raises(ScenarioError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(write(tmp_path, {"dataset": {"tasks": ["A", "B"]}, "orders": orders, "memory_sizes": [10]}))


def test_difficulty_orders_need_memory_for_every_task(tmp_path):
    with pytest.raises(ScenarioError, match="memory_sizes"):
        load_scenario(write(tmp_path, {"dataset": {"tasks": ["A", "B", "C"]}, "orders": "hard_to_easy",
                                       "memory_sizes": [2]}))


def _validate(path):
    return subprocess.run([sys.executable, "-m", "pclsim.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=300)


def test_validate_says_how_many_orders_and_runs_and_who_decides(tmp_path):
    base = {"dataset": {"tasks": ["Brain_AD", "Liver_AD", "Chest_AD"], "image_size": 64,
                        "synthetic": {"train": 2, "test": 2}},
            "strategies": ["patchcore_cl", "joint"], "memory_sizes": [30, 90], "seeds": [0, 1]}
    r = _validate(write(tmp_path, dict(base, orders=["easy_to_hard", "hard_to_easy"])))
    assert r.returncode == 0, r.stderr
    assert "orders: 2 " in r.stdout and "runs: 16 " in r.stdout  # 2 orders x 2 strategies x 2 sizes x 2 seeds
    assert "measured difficulty" in r.stdout and "M=90" in r.stdout
    r = _validate(write(tmp_path, dict(base, orders={"sample": 4, "seed": 1}), name="b.yaml"))
    assert r.returncode == 0, r.stderr
    assert "orders: 4 " in r.stdout and "runs: 32 " in r.stdout and "seeded sample" in r.stdout
    assert "difficulty" not in r.stdout


def test_describe_orders_counts_match_the_expansion(tmp_path):
    for orders in ("all", {"sample": 5, "seed": 2}, [["A", "B", "C"], ["C", "B", "A"]]):
        sc = load_scenario(write(tmp_path, {"dataset": {"tasks": ["A", "B", "C"]}, "orders": orders,
                                            "memory_sizes": [10]}))
        n, _ = describe_orders(sc)
        assert n == len({r.order for r in expand_runs(sc)})


def test_sweep_orders_easy_to_hard_by_the_measured_difficulty(tmp_path):
    """End to end through Ray: the order is decided by each task's single-task image AUROC, which is
    recorded in tasks.parquet and equals multi_model's own-bank value at the largest M."""
    import os

    import pandas as pd

    body = {"name": "e2h", "dataset": {"kind": "synthetic", "tasks": ["Brain_AD", "Liver_AD", "Chest_AD"],
                                       "image_size": 64, "synthetic": {"train": 6, "test": 8, "seed": 0}},
            "orders": ["easy_to_hard", "hard_to_easy"], "strategies": ["multi_model"], "memory_sizes": [90],
            "seeds": [0]}
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ADDRESS="", PCLSIM_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(write(tmp_path, body)), "--out", str(out),
                        "--quiet"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = pd.read_parquet(out / "tasks.parquet").set_index("task")
    diff = tasks["difficulty_image_auroc"].to_dict()
    easy = tuple(sorted(diff, key=lambda t: (-diff[t], body["dataset"]["tasks"].index(t))))
    m = pd.read_parquet(out / "matrices.parquet")
    assert set(m.order) == {" > ".join(easy), " > ".join(reversed(easy))}
    assert tasks.loc[easy[0], "difficulty_rank"] == 1
    own = m[(m.metric == "image_auroc") & (m.step == 2) & (m.order == " > ".join(easy))].set_index("eval_task").value
    assert own.to_dict() == pytest.approx(diff)  # multi_model's final value on a task is its single-task value
    st = pd.read_parquet(out / "statistics.parquet")
    d = st[st.statistic == "difficulty"].set_index("task").value
    assert d.to_dict() == pytest.approx(diff)
