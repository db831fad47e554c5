"""Samples, image decoding, the paper's preprocessing, and lazy parallel batching.

A `Sample` names one image (a file, or a synthetic generator's parameters) without decoding it;
pixels exist only while `iter_batches` needs them, so a task of thousands of large images never
sits in memory at once.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = ["IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "Sample", "TaskData", "read_image", "read_mask",
           "preprocess", "resize_size", "iter_batches", "RESIZE_MODES"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Image.MAX_IMAGE_PIXELS = None  # whole-slide-sized medical images are legitimate input, not a decompression bomb


def _open(path: str, what: str) -> Image.Image:
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: empty {what} file")
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, not later in a worker
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable {what} (corrupt or unknown format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: corrupt or truncated {what}: {e}") from None
    if im.width == 0 or im.height == 0:
        raise DataError(f"{path}: {what} has no pixels")
    return im


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Grey is repeated to three channels; 16-bit and float images are rescaled."""
    im = _open(path, "image")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im).astype(np.float32) / 257.0  # full 16-bit range onto 8 bits
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        # no fixed range for 32-bit data: stretch min..max (a constant image becomes black)
        a = np.asarray(im).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_mask(path: str) -> np.ndarray:
    """(H, W) bool: any non-zero pixel is anomalous."""
    im = _open(path, "mask")
    if im.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = im.convert("L")
    return np.asarray(im) > 0


@dataclass(frozen=True)
class Sample:
    """One image of a task. `key` identifies its content for the feature cache: for a file
    "relpath|size|mtime_ns" (plus the mask's, when there is one), for a synthetic image its generator's parameters."""

    key: str
    label: int
    path: str | None
    mask_path: str | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, 3) uint8 RGB image and (H, W) bool mask or None."""
        if self.path is None:
            raise DataError(f"sample {self.key!r} has no image file")
        img = read_image(self.path)
        if self.mask_path is None:
            return img, None
        mask = read_mask(self.mask_path)
        if mask.shape != img.shape[:2]:
            raise DataError(f"{self.mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                            f"{self.path} ({img.shape[1]}x{img.shape[0]})")
        return img, mask


@dataclass
class TaskData:
    name: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool
    chosen: dict | None = None  # paper protocol: the files the seeded caps kept (recorded into results)


def resize_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side `short`, aspect kept; the long side truncated like torchvision's Resize."""
    if h <= w:
        return short, max(1, int(short * w / h))
    return max(1, int(short * h / w)), short


def _crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return left, top, left + size, top + size


RESIZE_MODES = ("crop", "full")


def preprocess(img: np.ndarray, mask: np.ndarray | None, image_size: int,
               resize: str = "crop") -> tuple[np.ndarray, np.ndarray | None]:
    """Image (H, W[, C]) -> float32 (3, S, S) ImageNet-normalised, mask (H, W) -> bool (S, S) (nearest, > 0) or None.

    resize 'crop' (method.md section 1, the authors'): shorter side to round(S * 256 / 224), bilinear with
    antialias, then centre crop S (the borders, and for wide images whole sides, are dropped).
    resize 'full' (anomalib's): the whole image bilinearly to S x S, aspect not kept, nothing dropped.
    Masks follow the same geometry. Raises DataError for a bad shape, a mask/image size mismatch or an unknown mode.
    """
    if resize not in RESIZE_MODES:
        raise DataError(f"dataset.resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an (H, W, 3) image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    if resize == "full":
        nh, nw, box = image_size, image_size, (0, 0, image_size, image_size)
    else:
        nh, nw = resize_size(h, w, int(round(image_size * 256 / 224)))
        box = _crop_box(nh, nw, image_size)
    pil = Image.fromarray(np.ascontiguousarray(img), "RGB")
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), Image.BILINEAR)  # PIL's bilinear widens its kernel when shrinking: antialiased
    a = np.asarray(pil.crop(box), dtype=np.float32)
    a *= 1.0 / 255.0
    a -= IMAGENET_MEAN
    a /= IMAGENET_STD
    out = np.ascontiguousarray(a.transpose(2, 0, 1))
    if mask is None:
        return out, None
    mask = np.asarray(mask)
    if mask.shape != (h, w):
        raise DataError(f"mask shape {mask.shape} differs from image shape {(h, w)}")
    m = Image.fromarray((mask > 0).astype(np.uint8) * 255, "L")
    if (nh, nw) != (h, w):
        m = m.resize((nw, nh), Image.NEAREST)
    return out, np.asarray(m.crop(box)) > 0


def _decode(sample: Sample, image_size: int, resize: str = "crop"):
    img, mask = sample.load()
    return preprocess(img, mask, image_size, resize)


def iter_batches(samples: list[Sample], image_size: int, batch_size: int = 32, workers: int = 2, prefetch: int = 2,
                 resize: str = "crop"):
    """Yield (images float32 (B, 3, S, S), masks bool (B, S, S), labels int64 (B,)) torch tensors in sample order.

    Decoding runs on `workers` threads (PIL and numpy release the GIL); workers <= 0 decodes inline. At most
    (prefetch + 1) * batch_size decoded images are alive in here at once: the batch being handed out plus at most
    prefetch * batch_size decoded ahead. Masks are all False where a sample has none. `resize`: see `preprocess`.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prefetch = max(0, int(prefetch))
    n = len(samples)
    if n == 0:
        return
    S = int(image_size)

    def assemble(results, idx):
        imgs = torch.from_numpy(np.stack([r[0] for r in results]))
        masks = np.zeros((len(results), S, S), dtype=bool)
        for i, (_, m) in enumerate(results):
            if m is not None:
                masks[i] = m
        labels = torch.tensor([samples[i].label for i in idx], dtype=torch.int64)
        return imgs, torch.from_numpy(masks), labels

    if workers <= 0:
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            results = [_decode(samples[i], S, resize) for i in idx]
            batch = assemble(results, idx)
            del results
            yield batch
        return

    ahead = prefetch * batch_size
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="pclsim-decode")
    pending: deque = deque()
    nxt = 0

    def fill(limit):
        nonlocal nxt
        while len(pending) < limit and nxt < n:
            pending.append((nxt, pool.submit(_decode, samples[nxt], S, resize)))
            nxt += 1

    try:
        while nxt < n or pending:
            fill(ahead + batch_size)
            take = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            idx = [i for i, _ in take]
            results = [f.result() for _, f in take]  # re-raises a worker's DataError here, in order
            del take
            batch = assemble(results, idx)
            del results
            yield batch
            del batch
    finally:
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
