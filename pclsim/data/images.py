"""Samples, image decoding, the paper's preprocessing, and lazy parallel batching.

A `Sample` names one image (a file, or a synthetic generator's parameters) without decoding it;
pixels exist only while `iter_batches` needs them, so a task of thousands of large images never
sits in memory at once.

Decode memory: one `read_image` holds at most the samples the reader library returns (e.g. 6 bytes a
pixel for 16-bit RGB) plus about 3x the decoded (H, W, 3) uint8 image (`decode_memory_bound`): the
8-bit scaling runs on integers or in row blocks of at most `BLOCK_ELEMENTS` values, never on a
float64 copy of the whole image.

Pixel limit: an image whose header gives more than `max_image_pixels()` pixels (width x height) is a
DataError naming the file before any pixel is decoded. The limit is 2**31 pixels unless the
environment variable PCLSIM_MAX_IMAGE_PIXELS sets another (a whole number >= 1). Pillow's own
decompression-bomb guard is kept on at the same limit, so Pillow never refuses or warns about an image
that pclsim accepts, and one above the limit gets pclsim's error.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, PclsimError

__all__ = ["IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "Sample", "TaskData", "read_image", "read_mask",
           "preprocess", "resize_size", "iter_batches", "LOSSY_FORMATS", "decode", "bit_depth", "to_uint8",
           "RESIZE_MODES", "MIN_IMAGE_SIZE", "PIXEL_LIMIT_ENV", "DEFAULT_MAX_IMAGE_PIXELS", "max_image_pixels",
           "check_pixels", "ImageHeader", "image_header", "decode_memory_bound", "BLOCK_ELEMENTS"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_IMAGE_SIZE = 32  # px: the smallest dataset.image_size (and `data synth --size`); smaller leaves the backbone no grid
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PIXEL_LIMIT_ENV = "PCLSIM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 2 ** 31  # generous: whole-slide-sized medical images are legitimate input
BLOCK_ELEMENTS = 1 << 20  # values per row block of the 8-bit scaling: its float64 temporaries stay <= 8 MiB


def max_image_pixels() -> int:
    """The pixel limit (width x height) of one image: PCLSIM_MAX_IMAGE_PIXELS, or 2**31 when unset.

    Raises PclsimError naming the variable when it is set to anything but a whole number >= 1.
    """
    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise PclsimError(f"{PIXEL_LIMIT_ENV}={raw!r}: not a whole number of pixels >= 1")
    return limit


def _pillow_guard(limit: int) -> None:
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice it. At our limit it never refuses or
    # warns about an image we accept; above it, our check (right after the header) or the conversion of
    # Pillow's error in `_pillow_open` gives our DataError, so Pillow's warning adds nothing and is ignored.
    with _GUARD_LOCK:
        if Image.MAX_IMAGE_PIXELS != limit:
            Image.MAX_IMAGE_PIXELS = limit
        if _IGNORE_BOMB_WARNING not in warnings.filters:  # again if a catch_warnings block dropped it
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


_IGNORE_BOMB_WARNING = ("ignore", None, Image.DecompressionBombWarning, None, 0)  # as warnings.filters holds it
_GUARD_LOCK = threading.Lock()  # held while the guard is set, and while it is off for one header (_unguarded_size)
_pillow_guard(DEFAULT_MAX_IMAGE_PIXELS)


def check_pixels(path: str, width: int, height: int, limit: int | None = None) -> None:
    """DataError naming the file when width x height exceeds the pixel limit (`max_image_pixels`)."""
    limit = max_image_pixels() if limit is None else limit
    n = int(width) * int(height)
    if n > limit:
        raise DataError(f"{path}: {width} x {height} = {n} pixels is above the pixel limit {limit} "
                        f"(set {PIXEL_LIMIT_ENV} to raise it)")


def _pillow_open(path: str, what: str) -> Image.Image:
    """Pillow's lazily opened image (header read, pixels not), checked against the pixel limit.

    Raises DataError naming the file when it is missing, empty, not an image, has no pixels or too many.
    """
    limit = max_image_pixels()
    _pillow_guard(limit)
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: empty {what} file")
        im = Image.open(path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except Image.DecompressionBombError:  # above twice our limit: Pillow refused before we saw the size
        check_pixels(path, *_unguarded_size(path), limit)
        raise DataError(f"{path}: {what} is above twice the pixel limit {limit} "
                        f"(set {PIXEL_LIMIT_ENV} to raise it)") from None  # only if the limit changed meanwhile
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable {what} (corrupt or unknown format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: corrupt or truncated {what}: {e}") from None
    try:
        check_pixels(path, im.width, im.height, limit)
    except DataError:
        im.close()
        raise
    if im.width == 0 or im.height == 0:
        im.close()
        raise DataError(f"{path}: {what} has no pixels")
    return im


def _unguarded_size(path: str) -> tuple[int, int]:
    """(width, height) from the header of a file Pillow's guard refused, for our own message.

    Pillow's guard is off for this one header read only; a header read allocates no pixels, and every other
    open in the meantime is still checked by `check_pixels` right after its header."""
    with _GUARD_LOCK:
        keep, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size
        finally:
            Image.MAX_IMAGE_PIXELS = keep


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
    """A 16-bit PNG with colour or alpha, which Pillow would cut to 8 bits, read with pypng: (H, W, C) uint16.

    Rows go straight into one preallocated array (no list of rows, no stacked copy)."""
    import png

    try:
        with open(path, "rb") as f:
            w, h, rows, info = png.Reader(file=f).asDirect()
            check_pixels(path, w, h)  # from the header, before any row is decompressed
            planes = info["planes"]
            a = np.empty((h, w * planes), np.uint16)
            n = 0
            for n, row in enumerate(rows, 1):
                if n > h:
                    raise ValueError(f"more than the {h} rows its header gives")
                a[n - 1] = row
            if n != h:
                raise ValueError(f"{n} of {h} rows")
    except DataError:
        raise
    except (png.Error, OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated 16-bit PNG: {e}") from None
    return a.reshape(h, w, planes)


TIFF_BUFFER_BYTES = 1 << 22  # tifffile reads (and decompresses) at most this much of a file at once


def _tiff(path: str) -> np.ndarray:
    """The first page of a TIFF with its stored sample type (tifffile: 16-bit colour, float, ... kept as they are)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            check_pixels(path, page.imagewidth, page.imagelength)  # from the IFD, before any strip is read
            try:
                a = page.asarray(buffersize=TIFF_BUFFER_BYTES)  # else the whole compressed file is read at once
            except TypeError:  # a tifffile without buffersize
                a = page.asarray()
            if a.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                a = np.moveaxis(a, 0, -1)  # (samples, H, W) -> (H, W, samples)
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                colours = page.colormap.T  # palette indices -> their (16-bit) colours
                out = np.empty(a.shape + colours.shape[1:], colours.dtype)
                for s in _row_blocks(a):  # the index array numpy makes for a[s] stays one block
                    out[s] = colours[a[s]]
                a = out
    except DataError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(f"{path}: corrupt or unsupported TIFF: {e}") from None
    return a


def _row_blocks(a: np.ndarray) -> list[slice]:
    """Slices of a's first axis (rows) holding about BLOCK_ELEMENTS values each (at least one row)."""
    h = a.shape[0] if a.ndim else 1
    per_row = max(1, a.size // max(1, h))
    step = max(1, BLOCK_ELEMENTS // per_row)
    return [slice(y, min(y + step, h)) for y in range(0, h, step)]


def _pil_array(im: Image.Image) -> np.ndarray:
    """np.asarray(im), without the whole image passing through one bytes object (Pillow's tobytes holds the
    image twice while it joins its chunks): large images are copied row block by row block."""
    w, h = im.size
    rows = max(1, BLOCK_ELEMENTS // max(1, w * len(im.getbands())))
    if rows >= h:
        return np.asarray(im)
    first = np.asarray(im.crop((0, 0, w, rows)))
    a = np.empty((h,) + first.shape[1:], first.dtype)
    a[:rows] = first
    del first
    for y in range(rows, h, rows):
        a[y: y + rows] = np.asarray(im.crop((0, y, w, min(h, y + rows))))
    return a


def _png16_colour(path: str, fmt: str) -> bool:
    hdr = _png_header(path) if fmt == "PNG" else None
    return hdr is not None and hdr[0] == 16 and hdr[1] in (2, 4, 6)


def decode(path: str, what: str = "image") -> tuple[np.ndarray, str]:
    """The pixel values a file stores, unscaled, and its format name.

    Returns (H, W) or (H, W, C) with C in 1..4: grey, grey + alpha, colour, colour + alpha, in the
    file's own sample type (bool, uint8, uint16, int32, float32, ...). Palette images are expanded to
    their colours; CMYK / YCbCr / LAB become RGB. Pillow decodes everything except 16-bit colour PNGs
    (pypng; Pillow keeps only their high bytes) and TIFFs (tifffile, which keeps 16-bit colour and float).
    Only the returned array and the reader's own buffers are held (see the module's "Decode memory").
    Raises DataError naming the file when it is missing, empty, corrupt, has no pixels, or more pixels
    than the pixel limit (`max_image_pixels`, checked from the header before decoding).
    """
    im = _pillow_open(path, what)  # the header: format, size, pixel limit
    fmt = im.format or "?"
    if fmt == "TIFF" or _png16_colour(path, fmt):
        im.close()  # not decoded by Pillow: the other reader's errors name truncated files
        a = _tiff(path) if fmt == "TIFF" else _png16(path)
    else:
        try:
            im.load()  # decode now: a truncated file fails here, not later in a worker
        except (OSError, ValueError, SyntaxError) as e:
            im.close()
            raise DataError(f"{path}: corrupt or truncated {what}: {e}") from None
        if im.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "RGB", "RGBA", "LA"):
            conv = im
        elif im.mode in ("P", "PA"):
            conv = im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB")
        else:  # CMYK, YCbCr, LAB, HSV, ...: Pillow's own conversion to RGB
            conv = im.convert("RGB")
        if conv is not im:
            im.close()
        a = _pil_array(conv)
        conv.close()
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
    when it is uint8). Temporaries stay within one row block (BLOCK_ELEMENTS values). Raises DataError as
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


# numpy channels and bytes per sample of what `decode` returns for a Pillow mode (palettes: see image_header)
_MODE_SAMPLES = {"1": (1, 1, 1), "L": (1, 1, 8), "LA": (2, 1, 8), "RGB": (3, 1, 8), "RGBA": (4, 1, 8),
                 "I;16": (1, 2, 16), "I;16B": (1, 2, 16), "I;16L": (1, 2, 16), "I;16N": (1, 2, 16),
                 "I": (1, 4, 32), "F": (1, 4, 32), "P": (3, 1, 8), "PA": (4, 1, 8)}


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header tells about its decoding, without decoding it.

    width, height: pixels. format: Pillow's format name. mode: Pillow's mode (for TIFFs and 16-bit colour
    PNGs only a guide: tifffile / pypng read those at their stored depth). channels, itemsize: the samples
    per pixel and bytes per sample of the array `decode` returns (palettes expanded to their colours).
    bits: bits per stored sample (1 for bilevel, 16 for 16-bit, 32 for float/int32).
    """

    path: str
    width: int
    height: int
    format: str
    mode: str
    channels: int
    itemsize: int
    bits: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def raw_bytes(self) -> int:
        """Bytes of the decoded samples as the reader library returns them."""
        return self.pixels * self.channels * self.itemsize

    def describe(self) -> str:
        """E.g. '3000 x 3000, TIFF, 16-bit RGB'."""
        kind = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}.get(self.channels, f"{self.channels} channels")
        if self.mode in ("P", "PA") and self.format != "TIFF":
            kind = f"palette -> {kind}"
        return f"{self.width} x {self.height}, {self.format}, {self.bits}-bit {kind}"


def image_header(path: str, what: str = "image", detail: bool = True) -> ImageHeader:
    """The header of an image file (Pillow's; with detail, tifffile's IFD for TIFFs and the IHDR for PNGs too).

    Reads no pixel data. Without detail, channels / itemsize / bits come from Pillow's mode alone (cheap: one
    open per file, what the preflight does for every file). Raises DataError naming the file when it is
    missing, empty, not a readable image, has no pixels, or more than the pixel limit (`max_image_pixels`).
    """
    with _pillow_open(path, what) as im:
        w, h, fmt, mode = im.width, im.height, im.format or "?", im.mode
        channels, itemsize, bits = _MODE_SAMPLES.get(mode, (3, 1, 8))
        if mode == "P" and "transparency" in im.info:
            channels = 4
    if detail and fmt == "TIFF":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                n = 1
                for d in page.shape:
                    n *= int(d)
                channels, itemsize, bits = max(1, n // max(1, w * h)), page.dtype.itemsize, int(page.bitspersample)
                if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                    channels, itemsize = page.colormap.shape[0], page.colormap.dtype.itemsize
        except Exception as e:  # tifffile raises many types for damaged files
            raise DataError(f"{path}: corrupt or unsupported TIFF: {e}") from None
    elif detail and fmt == "PNG":
        hdr = _png_header(path)
        if hdr is not None:
            bits = hdr[0]
            if hdr[0] == 16 and hdr[1] in (2, 4, 6):
                channels, itemsize = {2: 3, 4: 2, 6: 4}[hdr[1]], 2
    return ImageHeader(path, w, h, fmt, mode, channels, itemsize, bits)


def decode_memory_bound(header: ImageHeader) -> int:
    """Bytes: the most one `read_image` of that file may hold at once, as tests/data/test_decode_memory.py
    measures it: the decoded samples as the reader returns them plus 3 x the (H, W, 3) uint8 result."""
    return header.raw_bytes + 3 * header.pixels * 3


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
