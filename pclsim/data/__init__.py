"""Data: the built-in synthetic medical stream, BMAD / MVTec AD / folder loaders, lazy parallel decoding."""

from .images import IMAGE_EXTS, Sample, TaskData, iter_batches, preprocess, read_image, read_mask
from .loaders import BMAD_LAYOUTS, BMAD_TASKS, MASKED_TASKS, load_stream, write_bmad_layout
from .synthetic import SyntheticSample, synthetic_stream

__all__ = ["BMAD_TASKS", "MASKED_TASKS", "BMAD_LAYOUTS", "IMAGE_EXTS", "Sample", "SyntheticSample", "TaskData",
           "load_stream", "preprocess", "iter_batches", "read_image", "read_mask", "synthetic_stream",
           "write_bmad_layout"]
