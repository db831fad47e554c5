"""VisA as downloaded: the split CSV decides train/test, labels and masks (dataset.kind: visa).

Layout (Zou et al. 2022, "SPot-the-Difference ..."; the data set's own split file):
```
<root>/split_csv/1cls.csv        object,split,label,image,mask   (paths relative to <root>)
<root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG
<root>/<object>/Data/Masks/Anomaly/*.png
```
`split` is train or test, `label` normal or anomaly; `mask` is empty for normal images. Masks
are 0 / non-zero images (any non-zero pixel is anomalous). Listing reads the CSV and stats the
files; nothing is decoded here. Registers `dataset.kind: visa`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError
from .images import TaskData
from .kinds import DatasetKind, register_dataset_kind
from .listing import cap_splits, task_data

__all__ = ["VISA_SPLIT_CSV", "read_visa_split", "visa_categories", "load_visa_task", "load_visa"]

VISA_SPLIT_CSV = "split_csv/1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1, "good": 0, "bad": 1}


def read_visa_split(root: str | Path, csv_rel: str = VISA_SPLIT_CSV) -> list[dict]:
    """Rows of the split CSV as dicts (object, split, label 0/1, image, mask, line).

    Raises DataError naming the file (and line) for a missing file, missing columns, an unknown
    split or label, or an anomalous row without a mask path.
    """
    path = Path(root) / csv_rel
    if not path.is_file():
        raise DataError(f"{path}: VisA split file not found (expected <root>/{csv_rel})")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in _COLUMNS if c not in cols]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(_COLUMNS)})")
            rows = []
            for n, raw in enumerate(reader, start=2):
                r = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                split, label = r["split"].lower(), r["label"].lower()
                if split not in ("train", "test"):
                    raise DataError(f"{path}:{n}: split {r['split']!r} is not train or test")
                if label not in _LABELS:
                    raise DataError(f"{path}:{n}: label {r['label']!r} is not normal or anomaly")
                if _LABELS[label] == 1 and split == "test" and not r["mask"]:
                    raise DataError(f"{path}:{n}: anomalous image {r['image']} has no mask path")
                rows.append({"object": r["object"], "split": split, "label": _LABELS[label], "image": r["image"],
                             "mask": r["mask"] or None, "line": n})
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def visa_categories(rows: list[dict]) -> list[str]:
    """Every object named in the split file, sorted."""
    return sorted({r["object"] for r in rows})


def load_visa_task(root: str | Path, name: str, rows: list[dict] | None = None, max_train: int | None = None,
                   max_test: int | None = None, seed: int = 0) -> TaskData:
    """One VisA object: train = its `train` rows (anomalous train rows are skipped: PatchCore trains on normals),
    test = its `test` rows with masks. Caps: seeded random choice per split, as for every other kind."""
    root = Path(root)
    rows = read_visa_split(root) if rows is None else rows
    mine = [r for r in rows if r["object"] == name]
    if not mine:
        raise DataError(f"{root / VISA_SPLIT_CSV}: unknown object {name!r} (objects: "
                        f"{', '.join(visa_categories(rows)) or 'none'})")

    def entry(r):
        img = root / r["image"]
        if not img.is_file():
            raise DataError(f"{img}: image listed in {VISA_SPLIT_CSV} (line {r['line']}) not found")
        mask = None
        if r["label"] == 1 and r["mask"]:
            mask = root / r["mask"]
            if not mask.is_file():
                raise DataError(f"{mask}: mask listed in {VISA_SPLIT_CSV} (line {r['line']}) not found")
        return img, r["label"], mask

    train = [entry(r) for r in mine if r["split"] == "train" and r["label"] == 0]
    test = [entry(r) for r in mine if r["split"] == "test"]
    if not train:
        raise DataError(f"{root / VISA_SPLIT_CSV}: object {name!r} has no normal training images")
    if not test or not any(lab for _, lab, _ in test):
        raise DataError(f"{root / VISA_SPLIT_CSV}: object {name!r} has no anomalous test images")
    train, test, _ = cap_splits(name, train, test, max_train, max_test, seed)
    return task_data(name, train, test, root, any(m is not None for _, _, m in test))


def load_visa(dataset: dict, root: Path, tasks: list[str] | None) -> list[TaskData]:
    """The `visa` kind (pclsim.data.kinds): the objects asked for, or every object of the split file, sorted."""
    rows = read_visa_split(root)
    seed = int(dataset.get("seed", 0) or 0)
    return [load_visa_task(root, t, rows, dataset.get("max_train"), dataset.get("max_test"), seed)
            for t in (tasks or visa_categories(rows))]


register_dataset_kind(DatasetKind("visa", load=load_visa))
