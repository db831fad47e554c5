"""protocol.json: the evaluation conventions of a results folder, and which outputs touched test labels.

Published continual-AD figures move by several AUROC points with conventions a table does not show
(the mask resizing rule, squared or plain L2, step-wise AP or trapezoid PR-AUC, AU-PRO's thresholds)
and with what was chosen on test labels. `protocol_card(scenario)` states them for one resolved
scenario; the sweep writes it as protocol.json next to scenario.yaml, and the report shows it.
Every statement is derived from the scenario and from the code's own defaults (AU-PRO's FPR limit and
threshold count, the maps' blur), so a changed key changes the card (tests/results/test_protocol_card.py
checks it against the scenario).
"""

from __future__ import annotations

from .._version import __version__

__all__ = ["protocol_card", "PROTOCOL_FILE"]

PROTOCOL_FILE = "protocol.json"

_REWEIGHTING = {
    "paper": "the authors' PatchCore eq. 7 variant: s* times w, w = 1 - exp(s*/T) / sum exp(d_n/T) over the 2 "
             "nearest bank neighbours n of m*, T = sqrt(D) (method.md section 3)",
    "anomalib": "anomalib's: s* times w, w = 1 - softmax(d)[m*] over the distances d to the 9 nearest bank vectors "
                "of m* (m* included)",
    "none": "s* unchanged (no reweighting)",
}
_RESIZE = {
    "crop": "shorter side to round(S * 256 / 224) (bilinear, antialias), then a centre crop of S x S (the authors')",
    "full": "the whole image bilinearly to S x S, aspect not kept (anomalib's)",
}


def protocol_card(sc: dict) -> dict:
    """The protocol card of a resolved scenario (a JSON-able dict; keys below, values plain sentences or lists).

    Sections: image_score, distance, reweighting, anomaly_map, resize, masks, metrics (one entry per
    column of the accuracy matrices: its definition and whether it uses test labels to pick anything),
    thresholds (the label-free policies, the calibration split, refit), test_labels (which outputs use
    them and which never read them)."""
    import inspect

    from ..core import metrics as metric_fns
    from ..core.thresholds import DEPLOYED, metric_name, parse_policy
    from ..study.orders import needs_difficulty
    from ..study.protocol import Evaluator

    pro = inspect.signature(metric_fns.pixel_metrics).parameters
    fpr_limit, n_thr = pro["fpr_limit"].default, pro["num_thresholds"].default
    blur = inspect.signature(Evaluator).parameters["sigma"].default

    ds, ev, model = sc["dataset"], sc["evaluation"], sc["model"]
    size = ds["image_size"]
    policies = [parse_policy(p) for p in ev.get("thresholds") or []]
    metrics = {
        "image_auroc": {"definition": "ROC AUC of the image scores (scikit-learn roc_auc_score)",
                        "threshold_from_test_labels": False},
        "image_f1": {"definition": "F1-max: the best F1 over every threshold of the TEST scores (an oracle threshold; "
                                   "the paper's figure)", "threshold_from_test_labels": True},
    }
    if ev.get("pixel_metrics", True):
        metrics.update({
            "pixel_auroc": {"definition": "ROC AUC of the pooled pixels of the task's test images",
                            "threshold_from_test_labels": False},
            "pixel_f1": {"definition": "F1-max over the pooled pixels (an oracle threshold)",
                         "threshold_from_test_labels": True},
            "pixel_pr": {"definition": "PR-AUC, trapezoid rule: scikit-learn auc(recall, precision) of the pooled "
                                       "pixels", "pr_flavour": "trapezoid", "threshold_from_test_labels": False},
            "pixel_ap": {"definition": "average precision, step-wise: scikit-learn average_precision_score of the "
                                       "pooled pixels", "pr_flavour": "step-wise AP", "threshold_from_test_labels": False},
            "pixel_aupro": {"definition": f"normalised area under the per-region overlap curve up to FPR {fpr_limit}, "
                                          f"{n_thr} thresholds at equally spaced positions of the sorted normal-pixel "
                                          "scores, 8-connected regions, trapezoid rule", "fpr_limit": fpr_limit,
                            "num_thresholds": n_thr,
                            "threshold_from_test_labels": False},
        })
    from ..study.strategies import get_strategy

    routing = [s for s in sc["strategies"] if get_strategy(s, max(sc["memory_sizes"])).identifies_task]
    if routing:
        metrics["task_id_acc"] = {"definition": "share of a task's test images routed to its own bank (lowest mean "
                                                "patch distance, method.md section 3); uses the test images' task "
                                                "identity", "threshold_from_test_labels": False}
    for p in policies:
        for base in DEPLOYED:
            metrics[metric_name(base, p)] = {
                "definition": f"{base.replace('image_', '')} of the test images called anomalous when score > the "
                              f"{p.label} threshold of the bank that scored them", "threshold_from_test_labels": False}
        metrics[metric_name("threshold", p)] = {"definition": "mean threshold applied to the task's test images, in "
                                                              "score units", "threshold_from_test_labels": False}
        metrics[metric_name("threshold_drift", p)] = {
            "definition": "(threshold - threshold at the task's own step) / |threshold at its own step|",
            "threshold_from_test_labels": False}
    return {
        "pclsim_version": __version__,
        "image_score": "s*: the largest over the image's patches of the distance to the nearest vector of the bank the "
                       "image is scored with, then the reweighting",
        "distance": "Euclidean (L2, not squared) between patch features",
        "reweighting": {"name": model["reweighting"], "rule": _REWEIGHTING.get(model["reweighting"], "a registered "
                                                                                "reweighting")},
        "anomaly_map": f"patch distances on the patch grid, bilinearly upsampled to {size} x {size}, Gaussian blur "
                       f"sigma {blur:g} (radius 4 sigma, reflect padding)",
        "resize": {"mode": ds["resize"], "rule": _RESIZE[ds["resize"]], "image_size": size},
        "masks": "the same geometry as the image, nearest-neighbour resampling, a pixel is anomalous when > 0",
        "maskless_pixels": ev.get("maskless_pixels", "skip"),
        "metrics": metrics,
        "thresholds": {
            "policies": [{"label": p.label, "kind": p.kind, "value": p.value} for p in policies],
            "decision": "anomalous when the image score is strictly above the threshold",
            "calibration": {"share": ds.get("calibration", 0), "seed": ds["seed"],
                            "images": "normal training images held out of every memory bank, chosen at random per "
                                      "task"},
            "validation": ("valid: fitted on the task's labelled validation split (BMAD valid/, protocol clean), "
                           "apart from train and test, in no bank") if any(p.kind == "valid" for p in policies)
                          else None,
            "refit": bool(ev.get("threshold_refit", True)),
            "fitted_per": "memory bank, on the calibration images of the tasks the bank holds",
        },
        "test_labels": {
            "used_by": sorted([m for m, v in metrics.items() if v["threshold_from_test_labels"]]
                              + (["task_id_acc", "routing.parquet", "routed.parquet"] if routing else [])
                              + (["orders (easy_to_hard / hard_to_easy: each task's single-task test image AUROC)"]
                                 if needs_difficulty(sc) else [])),
            "scored_with": "every metric compares scores with the test labels; the ones above also CHOOSE something "
                           "(a threshold, a task identity) with them",
            "never_read_by": ["coreset selection", "re-reductions", "memory banks", "calibration split",
                              "threshold fits"],
        },
    }
