"""numpy -> torch in one place: arrays from the feature store and Ray's object store are read-only."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor"]


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
