"""Samples, the decoding rule (`read_image`, `read_mask`), the paper's preprocessing, and lazy parallel batching.

A `Sample` names one image (a file, or a synthetic generator's parameters) without decoding it;
pixels exist only while `iter_batches` needs them, so a task of thousands of large images never
sits in memory at once. Files are read by `pclsim.data.decoding` (readers, pixel limit, headers);
the 8-bit scaling here runs on integers or in row blocks, never on a float64 copy of the whole image.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import DataError
from .decoding import (DEFAULT_MAX_IMAGE_PIXELS, LOSSY_FORMATS, PIXEL_LIMIT_ENV, ImageHeader,  # noqa: F401
                       _row_blocks, check_pixels, decode, decode_memory_bound, image_header, max_image_pixels)

__all__ = ["IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "Sample", "TaskData", "read_image", "read_mask",
           "preprocess", "resize_size", "iter_batches", "LOSSY_FORMATS", "decode", "bit_depth", "to_uint8",
           "RESIZE_MODES", "MIN_IMAGE_SIZE", "PIXEL_LIMIT_ENV", "DEFAULT_MAX_IMAGE_PIXELS", "max_image_pixels",
           "check_pixels", "ImageHeader", "image_header", "decode_memory_bound"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_IMAGE_SIZE = 32  # px: the smallest dataset.image_size (and `data synth --size`); smaller leaves the backbone no grid
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _drop_alpha(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] in (2, 4):
        return a[..., :-1] if a.shape[2] == 4 else a[..., 0]
    return a


def bit_depth(a: np.ndarray, path: str = "<array>") -> int:
    """The bit depth b an image's values are read in (the decoding rule of `read_image`).

    bool: 1. Float data within [0, 1]: 0, meaning "already normalised intensities". Otherwise the
    values must be whole numbers >= 0 and b is the smallest even number >= 8 whose range
    0 .. 2**b - 1 holds the largest value. So 8-bit data is 8 bits in any container and a 12-bit scan
    (0..4095) is 12 bits whether stored as a 16-bit PNG, a 16- or 32-bit integer TIFF or a float TIFF.
    Raises DataError naming the file for NaN/inf, negative values, or non-integral floats outside [0, 1].
    """
    if a.dtype == bool:
        return 1
    if a.dtype.kind not in "uif":
        raise DataError(f"{path}: cannot interpret pixel values of type {a.dtype}")
    if a.dtype == np.uint8:
        return 8
    lo, hi = a.min(), a.max()
    if a.dtype.kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DataError(f"{path}: pixel values include NaN or infinity")
        if lo >= 0 and hi <= 1:
            return 0
        if not all(np.array_equal(a[s], np.rint(a[s])) for s in _row_blocks(a)):  # temporaries: one block
            raise DataError(f"{path}: float pixel values span [{float(lo):g}, {float(hi):g}]: neither 0..1 "
                            "intensities nor whole numbers, so their range is unknown")
    if lo < 0:
        raise DataError(f"{path}: negative pixel values (min {float(lo):g}): the intensity range is unknown; "
                        "store the data shifted to >= 0")
    need = int(hi).bit_length()
    return max(8, need + (need % 2))


def _scale_into(a: np.ndarray, b: int, out: np.ndarray) -> None:
    """out[...] = round(a * 255 / (2**b - 1)) (b = 0: round(a * 255)), b = bit_depth(a); out: uint8 of a's shape.

    Equal, value for value, to np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8), but
    without a float64 copy of the image: bool and 8-bit data are exact integer copies, integers of up to 16
    bits go through a 2**b-entry table made by that very formula, and the rest (floats, wider integers)
    through that formula one row block at a time."""
    if b == 8:  # whole numbers 0..255 in any container: the cast is exact
        np.copyto(out, a, casting="unsafe")
        return
    if b == 1:  # bool: 0 / 255 (any non-zero byte is True)
        np.copyto(out, a, casting="unsafe")
        np.multiply(out, np.uint8(255), out=out)
        return
    scale = 255.0 if b == 0 else 255.0 / (2.0 ** b - 1.0)
    if a.dtype.kind in "ui" and b <= 16:  # 0 <= a < 2**b (bit_depth)
        table = np.clip(np.rint(np.arange(2 ** b, dtype=np.float64) * scale), 0, 255).astype(np.uint8)
        for s in _row_blocks(a):
            out[s] = table[a[s]]
        return
    for s in _row_blocks(a):
        np.copyto(out[s], np.clip(np.rint(a[s].astype(np.float64) * scale), 0, 255), casting="unsafe")


def to_uint8(a: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Values -> uint8 by the decoding rule: v * 255 / (2**b - 1) with b = bit_depth(a), rounded (b = 0: v * 255).

    a: any shape, of a type `bit_depth` accepts; returns uint8 of the same shape (a itself, made contiguous,
    when it is uint8). Temporaries stay within one row block (decoding.BLOCK_ELEMENTS values). Raises DataError as
    `bit_depth` does."""
    b = bit_depth(a, path)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, np.uint8)
    _scale_into(a, b, out)
    return out


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, by one rule for every format and sample type.

    Rule (the same data gives the same pixels whatever the container): alpha is dropped, palettes are
    expanded to their colours, then values v become round(v * 255 / (2**b - 1)) where b is `bit_depth`:
    the smallest even depth >= 8 that holds the image's largest value (8-bit data is unchanged; a 12-bit
    scan stored in 16 bits uses its 12-bit range), float images in [0, 1] become round(v * 255). Grey is
    repeated to three channels. Peak memory: the decoded samples plus at most about 3 x H x W x 3 bytes
    (`decode_memory_bound`). Raises DataError naming the file for values it cannot interpret
    (NaN, negative, fractional floats outside [0, 1]), for missing, empty or corrupt files and for images
    above the pixel limit.
    """
    a, _ = decode(path, "image")
    a = _drop_alpha(a)
    b = bit_depth(a, path)
    if a.ndim == 2:  # grey: scaled straight into the first channel, then copied to the other two
        out = np.empty(a.shape + (3,), np.uint8)
        _scale_into(a, b, out[..., 0])
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
        return out
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, np.uint8)
    _scale_into(a, b, out)
    return out


def read_mask(path: str) -> np.ndarray:
    """(H, W) bool anomaly mask.

    Lossless formats: a pixel is anomalous where any colour channel (alpha ignored) is non-zero, so
    0/1, 0/255 and 0/65535 masks all work. Lossy formats (JPEG, WebP): compression smears the values,
    so a pixel is anomalous where its largest channel exceeds half the range (v > (2**b - 1) / 2 with
    b from `bit_depth`, i.e. >= 128 for 8-bit); the preflight warns once per task about such masks.
    Raises DataError naming the file for values it cannot interpret, or as `decode` does.
    """
    a, fmt = decode(path, "mask")
    a = _drop_alpha(a)
    b = bit_depth(a, path)  # checks the values (NaN, negative, ...)
    if a.ndim == 3:
        a = a.max(axis=2)
    if fmt in LOSSY_FORMATS and b > 1:
        if a.dtype.kind in "ui" and b <= 53:  # whole numbers: v > (2**b - 1) / 2 exactly when v > (2**b - 1) // 2
            return a > ((1 << b) - 1) // 2
        out = np.empty(a.shape, bool)
        for s in _row_blocks(a):
            out[s] = a[s].astype(np.float64) > (2.0 ** b - 1.0) / 2.0
        return out
    return a > 0


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
    # the last n_calibration samples of `train` are held out of every bank (dataset.calibration): their
    # features are stored with the task and score the thresholds (pclsim.core.thresholds)
    n_calibration: int = 0
    # a labelled validation split kept apart from train and test (BMAD's valid/ under protocol clean), read
    # only when a `valid` threshold asks for it; load_stream appends it after the calibration images, and the
    # last n_validation samples of `train` are then those images (labels kept), in no bank
    validation: list | None = None
    n_validation: int = 0


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
