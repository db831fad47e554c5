"""A scenario's `dataset` mapping -> the stream of tasks, through the registry of data-set kinds.

Each kind lives in its own module and registers itself (pclsim.data.kinds): synthetic
(`synthetic.py`), bmad (`bmad.py`, BMAD's constants and layouts), mvtec and folder (`folder.py`),
visa (`visa.py`). Importing this module registers the built-ins. Listing a task only reads directory
entries and stats the files it keeps; no image is decoded here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from . import synthetic as _synthetic, folder as _folder, visa as _visa  # noqa: F401  (register their kinds)
from .bmad import BMAD_LAYOUTS, BMAD_TASKS, MASKED_TASKS, load_bmad_task, write_bmad_layout
from .folder import load_folder_task
from .images import TaskData
from .kinds import DATASET_KINDS, get_dataset_kind
from .merge import load_merged

__all__ = ["BMAD_TASKS", "MASKED_TASKS", "BMAD_LAYOUTS", "DATASET_KINDS", "load_stream", "resolve_data_root", "load_bmad_task",
           "load_folder_task", "write_bmad_layout"]


def _task_list(tasks) -> list[str] | None:
    """dataset.tasks as a list of distinct names (None: every task of the data set); DataError otherwise."""
    if tasks is None:
        return None
    if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"dataset.tasks: expected a list of task names, got {tasks!r}")
    tasks = list(tasks)
    dup = [t for i, t in enumerate(tasks) if t in tasks[:i]]
    if dup:
        raise DataError(f"dataset.tasks: task {dup[0]!r} appears twice")
    return tasks


def resolve_data_root(dataset: dict, root: str | None) -> Path:
    """The data folder of an on-disk kind, resolved: `root` (--data-root) or dataset.root, `~` expanded.

    Raises DataError naming dataset.root when none is given, or the folder when it is missing or a file.
    """
    root_s = root if root is not None else dataset.get("root")
    if not root_s:
        raise DataError(f"dataset.root: a {dataset.get('kind')} data set needs a root folder (or --data-root)")
    path = Path(os.path.expanduser(str(root_s)))
    if not path.is_dir():
        raise DataError(f"{path}: data root not found" if not path.exists() else f"{path}: data root is not a folder")
    return path.resolve()


def load_stream(dataset: dict, data_root: str | None = None, validation: bool = False) -> list[TaskData]:
    """The scenario's `dataset` mapping -> TaskData in the order of dataset['tasks'].

    dataset['kind'] is any registered kind (pclsim.data.kinds.DATASET_KINDS; default synthetic);
    data_root overrides dataset['root']. tasks None: every task of the data set, in the kind's own
    order (folders: sorted; bmad: the categories present, in the paper's order). tasks a mapping
    {merged name: [category, ...]}: multi-category steps (pclsim.data.merge). dataset['calibration'] > 0
    holds that share of each task's training images out of its banks (pclsim.data.calibration);
    validation: also read each task's labelled validation split (for a `valid` threshold), appended last.
    Raises DataError naming the key, file or folder at fault.
    """
    from .calibration import append_validation, split_calibration

    fraction = dataset.get("calibration") or 0
    tasks = _load_stream(dict(dataset, validation=True) if validation else dataset, data_root)
    if fraction:
        tasks = [split_calibration(t, fraction, int(dataset.get("seed", 0) or 0)) for t in tasks]
    if validation:
        tasks = [append_validation(t, dataset.get("kind", "synthetic")) for t in tasks]
    return tasks


def _load_stream(dataset: dict, data_root: str | None = None) -> list[TaskData]:
    """load_stream without the held-out images (a merged step is split once, after its merge)."""
    kind = get_dataset_kind(dataset.get("kind", "synthetic"))
    if isinstance(dataset.get("tasks"), dict):  # multi-category steps: each category loaded, then merged
        return load_merged(dataset, data_root, _load_stream)
    tasks = _task_list(dataset.get("tasks"))
    root = resolve_data_root(dataset, data_root) if kind.needs_root else None
    return kind.load(dataset, root, tasks)
