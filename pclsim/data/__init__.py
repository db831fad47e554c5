"""Data: the registry of data-set kinds (synthetic, bmad, mvtec, visa, folder; `kinds.py`), lazy parallel decoding.

Importing the package registers the built-in kinds; a new kind registers itself with
`register_dataset_kind` (see pclsim.data.kinds): a new data-set layout is one module here.

Imports only `pclsim.errors` (and numpy, Pillow, tifffile, pypng, torch for preprocessing).
"""

from .bmad import BMAD_LAYOUTS, BMAD_TASKS, MASKED_TASKS, write_bmad_layout
from .images import IMAGE_EXTS, Sample, TaskData, iter_batches, preprocess, read_image, read_mask
from .kinds import DATASET_KINDS, DatasetKind, dataset_kind_names, get_dataset_kind, register_dataset_kind
from .loaders import load_stream
from .synthetic import SyntheticSample, synthetic_stream

__all__ = ["BMAD_TASKS", "MASKED_TASKS", "BMAD_LAYOUTS", "DATASET_KINDS", "DatasetKind", "IMAGE_EXTS", "Sample",
           "SyntheticSample", "TaskData", "dataset_kind_names", "get_dataset_kind", "load_stream", "preprocess", "iter_batches",
           "read_image", "read_mask", "register_dataset_kind", "synthetic_stream", "write_bmad_layout"]
