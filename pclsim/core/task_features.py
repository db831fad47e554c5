"""A task's frozen-backbone features (`TaskFeatures`): the one object the store hands to the study."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TaskFeatures"]


@dataclass
class TaskFeatures:
    """A task's frozen-backbone features: train patches pooled, test patches per image.

    From the feature store (pclsim.store.writing) train and test are read-only memmaps in the store's
    dtype (model.feature_dtype: float16 by default, or float32); a consumer that needs float32
    converts them chunk by chunk, never the whole task at once. `ref`, the store handle, makes
    pickling (Ray) ship the handle, not the arrays: unpickling maps the entry again.
    """

    name: str
    train: np.ndarray            # (N_train * P, D) float16 | float32 (memmap from the store)
    test: np.ndarray             # (N_test, P, D) float16 | float32 (memmap from the store)
    labels: np.ndarray           # (N_test,) int64, 1 = anomalous
    masks: np.ndarray | None     # (N_test, S, S) bool, None when the task has no pixel labels
    grid: tuple[int, int]        # patch grid, h * w = P
    image_size: int
    ref: object | None = field(default=None, repr=False, compare=False)  # pclsim.store.entry.FeatureRef

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def __reduce__(self):
        if self.ref is not None:
            return (type(self.ref).open, (self.ref,))
        return (_task_features, (self.name, self.train, self.test, self.labels, self.masks, self.grid,
                                 self.image_size))


def _task_features(*args) -> TaskFeatures:
    return TaskFeatures(*args)
