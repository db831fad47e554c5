"""A fast look at every file before any heavy work: headers only, no decoding.

Catches empty files, files that are not images, and masks whose size differs from their
image, so a sweep fails in seconds with the file named rather than minutes later in a worker.
(A file truncated after its header is still caught when it is decoded.)
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def header_size(path: str, what: str = "image") -> tuple[int, int]:
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: empty {what} file")
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable {what} (corrupt or unknown format)") from None
    except OSError as e:
        raise DataError(f"{path}: corrupt {what}: {e}") from None


def preflight(tasks) -> int:
    """Check every image (and mask) header of the tasks; returns the number of files looked at."""
    n = 0
    for t in tasks:
        for s in list(t.train) + list(t.test):
            if s.path is None:
                continue
            size = header_size(s.path, "image")
            n += 1
            if s.mask_path is not None:
                msize = header_size(s.mask_path, "mask")
                n += 1
                if msize != size:
                    raise DataError(f"{s.mask_path}: mask size {msize[0]}x{msize[1]} differs from its image "
                                    f"{s.path} ({size[0]}x{size[1]})")
    return n
