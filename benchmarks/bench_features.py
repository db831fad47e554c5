"""FeatureExtractor.embed (cut backbone + pool/resize/concat) against a bare full timm forward `model(x)`.

Two baselines, both under torch.inference_mode at the same batch size and device:
- full_forward: model(x) with the extractor's own settings (channels_last; bf16 autocast on CUDA), so
  the ratio isolates what cutting the network and aggregating patches cost or save. Target >= 0.8.
- plain_forward: model(x) as timm builds it (NCHW, float32), what a naive extractor would run.

    python benchmarks/bench_features.py                                   # lite0, bundled, CPU
    python benchmarks/bench_features.py --backbone wide_resnet50_2 --weights none --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from _common import emit, sync  # noqa: E402
from pclsim.core.features import FeatureExtractor  # noqa: E402


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

    # Separate copies: the extractor's body shares (and reformats) the model's first blocks.
    full = copy.deepcopy(fe.model).to(dev).to(memory_format=torch.channels_last)
    plain = copy.deepcopy(fe.model).to(dev).to(memory_format=torch.contiguous_format)

    def bare(inp):
        with torch.inference_mode():
            inp = inp.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            if cuda:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return full(inp).float().cpu()
            return full(inp)

    def naive(inp):
        with torch.inference_mode():
            return plain(inp.to(dev)).cpu()

    r_embed = rate(fe.embed, x, dev, args.iters, args.warmup)
    r_bare = rate(bare, x, dev, args.iters, args.warmup)
    r_plain = rate(naive, x, dev, args.iters, args.warmup)
    payload = {
        "backbone": args.backbone, "weights": args.weights, "layers": list(fe.layers), "device": str(dev),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "image_size": args.image_size,
        "dim": fe.dim, "grid": list(fe.grid),
        "embed_images_per_s": r_embed, "embed_patch_features_per_s": r_embed * fe.num_patches,
        "full_forward_images_per_s": r_bare,
        "ratio_embed_over_full_forward": r_embed / r_bare, "target_ratio": 0.8,
        "plain_forward_images_per_s": r_plain, "ratio_embed_over_plain_forward": r_embed / r_plain,
    }
    emit("features", payload)
    return payload


if __name__ == "__main__":
    main()
