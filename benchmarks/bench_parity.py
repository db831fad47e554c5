"""Parity with a peer: single-task PatchCore in pclsim vs anomalib's PatchcoreModel (oracle only).

Every synthetic domain (generated at --native px), same backbone (efficientnet_lite0, bundled
ImageNet weights), same layers (blocks.2 + blocks.4), same bank size. anomalib gets the whole
images resized to --size (its geometry); pclsim runs with `resize: full` (the same inputs) and
with `resize: crop` (the authors' shorter-side resize + centre crop), each with both reweightings.
One JSON line per domain: AUROCs and gaps; the target is |gap| <= 0.02 with resize full and
reweighting anomalib. Run with anomalib installed: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from _common import anomalib_or_none, emit, json_lines, replace_readme_block
from pclsim.core.backbones import load_backbone
from pclsim.data import BMAD_TASKS, iter_batches, synthetic_stream
from pclsim.core.features import FeatureExtractor
from pclsim.study.engine import single_task_metrics
from pclsim.core.task_features import TaskFeatures


def _pclsim(task, train, test, labels, masks, size, bank, resize):
    """pclsim's single-task PatchCore on batches decoded with `resize`: image AUROC per reweighting, pixel AUROC."""
    ex = FeatureExtractor("efficientnet_lite0", "bundled", image_size=size, device="cpu", resize=resize)
    tr, _, _ = ex.extract(train)
    te, _, _ = ex.extract(test)
    out = {}
    for rw in ("paper", "anomalib"):
        tf = TaskFeatures(task.name, tr.reshape(-1, ex.dim), te, labels, masks, ex.grid, size)
        res = single_task_metrics(tf, bank, reweighting=rw, pixel=task.has_masks)  # mask-less: image AUROC only
        out[f"image_auroc_{rw}"] = res["image_auroc"]
        out["pixel_auroc"] = res.get("pixel_auroc", float("nan"))
    return out, ex


def _anomalib(Model, layers, train, test, labels, masks, size, bank):
    """anomalib's PatchcoreModel on the whole images (its geometry), same backbone, weights, layers, bank size."""
    model = Model(layers=list(layers), backbone="efficientnet_lite0", pre_trained=False)
    timm_model, _ = load_backbone("efficientnet_lite0", "bundled")
    missing = model.feature_extractor.feature_extractor.load_state_dict(timm_model.state_dict(), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    model.train()
    for x, _, _ in train:
        model(x)
    n = sum(e.shape[0] for e in model.embedding_store)
    model.subsample_embedding(bank / n)
    model.eval()
    scores, maps = [], []
    with torch.inference_mode():
        for x, _, _ in test:
            r = model(x)
            scores.append(r.pred_score.reshape(-1))
            maps.append(r.anomaly_map.reshape(x.shape[0], size, size))
    s = torch.cat(scores).numpy()
    m = torch.cat(maps).numpy()
    return {"bank": int(model.memory_bank.shape[0]), "image_auroc": float(roc_auc_score(labels, s)),
            "pixel_auroc": float(roc_auc_score(masks.reshape(-1), m.reshape(-1))) if masks.any() else float("nan")}


def readme_table(lines: list[dict]) -> str:
    """The README's parity table (between <!-- parity:begin/end -->) from this benchmark's JSON lines."""
    out = ["| domain | image, full + anomalib rw | pixel, full | image, crop + anomalib rw | pixel, crop "
           "| image, full + paper rw |", "|---|---|---|---|---|---|"]
    for d in lines:
        if "gap_full_image_auroc" not in d:
            continue
        cells = [d["gap_full_image_auroc"], d["gap_full_pixel_auroc"], d["gap_crop_image_auroc"],
                 d["gap_crop_pixel_auroc"], d["gap_full_image_auroc_paper_reweighting"]]
        out.append(f"| {d['task']} | " + " | ".join("no masks" if np.isnan(v) else f"{v:+.4f}" for v in cells) + " |")
    d = lines[-1]
    out.append("")
    out.append(f"Gaps = pclsim - anomalib, {d['train']} train / {d['test']} test images a domain, bank {d['bank']}, "
               f"generated at {d['native_px']} px, model input {d['image_size']} px; written by "
               "`benchmarks/bench_parity.py --readme-from benchmarks/parity_results.jsonl` from that run's output.")
    return "\n".join(out) + "\n"



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme-from", nargs="+", metavar="JSONL",
                    help="write the README's parity table from saved output lines instead of running")
    ap.add_argument("--tasks", default=",".join(BMAD_TASKS), help="comma-separated synthetic domains")
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--size", type=int, default=224, help="model input (dataset.image_size)")
    ap.add_argument("--native", type=int, default=256, help="side of the generated images before resizing")
    ap.add_argument("--bank", type=int, default=1000)
    a = ap.parse_args()
    if a.readme_from:
        import os

        replace_readme_block(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md"), "parity",
                             readme_table(json_lines(*a.readme_from)))
        return
    Model = anomalib_or_none("patchcore")
    for name in a.tasks.split(","):
        torch.manual_seed(0)
        task = synthetic_stream((name,), train=a.train, test=a.test, size=a.native, seed=0)[0]
        out = {"task": name, "train": a.train, "test": a.test, "bank": a.bank, "native_px": a.native,
               "image_size": a.size, "anomalib_geometry": "full"}
        batches = {}
        for resize in ("full", "crop"):
            train = list(iter_batches(task.train, a.size, 16, 2, resize=resize))
            test = list(iter_batches(task.test, a.size, 16, 2, resize=resize))
            masks = torch.cat([m for _, m, _ in test]).numpy()
            labels = torch.cat([y for _, _, y in test]).numpy()
            batches[resize] = (train, test, labels, masks)
            res, ex = _pclsim(task, train, test, labels, masks, a.size, a.bank, resize)
            for k, v in res.items():
                out[f"pclsim_{resize}_{k}"] = v
        if Model is not None:
            train, test, labels, masks = batches["full"]  # anomalib resizes the whole image
            ref = _anomalib(Model, ex.layers, train, test, labels, masks, a.size, a.bank)
            out["anomalib_bank"] = ref["bank"]
            out["anomalib_image_auroc"] = ref["image_auroc"]
            out["anomalib_pixel_auroc"] = ref["pixel_auroc"]
            for resize in ("full", "crop"):
                out[f"gap_{resize}_image_auroc"] = out[f"pclsim_{resize}_image_auroc_anomalib"] - ref["image_auroc"]
                out[f"gap_{resize}_image_auroc_paper_reweighting"] = (out[f"pclsim_{resize}_image_auroc_paper"]
                                                                      - ref["image_auroc"])
                out[f"gap_{resize}_pixel_auroc"] = out[f"pclsim_{resize}_pixel_auroc"] - ref["pixel_auroc"]
            pix = out["gap_full_pixel_auroc"]  # NaN for a mask-less domain: nothing to compare
            out["within_0.02"] = bool(abs(out["gap_full_image_auroc"]) <= 0.02 and (np.isnan(pix) or abs(pix) <= 0.02))
        emit("parity", out)


if __name__ == "__main__":
    main()
