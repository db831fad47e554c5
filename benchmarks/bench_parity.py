"""Parity with a peer: single-task PatchCore in pclsim vs anomalib's PatchcoreModel (oracle only).

Same synthetic task, same backbone (efficientnet_lite0, bundled ImageNet weights), same layers
(blocks.2 + blocks.4), same bank size. Prints image and pixel AUROC of both and their gaps;
the target is |gap| <= 0.02. Run with anomalib installed: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from _common import anomalib_or_none, emit
from pclsim.backbones import load_backbone
from pclsim.data import iter_batches, synthetic_stream
from pclsim.features import FeatureExtractor
from pclsim.engine import single_task_metrics
from pclsim.protocol import TaskFeatures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="Brain_AD")
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bank", type=int, default=1000)
    a = ap.parse_args()
    torch.manual_seed(0)
    task = synthetic_stream((a.task,), train=a.train, test=a.test, size=a.size, seed=0)[0]
    train = list(iter_batches(task.train, a.size, 16, 2))
    test = list(iter_batches(task.test, a.size, 16, 2))
    masks = torch.cat([m for _, m, _ in test]).numpy()
    labels = torch.cat([y for _, _, y in test]).numpy()

    ex = FeatureExtractor("efficientnet_lite0", "bundled", image_size=a.size, device="cpu")
    tr, _, _ = ex.extract(train)
    te, _, _ = ex.extract(test)
    out = {"task": a.task, "train": a.train, "test": a.test, "bank": a.bank}
    for rw in ("paper", "anomalib"):
        tf = TaskFeatures(a.task, tr.reshape(-1, ex.dim), te, labels, masks, ex.grid, a.size)
        res = single_task_metrics(tf, a.bank, reweighting=rw)
        out[f"pclsim_{rw}_image_auroc"] = res["image_auroc"]
        out["pclsim_pixel_auroc"] = res["pixel_auroc"]

    Model = anomalib_or_none("patchcore")
    if Model is not None:
        model = Model(layers=list(ex.layers), backbone="efficientnet_lite0", pre_trained=False)
        timm_model, _ = load_backbone("efficientnet_lite0", "bundled")
        missing = model.feature_extractor.feature_extractor.load_state_dict(timm_model.state_dict(), strict=False)
        assert not missing.missing_keys, missing.missing_keys
        model.train()
        for x, _, _ in train:
            model(x)
        n = sum(e.shape[0] for e in model.embedding_store)
        model.subsample_embedding(a.bank / n)
        model.eval()
        scores, maps = [], []
        with torch.inference_mode():
            for x, _, _ in test:
                r = model(x)
                scores.append(r.pred_score.reshape(-1))
                maps.append(r.anomaly_map.reshape(x.shape[0], a.size, a.size))
        s = torch.cat(scores).numpy()
        m = torch.cat(maps).numpy()
        out["anomalib_bank"] = int(model.memory_bank.shape[0])
        out["anomalib_image_auroc"] = float(roc_auc_score(labels, s))
        out["anomalib_pixel_auroc"] = float(roc_auc_score(masks.reshape(-1), m.reshape(-1)))
        out["gap_image_auroc"] = out["pclsim_anomalib_image_auroc"] - out["anomalib_image_auroc"]
        out["gap_image_auroc_paper_reweighting"] = out["pclsim_paper_image_auroc"] - out["anomalib_image_auroc"]
        out["gap_pixel_auroc"] = out["pclsim_pixel_auroc"] - out["anomalib_pixel_auroc"]
        out["within_0.02"] = bool(abs(out["gap_image_auroc"]) <= 0.02 and abs(out["gap_pixel_auroc"]) <= 0.02)
    emit("parity", out)


if __name__ == "__main__":
    main()
