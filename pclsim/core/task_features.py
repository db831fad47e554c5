"""A task's frozen-backbone features (`TaskFeatures`): the one object the store hands to the study."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TaskFeatures", "calibration_name", "validation_name", "query_sets"]


def validation_name(task: str) -> str:
    """The name under which a task's validation images are queried (never a task name, never written)."""
    return f"{task}::validation"


def calibration_name(task: str) -> str:
    """The name under which a task's calibration images are queried (candidate tables, the evaluator):
    never a task name, never written to a results table."""
    return f"{task}::calibration"


def query_sets(tasks: dict):
    """(name, (n, P, D) patches) of every set scored against banks: each task's test images and, for tasks
    with a calibration split, its calibration images (under `calibration_name`)."""
    for name, tf in tasks.items():
        yield name, tf.test
        if getattr(tf, "calibration", None) is not None:
            yield calibration_name(name), tf.calibration
        if getattr(tf, "validation", None) is not None:
            yield validation_name(name), tf.validation


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
    # (N_cal, P, D): patches of the training images held out of every bank (dataset.calibration), which
    # score the label-free thresholds (pclsim.core.thresholds); None without a calibration split
    calibration: np.ndarray | None = field(default=None, repr=False, compare=False)
    # (N_val, P, D) and (N_val,) int64: a labelled validation split (for `valid` thresholds), or None
    validation: np.ndarray | None = field(default=None, repr=False, compare=False)
    validation_labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    ref: object | None = field(default=None, repr=False, compare=False)  # pclsim.store.entry.FeatureRef

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def __reduce__(self):
        if self.ref is not None:
            return (type(self.ref).open, (self.ref,))
        return (_task_features, (self.name, self.train, self.test, self.labels, self.masks, self.grid,
                                 self.image_size, self.calibration, self.validation, self.validation_labels))


def _task_features(*args) -> TaskFeatures:
    return TaskFeatures(*args)
