"""protocol.json (issue 24): the card follows the scenario, key by key."""

from __future__ import annotations

import json

from pclsim.results.protocol_card import protocol_card
from pclsim.study.scenario import resolve

BASE = {"strategies": ["patchcore_cl", "joint"], "dataset": {"calibration": 0.1},
        "evaluation": {"thresholds": [{"fpr": 0.05}, {"sigma": 3}]}}


def card(**over):
    sc = json.loads(json.dumps(BASE))
    for path, v in over.items():
        node = sc
        *head, leaf = path.split("__")
        for h in head:
            node = node.setdefault(h, {})
        node[leaf] = v
    return protocol_card(resolve(sc))


def test_card_states_the_conventions_of_the_scenario():
    c = card()
    json.dumps(c)                                                   # JSON-able
    assert c["distance"].startswith("Euclidean (L2, not squared)")
    assert c["reweighting"]["name"] == "paper" and "sqrt(D)" in c["reweighting"]["rule"]
    assert c["resize"] == {"mode": "crop", "rule": c["resize"]["rule"], "image_size": 224}
    assert c["metrics"]["pixel_pr"]["pr_flavour"] == "trapezoid" and c["metrics"]["pixel_ap"]["pr_flavour"] == "step-wise AP"
    assert c["metrics"]["pixel_aupro"]["fpr_limit"] == 0.3 and c["metrics"]["pixel_aupro"]["num_thresholds"] == 100
    assert [p["label"] for p in c["thresholds"]["policies"]] == ["fpr0.05", "sigma3"]
    assert c["thresholds"]["calibration"]["share"] == 0.1 and c["thresholds"]["refit"] is True
    assert set(c["test_labels"]["used_by"]) == {"image_f1", "pixel_f1", "task_id_acc", "routing.parquet",
                                                "routed.parquet"}
    assert "threshold fits" in c["test_labels"]["never_read_by"]
    assert not c["metrics"]["image_f1@fpr0.05"]["threshold_from_test_labels"]
    assert c["metrics"]["image_f1"]["threshold_from_test_labels"]


def test_every_key_the_card_reports_changes_it():
    c = card()
    assert card(model__reweighting="none")["reweighting"]["name"] == "none"
    assert card(dataset__resize="full")["resize"]["mode"] == "full" != c["resize"]["mode"]
    assert "64 x 64" in card(dataset__image_size=64)["anomaly_map"]
    assert card(evaluation__threshold_refit=False)["thresholds"]["refit"] is False
    assert card(dataset__calibration=0.2)["thresholds"]["calibration"]["share"] == 0.2
    assert card(dataset__seed=5)["thresholds"]["calibration"]["seed"] == 5
    no_pix = card(evaluation__pixel_metrics=False)
    assert "pixel_f1" not in no_pix["metrics"] and "pixel_f1" not in no_pix["test_labels"]["used_by"]
    no_routing = card(strategies=["joint", "finetune"])
    assert "task_id_acc" not in no_routing["metrics"] and "routing.parquet" not in no_routing["test_labels"]["used_by"]
    plain = protocol_card(resolve({}))
    assert plain["thresholds"]["policies"] == [] and not any("@" in m for m in plain["metrics"])
    assert card(evaluation__maskless_pixels="paper")["maskless_pixels"] == "paper"
