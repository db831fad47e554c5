"""numpy -> torch in one place, and chunked reads of the feature store that keep no mapped pages resident.

Arrays from the feature store are read-only memmaps, from Ray's object store read-only buffers.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch

__all__ = ["as_tensor", "read_rows", "release_pages"]


def as_tensor(x, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x (a numpy array of any shape, or a tensor) as a tensor of `dtype` on `device` (None: where it is).

    A read-only array (a memmap of the feature store, an object from Ray's store) is copied first:
    torch.from_numpy needs a writable buffer. Otherwise no copy is made on the host; the dtype is
    converted by torch, on the device, so a float16 store crosses the bus at half the bytes.
    """
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:
            x = np.array(x)
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)


def _mapping(a):
    """The mmap.mmap under a numpy array (a memmap or a view of one), else None."""
    seen = 0
    while a is not None and seen < 64:
        if isinstance(a, mmap.mmap):
            return a
        a, seen = getattr(a, "base", None), seen + 1
    return None


def release_pages(a) -> bool:
    """Drop the pages of the file mapping under `a` from this process's resident set.

    A memory-mapped store entry that has been read once otherwise stays resident in every process
    that read it (it counts in RSS and PSS) until the mapping is closed: a selection that streams a
    9.6 GB task would leave 9.6 GB mapped. madvise(MADV_DONTNEED) on a read-only file mapping only
    unmaps: the data stays in the kernel's page cache, a later read faults it back in, nothing is
    lost. No-op (returns False) for an array not backed by a mapping or without madvise (not Linux).
    """
    m = _mapping(a)
    if m is None or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed mapping, a platform that refuses: nothing resident to drop
        return False
    return True


def read_rows(a, index, dtype=np.float32) -> np.ndarray:
    """a[index] (a slice of rows, an index array, or a tuple of them) as a new writable array of `dtype`;
    a memory-mapped store is released after the copy (`release_pages`), so streaming a whole task keeps
    one block resident, not the task. `a`: a memmap, an array, or a pooled view (banks)."""
    out = np.array(a[index], dtype=dtype)
    release_pages(a)
    return out
