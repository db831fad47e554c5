"""MVTec AD (Bergmann et al. 2019) and generic folder data sets: one folder per task (`dataset.kind: mvtec`
and `folder`). Layout per task: train/good; test/good normal, test/<other> anomalous; masks in
ground_truth/<other>/. Registers both kinds.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..errors import DataError
from .images import TaskData
from .kinds import DatasetKind, register_dataset_kind
from .listing import (cap_splits, check_all_paired, category_folders, chosen_record, find_mask, image_dir, images_in, resolve_dir,
                      skip_name, task_data)

__all__ = ["load_folder_task", "load_folders"]


def load_folder_task(root: str | Path, name: str, style: str = "folder", max_train: int | None = None,
                     max_test: int | None = None, seed: int = 0) -> TaskData:
    """cat/train/good; cat/test/good normal, cat/test/<other> anomalous; masks in cat/ground_truth/<other>/.
    style 'mvtec': masks are <stem>_mask.<ext> (or the image's own name) and every anomalous image must have one.
    style 'folder': masks are optional, <stem>.<ext> or <stem>_mask.<ext>; if any exists, all must.
    <ext>: any image format the reading rule accepts. A mask file no image is paired with is a DataError."""
    root = Path(root)
    cat = root / name
    if not cat.is_dir():
        raise DataError(f"{cat}: task folder not found under {root}")
    train_dir = image_dir(cat, "train/good")
    train_files = images_in(train_dir)
    if not train_files:
        raise DataError(f"{cat / 'train' / 'good'}: no training images")
    test_root = resolve_dir(cat, "test")
    if test_root is None:
        raise DataError(f"{cat / 'test'}: test folder not found")
    gt_root = resolve_dir(cat, "ground_truth")
    suffixes = ("_mask",) if style == "mvtec" else ("", "_mask")
    test, missing, mask_dirs = [], [], []
    for d in sorted(e.name for e in os.scandir(test_root) if e.is_dir() and not skip_name(e.name)):
        label = 0 if d.lower() == "good" else 1
        md = resolve_dir(gt_root, d) if (gt_root is not None and label) else None
        mask_dirs.append(md)
        for fn in images_in(test_root / d):
            mask = None
            if label:
                mask = find_mask(md, fn, suffixes)
                if mask is None:
                    missing.append(test_root / d / fn)
            test.append((test_root / d / fn, label, mask))
    if gt_root is not None:  # every mask file belongs to an image; a mask folder of a defect that has none too
        mask_dirs += [gt_root / e.name for e in os.scandir(gt_root) if e.is_dir() and not skip_name(e.name)
                      and not (test_root / e.name).is_dir()]
    check_all_paired(mask_dirs, [m for _, _, m in test])
    if not test:
        raise DataError(f"{test_root}: no test images")
    if not any(lab for _, lab, _ in test):
        raise DataError(f"{test_root}: no anomalous test images (expected folders other than 'good')")
    has_masks = any(m is not None for _, _, m in test)
    if style == "mvtec" and gt_root is None:
        raise DataError(f"{cat / 'ground_truth'}: MVTec ground-truth folder not found")
    if has_masks and missing:
        where = gt_root if gt_root is not None else cat / "ground_truth"
        raise DataError(f"{missing[0]}: no mask for this anomalous image under {where}")
    train = [(train_dir / fn, 0, None) for fn in train_files]
    train, test, cut = cap_splits(name, train, test, max_train, max_test, seed)
    return task_data(name, train, test, root, has_masks, chosen_record(None, seed, train, test, root) if cut else None)


def load_folders(dataset: dict, root: Path, tasks: list[str] | None, style: str = "folder") -> list[TaskData]:
    """The `mvtec` and `folder` kinds (pclsim.data.kinds; style as in `load_folder_task`): the task folders
    asked for, or every category folder under root, sorted. DataError naming the folder for a missing task
    or an empty root."""
    if tasks is None:
        tasks = category_folders(root)
        if not tasks:
            raise DataError(f"{root}: no category folders")
    missing = [t for t in tasks if not (root / t).is_dir()]
    if missing:
        found = category_folders(root)
        raise DataError(f"{root / missing[0]}: unknown task {missing[0]!r} (folders here: "
                        f"{', '.join(found[:12]) or 'none'})")
    seed = int(dataset.get("seed", 0) or 0)
    return [load_folder_task(root, t, style, dataset.get("max_train"), dataset.get("max_test"), seed) for t in tasks]


register_dataset_kind(DatasetKind("mvtec", load=partial(load_folders, style="mvtec")))
register_dataset_kind(DatasetKind("folder", load=partial(load_folders, style="folder")))
