"""Reading image files: their stored samples (`decode`), their headers (`image_header`), the pixel limit.

Decode memory: one `pclsim.data.images.read_image` holds at most the samples the reader library returns
(e.g. 6 bytes a pixel for 16-bit RGB) plus about 3x the decoded (H, W, 3) uint8 image
(`decode_memory_bound`): Pillow images reach numpy in row blocks, pypng rows go into one array, tifffile
reads through a bounded buffer, and the 8-bit scaling works in row blocks of `BLOCK_ELEMENTS` values.

Pixel limit: an image whose header gives more than `max_image_pixels()` pixels (width x height) is a
DataError naming the file before any pixel is decoded. The limit is 2**31 pixels unless the
environment variable PCLSIM_MAX_IMAGE_PIXELS sets another (a whole number >= 1). Pillow's own
decompression-bomb guard is kept on at the same limit, so Pillow never refuses or warns about an image
that pclsim accepts, and one above the limit gets pclsim's error.

Imports only `pclsim.errors` (and numpy, Pillow, tifffile, pypng).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, PclsimError

__all__ = ["PIXEL_LIMIT_ENV", "DEFAULT_MAX_IMAGE_PIXELS", "BLOCK_ELEMENTS", "LOSSY_FORMATS", "max_image_pixels",
           "check_pixels", "decode", "ImageHeader", "image_header", "decode_memory_bound"]

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
    # Pillow's limit is process-wide and also guards images pclsim makes itself (crops, resizes): it never
    # goes below the default, so a low limit of ours (checked from each header) cannot refuse those.
    limit = max(limit, DEFAULT_MAX_IMAGE_PIXELS)
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
