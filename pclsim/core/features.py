"""PatchCore patch features from a frozen timm backbone (method.md section 1).

Each chosen level is 3x3 average pooled (stride 1), resized bilinearly to the finest level's
grid and concatenated along channels: one D-dim vector per patch, row-major patch order.
The backbone is cut after the deepest chosen layer (FX graph, dead code removed), so no
later block ever runs: that, and running each task once into the cache, is the speed.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import load_backbone
from ..errors import ModelError

__all__ = ["FeatureExtractor", "truncated_body", "aggregate"]

# Bump when the feature recipe changes, so old cache entries stop matching.
_RECIPE = "patchcore-avgpool3-bilinear-concat/v1"


class _HookBody(torch.nn.Module):
    """Fallback for models FX cannot trace: capture the layers, stop the forward after the deepest one."""

    class _Stop(Exception):
        pass

    def __init__(self, model: torch.nn.Module, layers: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.layers = layers
        self._mods = dict(model.named_modules())

    def forward(self, x):
        out = {}

        def grab(name):
            def hook(_m, _i, o):
                out[name] = o
                if len(out) == len(self.layers):
                    raise _HookBody._Stop
            return hook

        handles = [self._mods[n].register_forward_hook(grab(n)) for n in self.layers]
        try:
            self.model(x)
        except _HookBody._Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return out


def truncated_body(model: torch.nn.Module, layers: tuple[str, ...]) -> torch.nn.Module:
    """A module mapping images to {layer: output} that runs nothing past the deepest layer."""
    try:
        from timm.models._features_fx import create_feature_extractor

        body = create_feature_extractor(model, {n: n for n in layers})
    except Exception:  # untraceable model: hooks + early exit do the same job a little less cleanly
        body = _HookBody(model, layers)
    return body.eval()


def _box3(x: torch.Tensor) -> torch.Tensor:
    # zero padding counted in the mean, as torch.nn.AvgPool2d(3, 1, 1) (PatchCore reference implementations)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


def aggregate(maps: list[torch.Tensor], grid: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, h*w, sum C) float32 from per-level (B, C, H, W) maps: box-3 pool, bilinear to `grid`, concat.

    `out`, a (B, h*w, D) float32 tensor on the maps' device, receives the result in place.
    """
    B = maps[0].shape[0]
    h, w = grid
    D = sum(int(m.shape[1]) for m in maps)
    if out is None:
        out = torch.empty(B, h * w, D, dtype=torch.float32, device=maps[0].device)
    flat = out
    out = out.view(B, h, w, D)
    off = 0
    for m in maps:
        m = _box3(m.float())
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        c = m.shape[1]
        out[..., off:off + c] = m.permute(0, 2, 3, 1)  # write straight into patch-major layout
        off += c
    return flat


class FeatureExtractor:
    """Frozen backbone -> PatchCore patch vectors; one instance per device."""

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str = "bundled", layers=None,
                 image_size: int = 224, device=None, batch_size: int = 32, resize: str = "crop"):
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 8:
            raise ModelError(f"dataset.image_size must be an integer >= 8, got {image_size!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ModelError(f"model.batch_size must be an integer >= 1, got {batch_size!r}")
        from ..data.images import RESIZE_MODES

        if resize not in RESIZE_MODES:
            raise ModelError(f"dataset.resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
        self.resize = resize  # the images' geometry (pclsim.data.preprocess): part of the features' identity
        self.backbone = backbone
        self.weights = "none" if weights is None else str(weights)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        try:
            self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError) as e:
            raise ModelError(f"device {device!r} is not a torch device: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
        self.model, self.layers = load_backbone(backbone, self.weights, layers)
        self._cuda = self.device.type == "cuda"
        body = truncated_body(self.model, self.layers)
        # The FX body shares its modules with self.model, so only the blocks that run move to the device.
        # channels_last everywhere: on CUDA for tensor cores, on CPU it speeds up depthwise convs (lite0 ~1.7x)
        self.body = body.to(self.device).to(memory_format=torch.channels_last)
        self.precision = "bf16" if self._cuda else "fp32"
        self._weights_id = None
        try:
            with torch.inference_mode():
                probe = self._levels(torch.zeros(1, 3, self.image_size, self.image_size))
        except RuntimeError as e:
            raise ModelError(f"{backbone} layers {list(self.layers)} fail on {self.image_size} px images: "
                             f"{str(e).splitlines()[0][:200]}") from None
        for n, m in zip(self.layers, probe):
            if m.dim() != 4:
                raise ModelError(f"layer '{n}' of {backbone} gives a {tuple(m.shape)} tensor, not a (B, C, H, W) map; "
                                 "choose convolutional stages")
        sizes = [tuple(m.shape[-2:]) for m in probe]
        self.grid: tuple[int, int] = max(sizes, key=lambda s: s[0] * s[1])
        self.channels: tuple[int, ...] = tuple(int(m.shape[1]) for m in probe)
        self.dim: int = sum(self.channels)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self._cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.body(x)
        else:
            out = self.body(x)
        if not isinstance(out, dict):
            raise ModelError(f"{self.backbone}: feature body returned {type(out).__name__}")
        levels = []
        for n in self.layers:
            m = out[n]
            if isinstance(m, (tuple, list)):
                m = m[0]
            levels.append(m)
        return levels

    def embed(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, h*w, D) on the CPU in `dtype`, patches row-major.

        Features are computed in float32; dtype float16 rounds them on the device (round to nearest
        even, as numpy's astype), which halves the device-to-host copy of the feature store's default.
        """
        images = torch.as_tensor(images)
        S = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (S, S):
            raise ValueError(f"expected images of shape (B, 3, {S}, {S}), got {tuple(images.shape)}")
        # Allocated outside inference mode so callers get an ordinary tensor; filled in place.
        result = torch.empty(images.shape[0], self.num_patches, self.dim, dtype=dtype, pin_memory=self._cuda)
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                x = images[start:start + self.batch_size].float()
                dst = result[start:start + x.shape[0]]
                if self._cuda:
                    dst.copy_(aggregate(self._levels(x), self.grid).to(dtype))
                elif dtype == torch.float32:
                    aggregate(self._levels(x), self.grid, out=dst)
                else:
                    dst.copy_(aggregate(self._levels(x), self.grid))
        return result

    def extract(self, batches, total: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Consume (images, masks, labels) batches -> (feats (N, h*w, D) float32, masks (N, S, S) bool, labels (N,) int64).

        `total` (the number of images, when known) lets the features go straight into one array
        instead of being concatenated at the end, halving the peak memory for large backbones.
        """
        S, P, D = self.image_size, self.num_patches, self.dim
        feats = np.empty((total, P, D), np.float32) if total is not None else None
        chunks, masks, labels = [], [], []
        n = 0
        for images, m, y in batches:
            f = self.embed(images).numpy()
            b = f.shape[0]
            if feats is not None:
                if n + b > total:
                    raise ValueError(f"extract(total={total}) got more images than announced")
                feats[n:n + b] = f
            else:
                chunks.append(f)
            masks.append(np.asarray(m, dtype=bool).reshape(b, S, S))
            labels.append(np.asarray(y, dtype=np.int64).reshape(b))
            n += b
        if feats is not None:
            if n != total:
                raise ValueError(f"extract(total={total}) got {n} images")
        elif chunks:
            feats = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            chunks.clear()
        else:
            feats = np.empty((0, P, D), np.float32)
        m_out = np.concatenate(masks) if masks else np.zeros((0, S, S), bool)
        y_out = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
        return feats, m_out, y_out

    def weights_id(self) -> str:
        """What the weights are, for the cache key: bundled checkpoint name, 'none', or the file's sha256."""
        if self._weights_id is None:
            if self.weights == "pretrained":
                from .backbones import pretrained_id

                wid = pretrained_id(self.backbone)
            elif self.weights in ("bundled", "none"):
                wid = self.weights
                if self.weights == "bundled":
                    from .backbones import bundled_weights_path

                    wid = "bundled:" + os.path.basename(bundled_weights_path())
            else:
                h = hashlib.sha256()
                with open(self.weights, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                wid = "sha256:" + h.hexdigest()
            self._weights_id = wid
        return self._weights_id

    def weights_record(self) -> dict:
        """The weights this extractor really uses: {"backbone": the name as timm resolves it (with the
        pretrained tag), "weights": weights_id(), "digest": sha256 of the loaded state dict (16 hex digits)}."""
        if getattr(self, "_weights_record", None) is None:
            from .backbones import resolved_backbone, weights_digest

            self._weights_record = {"backbone": resolved_backbone(self.backbone, self.weights),
                                    "weights": self.weights_id(), "digest": weights_digest(self.model)}
        return self._weights_record

    def cache_key(self) -> str:
        """sha256 of everything the features depend on: backbone, weights (and the digest of the loaded
        ones), layers, image size, resize mode, precision, recipe, and the torch and timm versions that
        compute them (pclsim.results.provenance)."""
        from .._version import versions

        libs = versions()
        ident = {"backbone": self.backbone, "weights": self.weights_id(), "layers": list(self.layers),
                 "image_size": self.image_size, "precision": self.precision, "recipe": _RECIPE,
                 "weights_digest": self.weights_record()["digest"],
                 "libraries": {k: libs.get(k) for k in ("torch", "timm")}}
        if self.resize != "crop":  # 'crop' keys stay as they were: existing caches remain valid
            ident["resize"] = self.resize
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return (f"FeatureExtractor({self.backbone}, weights={self.weights}, layers={list(self.layers)}, "
                f"size={self.image_size}, dim={self.dim}, grid={self.grid}, device={self.device})")
