"""Scenario validation, defaults and expansion into runs and Tune groups."""

import math

import pytest
import yaml

from pclsim.errors import ScenarioError
from pclsim.study.scenario import expand_runs, group_runs, load_scenario, resolve, scenario_hash


def write(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return p


def test_defaults_fill_everything(tmp_path):
    sc = load_scenario(write(tmp_path, {"name": "x"}))
    assert sc["dataset"]["kind"] == "synthetic" and sc["model"]["backbone"] == "efficientnet_lite0"
    assert sc["memory_sizes"] == [1000, 3000] and sc["coreset"]["rebalance"] == "authors" and sc["coreset"]["projection_dim"] == "auto"
    runs = expand_runs(sc)
    assert len(runs) == math.factorial(6) * 4 * 2
    assert len({r.trial_id for r in runs}) == len(runs)
    groups = group_runs(runs)
    assert len(groups) == 8 and sum(len(g) for g in groups.values()) == len(runs)


def test_the_shipped_scenarios_validate():
    for name in ("orders", "smoke", "paper_table1"):
        sc = load_scenario(f"scenarios/{name}.yaml")
        assert sc["name"] == name
    orders = load_scenario("scenarios/orders.yaml")
    assert len(expand_runs(orders)) == 720 * 4 * 2


@pytest.mark.parametrize("body,key", [
    ({"datset": {}}, "datset"),
    ({"dataset": {"kind": "synthetic", "colour": 1}}, "dataset.colour"),
    ({"strategies": ["patchcore_cl", "ewc"]}, "strategies"),
    ({"memory_sizes": [3]}, "memory_sizes"),
    ({"orders": [["Brain_AD", "Brain_AD"]]}, "orders[0]"),
    ({"orders": [["Brain_AD", "Lung_AD"]]}, "orders[0]"),
    ({"dataset": {"kind": "bmad"}}, "dataset.root"),
    ({"dataset": {"kind": "imagenet"}}, "dataset.kind"),
    ({"coreset": {"rebalance": "sometimes"}}, "coreset.rebalance"),
    ({"seeds": ["zero"]}, "seeds"),
    ({"orders": {"sample": 0}}, "orders.sample"),
])
def test_bad_keys_name_file_and_key(tmp_path, body, key):
    p = write(tmp_path, body)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert str(p) in msg and f"'{key}'" in msg and "\n" not in msg


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="malformed YAML at line 3"):
        load_scenario(write(tmp_path, "name: x\nmodel: [unclosed\n"))
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match="empty"):
        load_scenario(write(tmp_path, ""))


def test_orders_sample_is_seeded_and_distinct(tmp_path):
    a = expand_runs(load_scenario(write(tmp_path, {"orders": {"sample": 10, "seed": 3}, "strategies": ["joint"],
                                                   "memory_sizes": [100]})))
    b = expand_runs(load_scenario(write(tmp_path, {"orders": {"sample": 10, "seed": 3}, "strategies": ["joint"],
                                                   "memory_sizes": [100]}, "t.yaml")))
    assert [r.order for r in a] == [r.order for r in b]
    assert len({r.order for r in a}) == 10


def test_paths_are_absolute_and_hash_tracks_content(tmp_path):
    sc = load_scenario(write(tmp_path, {"dataset": {"kind": "folder", "root": "data"}}))
    assert sc["dataset"]["root"] == str((tmp_path / "data").resolve())
    a = resolve({"seeds": [0]})
    b = resolve({"seeds": [1]})
    assert scenario_hash(a) != scenario_hash(b)
    assert scenario_hash(a) == scenario_hash(resolve({"seeds": [0], "name": "other"}))
