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
           "preprocess", "resize_size", "iter_batches", "LOSSY_FORMATS", "decode", "bit_depth", "to_uint8",
           "RESIZE_MODES", "MIN_IMAGE_SIZE"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_IMAGE_SIZE = 32  # px: the smallest dataset.image_size (and `data synth --size`); smaller leaves the backbone no grid
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


# Formats whose compression changes pixel values: their masks are thresholded at half range, not at > 0.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")


def _png_header(path: str) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _png16(path: str) -> np.ndarray:
    """A 16-bit PNG with colour or alpha, which Pillow would cut to 8 bits, read with pypng: (H, W, C) uint16."""
    import png

    try:
        w, h, rows, info = png.Reader(filename=path).asDirect()
        a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated 16-bit PNG: {e}") from None
    return a.reshape(h, w, info["planes"])


def _tiff(path: str) -> np.ndarray:
    """The first page of a TIFF with its stored sample type (tifffile: 16-bit colour, float, ... kept as they are)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            a = page.asarray()
            if a.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                a = np.moveaxis(a, 0, -1)  # (samples, H, W) -> (H, W, samples)
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                a = page.colormap.T[a]  # palette indices -> their (16-bit) colours
    except DataError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(f"{path}: corrupt or unsupported TIFF: {e}") from None
    return a


def decode(path: str, what: str = "image") -> tuple[np.ndarray, str]:
    """The pixel values a file stores, unscaled, and its format name.

    Returns (H, W) or (H, W, C) with C in 1..4: grey, grey + alpha, colour, colour + alpha, in the
    file's own sample type (bool, uint8, uint16, int32, float32, ...). Palette images are expanded to
    their colours; CMYK / YCbCr / LAB become RGB. Pillow decodes everything except 16-bit colour PNGs
    (pypng; Pillow keeps only their high bytes) and TIFFs (tifffile, which keeps 16-bit colour and float).
    Raises DataError naming the file when it is missing, empty, corrupt or has no pixels.
    """
    im = _open(path, what)
    fmt = im.format or "?"
    if fmt == "TIFF":
        a = _tiff(path)
    else:
        hdr = _png_header(path) if fmt == "PNG" else None
        if hdr is not None and hdr[0] == 16 and hdr[1] in (2, 4, 6):
            a = _png16(path)
        elif im.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "RGB", "RGBA", "LA"):
            a = np.asarray(im)
        elif im.mode in ("P", "PA"):
            a = np.asarray(im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB"))
        else:  # CMYK, YCbCr, LAB, HSV, ...: Pillow's own conversion to RGB
            a = np.asarray(im.convert("RGB"))
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or a.size == 0:
        raise DataError(f"{path}: cannot interpret a {what} of shape {a.shape} (expected grey or colour pixels)")
    return a, fmt


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
        if not np.all(a == np.rint(a)):
            raise DataError(f"{path}: float pixel values span [{float(lo):g}, {float(hi):g}]: neither 0..1 "
                            "intensities nor whole numbers, so their range is unknown")
    if lo < 0:
        raise DataError(f"{path}: negative pixel values (min {float(lo):g}): the intensity range is unknown; "
                        "store the data shifted to >= 0")
    need = int(hi).bit_length()
    return max(8, need + (need % 2))


def to_uint8(a: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Values -> uint8 by the decoding rule: v * 255 / (2**b - 1) with b = bit_depth(a), rounded (b = 0: v * 255)."""
    b = bit_depth(a, path)
    if b == 8:
        return np.ascontiguousarray(a, dtype=np.uint8) if a.dtype == np.uint8 else np.rint(a).astype(np.uint8)
    scale = 255.0 if b == 0 else 255.0 / (2.0 ** b - 1.0)
    return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, by one rule for every format and sample type.

    Rule (the same data gives the same pixels whatever the container): alpha is dropped, palettes are
    expanded to their colours, then values v become round(v * 255 / (2**b - 1)) where b is `bit_depth`:
    the smallest even depth >= 8 that holds the image's largest value (8-bit data is unchanged; a 12-bit
    scan stored in 16 bits uses its 12-bit range), float images in [0, 1] become round(v * 255). Grey is
    repeated to three channels. Raises DataError naming the file for values it cannot interpret
    (NaN, negative, fractional floats outside [0, 1]) and for missing, empty or corrupt files.
    """
    a, _ = decode(path, "image")
    a = to_uint8(_drop_alpha(a), path)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def read_mask(path: str) -> np.ndarray:
    """(H, W) bool anomaly mask.

    Lossless formats: a pixel is anomalous where any colour channel (alpha ignored) is non-zero, so
    0/1, 0/255 and 0/65535 masks all work. Lossy formats (JPEG, WebP): compression smears the values,
    so a pixel is anomalous where its largest channel exceeds half the range (v > (2**b - 1) / 2 with
    b from `bit_depth`, i.e. >= 128 for 8-bit); the preflight warns once per task about such masks.
    Raises DataError naming the file for values it cannot interpret.
    """
    a, fmt = decode(path, "mask")
    a = _drop_alpha(a)
    b = bit_depth(a, path)  # checks the values (NaN, negative, ...)
    if a.ndim == 3:
        a = a.max(axis=2)
    if fmt in LOSSY_FORMATS and b > 1:
        return a.astype(np.float64) > (2.0 ** b - 1.0) / 2.0
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
