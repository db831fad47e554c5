"""FeatureExtractor.embed (cut backbone + pool/resize/concat) against a bare full timm forward `model(x)`.

Both run under torch.inference_mode with the same batch, device and (on CUDA) channels_last + bf16
autocast, so the ratio isolates what the extractor adds or saves. Target: ratio >= 0.8.

    python benchmarks/bench_features.py                                   # lite0, bundled, CPU
    python benchmarks/bench_features.py --backbone wide_resnet50_2 --weights none --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from _common import emit, sync  # noqa: E402
from pclsim.features import FeatureExtractor  # noqa: E402


def rate(fn, x, device, iters: int, warmup: int) -> float:
    """Images per second, best of `iters` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn(x)
    sync(device)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="bundled")
    ap.add_argument("--layers", default=None, help="comma-separated layer names (default: the backbone's pair)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)

    layers = tuple(args.layers.split(",")) if args.layers else None
    fe = FeatureExtractor(args.backbone, args.weights, layers, image_size=args.image_size, device=args.device,
                          batch_size=args.batch_size)
    dev = fe.device
    cuda = dev.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)

    # Baseline: the whole network, as a user would run it, under the same device settings.
    full = fe.model.to(dev)
    if cuda:
        full = full.to(memory_format=torch.channels_last)

    def bare(inp):
        with torch.inference_mode():
            inp = inp.to(dev, non_blocking=True)
            if cuda:
                inp = inp.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return full(inp).float().cpu()
            return full(inp)

    r_embed = rate(fe.embed, x, dev, args.iters, args.warmup)
    r_bare = rate(bare, x, dev, args.iters, args.warmup)
    payload = {
        "backbone": args.backbone, "weights": args.weights, "layers": list(fe.layers), "device": str(dev),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "image_size": args.image_size,
        "dim": fe.dim, "grid": list(fe.grid),
        "embed_images_per_s": r_embed, "embed_patch_features_per_s": r_embed * fe.num_patches,
        "full_forward_images_per_s": r_bare,
        "ratio_embed_over_full_forward": r_embed / r_bare, "target_ratio": 0.8,
    }
    emit("features", payload)
    return payload


if __name__ == "__main__":
    main()
