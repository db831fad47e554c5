"""BMAD (Bao et al. 2024, "BMAD: Benchmarks for Medical Anomaly Detection") as downloaded: its six categories,
their on-disk layouts, the 'clean' and 'paper' protocols (method.md section 8), and writing a stream in
that layout (`pclsim data synth`). Registers `dataset.kind: bmad`. A folder named after one of the
synthetic stream's variant domains (pclsim.data.synthetic_variants, written by `pclsim data synth --tasks
12`) is read with its base category's layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import TaskData, resize_size
from .kinds import DatasetKind, register_dataset_kind
from .synthetic_variants import VARIANTS, base_domain
from .listing import cap_splits, check_all_paired, chosen_record, find_mask, image_dir, images_in, resolve_dir, task_data

__all__ = ["BMAD_TASKS", "MASKED_TASKS", "BMAD_LAYOUTS", "PROTOCOLS", "SYNTHETIC_MARKER", "load_bmad_task",
           "load_bmad", "write_bmad_layout", "write_synthetic_marker"]

BMAD_TASKS = ("Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD")
MASKED_TASKS = ("Brain_AD", "Liver_AD", "Retina_RESC_AD")  # the categories with pixel masks
# dataset.protocol: clean = train/good and test only; paper = validation normals join train and validation
# anomalies join test (method.md section 5)
PROTOCOLS = ("clean", "paper")
# written by `pclsim data synth` beside the category folders: these are not the real BMAD images (the sweep
# records it in data.json, the report's Table 1 says so beside the paper's published figures)
SYNTHETIC_MARKER = "pclsim-synthetic.json"

# Per category: split -> [(image folder, label, mask folder or None)], paths relative to the category folder.
BMAD_LAYOUTS: dict[str, dict[str, list[tuple[str, int, str | None]]]] = {
    "Brain_AD": {
        "train": [("train/good", 0, None)],
        "valid": [("valid/good/img", 0, None), ("valid/Ungood/img", 1, "valid/Ungood/label")],
        "test": [("test/good/img", 0, None), ("test/Ungood/img", 1, "test/Ungood/label")],
    },
    "Liver_AD": {
        "train": [("train/good", 0, None)],
        "valid": [("valid/img/good", 0, None), ("valid/img/Ungood", 1, "valid/label/Ungood")],
        "test": [("test/img/good", 0, None), ("test/img/Ungood", 1, "test/label/Ungood")],
    },
    "Retina_RESC_AD": {
        "train": [("Train/train/good", 0, None)],
        "valid": [("Val/val/good", 0, None), ("Val/val/Ungood", 1, "Val/val_label/Ungood")],
        "test": [("Test/test/good", 0, None), ("Test/test/Ungood", 1, "Test/test_label/Ungood")],
    },
    "Chest_AD": {
        "train": [("train/good", 0, None)],
        "valid": [("val/good", 0, None), ("val/Ungood", 1, None)],
        "test": [("test/good", 0, None), ("test/Ungood", 1, None)],
    },
    "Histopathology_AD": {
        "train": [("train/good", 0, None)],
        "valid": [("valid/good", 0, None), ("valid/Ungood", 1, None)],
        "test": [("test/good", 0, None), ("test/Ungood", 1, None)],
    },
    "Retina_OCT2017_AD": {
        "train": [("train/good", 0, None)],
        "valid": [("val/good", 0, None), ("val/Ungood", 1, None)],
        "test": [("test/good", 0, None), ("test/Ungood", 1, None)],
    },
}


def load_bmad_task(root: str | Path, name: str, protocol: str = "clean", max_train: int | None = None,
                   max_test: int | None = None, seed: int = 0, validation: bool = False) -> TaskData:
    """One BMAD category as downloaded. protocol 'paper': validation normals join train and validation anomalies
    join test (method.md section 5); 'clean': train/good and test only. Caps: seeded random choice per split."""
    if base_domain(name) not in BMAD_LAYOUTS:
        raise DataError(f"unknown BMAD task {name!r} (valid: {', '.join(BMAD_TASKS)})")
    if protocol not in PROTOCOLS:
        raise DataError(f"dataset.protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    root = Path(root)
    cat = root / name
    if not cat.is_dir():
        raise DataError(f"{cat}: BMAD category folder not found")
    layout = BMAD_LAYOUTS[base_domain(name)]
    masked = base_domain(name) in MASKED_TASKS

    def entries(split, labels=(0, 1)):
        out = []  # (image path, label, mask path)
        for rel, label, mrel in layout[split]:
            if label not in labels:
                continue
            d = image_dir(cat, rel)
            md = resolve_dir(cat, mrel) if mrel else None
            for fn in images_in(d):
                mask = None
                if masked and label == 1:
                    mask = find_mask(md, fn, ("",))  # the image's name, in any image format
                    if mask is None:
                        raise DataError(f"{d / fn}: no mask of the same name in {cat / mrel}")
                out.append((d / fn, label, mask))
            if masked and label == 1:  # every mask file of this folder belongs to one of its images
                check_all_paired([md], [m for _, _, m in out])
        return out

    train = entries("train")
    if not train:
        raise DataError(f"{cat / layout['train'][0][0]}: no training images")
    test = entries("test")
    if protocol == "paper":
        train += entries("valid", labels=(0,))
        test += entries("valid", labels=(1,))
    if not test:
        raise DataError(f"{cat}: no test images (expected them under {layout['test'][0][0]} and "
                        f"{layout['test'][1][0]})")
    train, test, cut = cap_splits(name, train, test, max_train, max_test, seed)
    chosen = chosen_record(protocol, seed, train, test, root) if protocol == "paper" or cut else None
    task = task_data(name, train, test, root, masked, chosen)
    if validation:  # a `valid` threshold: the labelled validation split, apart from train and test
        if protocol == "paper":
            raise DataError(f"{cat}: under protocol paper the validation images join train and test; a valid "
                            "threshold needs protocol clean")
        val = entries("valid")
        if not any(lab == 1 for _, lab, _ in val):
            raise DataError(f"{cat / layout['valid'][1][0]}: no anomalous validation image (a valid threshold needs "
                            "some)")
        task.validation = task_data(name, val, [], root, masked).train
    return task


def load_bmad(dataset: dict, root: Path, tasks: list[str] | None) -> list[TaskData]:
    """The `bmad` kind (pclsim.data.kinds): the categories asked for, or those present under root in the
    paper's order. DataError for an unknown category or none found."""
    if tasks is None:
        tasks = [t for t in BMAD_TASKS + tuple(VARIANTS) if (root / t).is_dir()]
        if not tasks:
            raise DataError(f"{root}: no BMAD category folder ({', '.join(BMAD_TASKS)})")
    bad = [t for t in tasks if base_domain(t) not in BMAD_TASKS]
    if bad:
        raise DataError(f"dataset.tasks: unknown BMAD task {bad[0]!r} (valid: {', '.join(BMAD_TASKS)})")
    protocol = dataset.get("protocol", "clean")
    seed = int(dataset.get("seed", 0) or 0)
    return [load_bmad_task(root, t, protocol, dataset.get("max_train"), dataset.get("max_test"), seed,
                           validation=bool(dataset.get("validation")))
            for t in tasks]


register_dataset_kind(DatasetKind("bmad", load=load_bmad))


def write_bmad_layout(tasks: list[TaskData], out_dir, image_size: int | None = None) -> None:
    """Write tasks (named after BMAD categories) in BMAD's on-disk layout: train -> train folder, test -> test
    good/Ungood, masks under the category's label folder with the image's file name. Images whose shorter side
    is not image_size are resized to it. Refuses to write into a non-empty category folder."""
    out = Path(out_dir)
    for t in tasks:
        if base_domain(t.name) not in BMAD_LAYOUTS:
            raise DataError(f"{t.name!r}: not a BMAD category (valid: {', '.join(BMAD_TASKS)})")
        cat = out / t.name
        if cat.exists() and (not cat.is_dir() or any(cat.iterdir())):
            raise DataError(f"{cat}: already exists and is not empty")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create: {e.strerror}") from None
    for t in tasks:
        layout = BMAD_LAYOUTS[base_domain(t.name)]
        cat = out / t.name
        tr_dir = cat / layout["train"][0][0]
        (good_rel, _, _), (bad_rel, _, mask_rel) = layout["test"]
        dirs = {0: cat / good_rel, 1: cat / bad_rel}
        mask_dir = cat / mask_rel if mask_rel else None
        for d in [tr_dir, *dirs.values()] + ([mask_dir] if mask_dir is not None else []):
            d.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(t.train):
            img, _ = s.load()
            _save(tr_dir / f"{i:05d}.png", img, image_size)
        for i, s in enumerate(t.test):
            img, mask = s.load()
            fn = f"{i:05d}.png"
            _save(dirs[int(s.label)] / fn, img, image_size)
            if mask_dir is not None and s.label == 1 and mask is not None:
                _save(mask_dir / fn, mask.astype(np.uint8) * 255, image_size, nearest=True)


def write_synthetic_marker(out_dir, info: dict) -> None:
    """Write SYNTHETIC_MARKER into out_dir: a JSON record ({"synthetic": true, **info}) that the folder holds
    pclsim's synthetic stream, not BMAD as downloaded. Raises DataError when it cannot be written."""
    path = Path(out_dir) / SYNTHETIC_MARKER
    try:
        path.write_text(json.dumps({"synthetic": True, "written_by": "pclsim data synth", **info}, indent=1) + "\n")
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None


def _save(path: Path, a: np.ndarray, image_size: int | None, nearest: bool = False) -> None:
    if a.ndim == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        a = a[..., 0]  # grey stored as one channel, as the real grey categories are
    im = Image.fromarray(np.ascontiguousarray(a))
    if image_size:
        h, w = a.shape[:2]
        nh, nw = resize_size(h, w, int(image_size))
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.NEAREST if nearest else Image.BILINEAR)
    try:
        im.save(path)
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
