"""Single-task PatchCore image/pixel AUROC on each synthetic domain (bundled backbone).

The synthetic stream is meant to be hard enough to be useful: image AUROC between about 0.75 and
0.98 depending on the domain. This prints the figures that check it (and that tune
pclsim.data.synthetic.DIFFICULTY).
"""

from __future__ import annotations

import argparse

import torch

from _common import emit
from pclsim.data import BMAD_TASKS, iter_batches, synthetic_stream
from pclsim.core.features import FeatureExtractor
from pclsim.study.engine import single_task_metrics
from pclsim.core.task_features import TaskFeatures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bank", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    ex = FeatureExtractor(image_size=a.size, device="cpu")
    out = {}
    for task in synthetic_stream(BMAD_TASKS, train=a.train, test=a.test, size=a.size, seed=a.seed):
        tr, _, _ = ex.extract(iter_batches(task.train, a.size, 32, 2), total=len(task.train))
        te, masks, labels = ex.extract(iter_batches(task.test, a.size, 32, 2), total=len(task.test))
        tf = TaskFeatures(task.name, tr.reshape(-1, ex.dim), te, labels, masks if task.has_masks else None,
                          ex.grid, a.size)
        r = single_task_metrics(tf, a.bank)
        out[task.name] = {k: round(v, 3) for k, v in r.items() if k in ("image_auroc", "pixel_auroc")}
    emit("synthetic_difficulty", {"train": a.train, "test": a.test, "size": a.size, "bank": a.bank,
                                  "seed": a.seed, "single_task": out})


if __name__ == "__main__":
    main()
