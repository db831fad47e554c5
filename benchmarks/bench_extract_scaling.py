"""Feature extraction across 1 and 2 Ray extractor actors: images/s and the scaling ratio.

Each actor holds one backbone (a GPU each when there are GPUs, else one CPU each); tasks are
handed out round-robin as in `pclsim sweep`. The cache is empty for every measurement.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray

from _common import emit
from pclsim.runner.actors import FeatureExtractorActor
from pclsim.data import synthetic_stream


def rate(n_actors: int, tasks, model: dict, size: int, gpus: int) -> float:
    opts = dict(num_gpus=1, num_cpus=1) if gpus else dict(num_cpus=1)
    with tempfile.TemporaryDirectory() as cache:
        actors = [FeatureExtractorActor.options(**opts).remote(model, size, cache, threads=1) for _ in range(n_actors)]
        ray.get([a.info.remote() for a in actors])  # backbones built before the clock starts
        t0 = time.perf_counter()
        ray.get([actors[i % n_actors].extract.remote(t) for i, t in enumerate(tasks)])
        dt = time.perf_counter() - t0
        for a in actors:
            ray.kill(a)
    return sum(len(t.train) + len(t.test) for t in tasks) / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48, help="train images per task (plus 16 test)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="bundled")
    a = ap.parse_args()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    tasks = synthetic_stream(train=a.images, test=16, size=a.size, seed=0)[:4]
    model = {"backbone": a.backbone, "weights": a.weights, "layers": None, "batch_size": 16}
    one = rate(1, tasks, model, a.size, gpus)
    two = rate(2, tasks, model, a.size, gpus)
    emit("extract_scaling", {"backbone": a.backbone, "size": a.size, "gpus": gpus, "cpus": ray.cluster_resources()["CPU"],
                             "images_per_s_1_actor": one, "images_per_s_2_actors": two, "scaling_2_vs_1": two / one})
    ray.shutdown()


if __name__ == "__main__":
    main()
