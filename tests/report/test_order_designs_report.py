"""Issue 23: the report shows order designs: the balance (task x position counts), the stopping history of
sample: auto and the search's progress against uniform sampling, from design.parquet."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from pclsim.report.order_designs import balance_table, design_section, stopping_table
from pclsim.results.tables import write_table
from pclsim.study.adaptive import replay
from pclsim.study.orders import balanced_orders
from tests.study.test_adaptive_orders import TASKS, Planted, sc_of


def test_balance_table_counts_task_positions():
    bal = balance_table([" > ".join(o) for o in balanced_orders(TASKS, 12, seed=4)])
    assert bal.shape == (6, 6) and (bal.to_numpy() == 2).all()
    skew = balance_table([("A", "B", "C"), ("A", "C", "B"), ("B", "A", "C")])
    assert skew.loc["A"].tolist() == [2, 1, 0] and skew.loc["C"].tolist() == [0, 1, 2]
    assert balance_table([("A", "B"), ("A", "B", "C")]).empty


def _design(tmp_path):
    plan = replay(sc_of([{"sample": "auto", "precision": 0.01, "max": 36},
                         {"search": "worst", "budget": 18, "batch": 6}]), Planted(seed=2, scale=0.2))
    df = pd.DataFrame(plan.log)
    write_table(df, tmp_path, "design")
    return plan, df


def test_stopping_table_is_the_checks_round_by_round(tmp_path):
    plan, df = _design(tmp_path)
    st = stopping_table(df)
    n_rounds = df[(df.design == "sample_auto") & (df.kind == "check")]["round"].nunique()
    assert list(st.index) == [f"round {k}" for k in range(n_rounds)]
    assert st["orders"].tolist() == [6 * (k + 1) for k in range(n_rounds)]
    last = df[(df.design == "sample_auto") & (df.kind == "check") & (df.quantity == "final_mean")].iloc[-1]
    assert st.iloc[-1]["patchcore_cl M=100: mean ± 95 % half-width"] == f"{last.value:.3f} ± {last.ci_half_width:.4f}"


def test_design_section_shows_balance_stops_and_search(tmp_path):
    plan, df = _design(tmp_path)
    d = SimpleNamespace(root=tmp_path, summary=pd.DataFrame({"order": [" > ".join(o) for o in plan.orders]}))
    html, figs = design_section(d, tmp_path)
    assert "Order designs" in html and "equally often at every step" in html  # sample: auto's batches balance
    assert "round 0" in html and "precision reached" in html
    assert "uniform worst" in html and "search: most extreme (worst) order found" in html
    assert [name for name, _ in figs] == ["order_search.png"] and (tmp_path / "order_search.png").stat().st_size
    found = df[(df.kind == "result") & (df.role == "search")].iloc[0]
    own = df[(df.design == "search") & (df.kind == "order") & (df.role == "search")]
    assert found.value == own.value.min() and found.order.replace(">", "&gt;") in html
    assert np.isclose(own.value.min(), Planted(seed=2, scale=0.2).values[tuple(found.order.split(" > "))])
