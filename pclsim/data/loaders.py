"""Data sets on disk: BMAD as downloaded (method.md section 8), MVTec AD, and a generic folder layout.

Listing a task only reads directory entries and stats the files it keeps; no image is decoded here.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import IMAGE_EXTS, Sample, TaskData, resize_size

__all__ = ["BMAD_TASKS", "MASKED_TASKS", "BMAD_LAYOUTS", "load_stream", "load_bmad_task", "load_folder_task",
           "write_bmad_layout"]

BMAD_TASKS = ("Brain_AD", "Liver_AD", "Retina_RESC_AD", "Chest_AD", "Histopathology_AD", "Retina_OCT2017_AD")
MASKED_TASKS = ("Brain_AD", "Liver_AD", "Retina_RESC_AD")

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


# ---------------------------------------------------------------- listing helpers

def _resolve_dir(base: Path, rel: str) -> Path | None:
    """base/rel, matching each component case-insensitively when the exact name is absent (archives differ)."""
    cur = base
    for part in Path(rel).parts:
        nxt = cur / part
        if not nxt.is_dir():
            if not cur.is_dir():
                return None
            hits = [e for e in os.scandir(cur) if e.is_dir() and e.name.lower() == part.lower()]
            if len(hits) != 1:
                return None
            nxt = Path(hits[0].path)
        cur = nxt
    return cur


# Folders an archiver or an OS adds beside the data: never a task, a class or an image folder.
JUNK_DIRS = ("__MACOSX", "__pycache__", "$RECYCLE.BIN", "System Volume Information")


def _skip(name: str) -> bool:
    return name.startswith(".") or name in JUNK_DIRS


def _images_in(d: Path | None) -> list[str]:
    """Sorted names of the image files directly in d (hidden files, e.g. macOS '._x.png', skipped)."""
    if d is None or not d.is_dir():
        return []
    return sorted(e.name for e in os.scandir(d)
                  if e.is_file() and not _skip(e.name) and e.name.lower().endswith(IMAGE_EXTS))


def _image_dir(base: Path, rel: str) -> Path | None:
    """base/rel, or the same folder with or without a trailing 'img' level when only that one holds images:
    BMAD's own README draws Brain's train folder as train/good/img while the archive has train/good."""
    d = _resolve_dir(base, rel)
    if _images_in(d):
        return d
    parts = Path(rel).parts
    alt = str(Path(*parts[:-1])) if parts[-1].lower() == "img" and len(parts) > 1 else str(Path(rel) / "img")
    a = _resolve_dir(base, alt)
    return a if _images_in(a) else d


def _file_id(path: Path, root: Path) -> str:
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return f"{rel}|{st.st_size}|{st.st_mtime_ns}"


def _make_sample(img: Path, label: int, mask: Path | None, root: Path) -> Sample:
    key = _file_id(img, root)
    if mask is not None:
        key += "|mask:" + _file_id(mask, root)  # the cache also stores masks: a changed mask must invalidate it
    return Sample(key=key, label=int(label), path=str(img), mask_path=str(mask) if mask is not None else None)


def _find_mask(mask_dir: Path | None, name: str, suffixes: tuple[str, ...]) -> Path | None:
    if mask_dir is None or not mask_dir.is_dir():
        return None
    stem = Path(name).stem
    candidates = [name] + [stem + sfx + ext for sfx in suffixes for ext in (".png",) + IMAGE_EXTS]
    for c in candidates:
        p = mask_dir / c
        if p.is_file():
            return p
    return None


def _task_rng(seed: int, name: str, what: str) -> np.random.Generator:
    # per task and split: a task's choice does not depend on which other tasks are in the stream
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(what.encode())])


def _cap(items: list, cap: int | None, rng: np.random.Generator) -> tuple[list, bool]:
    if cap is None or len(items) <= cap:
        return items, False
    keep = np.sort(rng.choice(len(items), size=int(cap), replace=False))
    return [items[i] for i in keep], True


# ---------------------------------------------------------------- BMAD

def load_bmad_task(root: str | Path, name: str, protocol: str = "clean", max_train: int | None = None,
                   max_test: int | None = None, seed: int = 0) -> TaskData:
    """One BMAD category as downloaded. protocol 'paper': validation normals join train and validation anomalies
    join test (method.md section 5); 'clean': train/good and test only. Caps: seeded random choice per split."""
    if name not in BMAD_LAYOUTS:
        raise DataError(f"unknown BMAD task {name!r} (valid: {', '.join(BMAD_TASKS)})")
    if protocol not in ("clean", "paper"):
        raise DataError(f"dataset.protocol: {protocol!r} is not one of clean, paper")
    root = Path(root)
    cat = root / name
    if not cat.is_dir():
        raise DataError(f"{cat}: BMAD category folder not found")
    layout = BMAD_LAYOUTS[name]
    masked = name in MASKED_TASKS

    def entries(split, labels=(0, 1)):
        out = []  # (image path, label, mask path)
        for rel, label, mrel in layout[split]:
            if label not in labels:
                continue
            d = _image_dir(cat, rel)
            md = _resolve_dir(cat, mrel) if mrel else None
            for fn in _images_in(d):
                mask = None
                if masked and label == 1:
                    mask = _find_mask(md, fn, ())
                    if mask is None:
                        raise DataError(f"{d / fn}: no mask of the same name in {cat / mrel}")
                out.append((d / fn, label, mask))
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
    train, cut_tr = _cap(train, max_train, _task_rng(seed, name, "train"))
    test, cut_te = _cap(test, max_test, _task_rng(seed, name, "test"))
    chosen = None
    if protocol == "paper" or cut_tr or cut_te:
        chosen = _chosen(protocol, seed, train, test, root)
    return TaskData(name=name,
                    train=[_make_sample(p, lab, m, root) for p, lab, m in train],
                    test=[_make_sample(p, lab, m, root) for p, lab, m in test],
                    has_masks=masked, chosen=chosen)


def _chosen(protocol, seed, train, test, root: Path) -> dict:
    def rel(p):
        try:
            return Path(p).relative_to(root).as_posix()
        except ValueError:
            return str(p)

    return {"protocol": protocol, "seed": int(seed),
            "train": [rel(p) for p, _, _ in train], "test": [rel(p) for p, _, _ in test]}


# ---------------------------------------------------------------- MVTec AD and generic folders

def load_folder_task(root: str | Path, name: str, style: str = "folder", max_train: int | None = None,
                     max_test: int | None = None, seed: int = 0) -> TaskData:
    """cat/train/good; cat/test/good normal, cat/test/<other> anomalous; masks in cat/ground_truth/<other>/.
    style 'mvtec': masks are <stem>_mask.png and every anomalous image must have one.
    style 'folder': masks are optional, <stem>.png or <stem>_mask.png; if any exists, all must."""
    root = Path(root)
    cat = root / name
    if not cat.is_dir():
        raise DataError(f"{cat}: task folder not found under {root}")
    train_dir = _image_dir(cat, "train/good")
    train_files = _images_in(train_dir)
    if not train_files:
        raise DataError(f"{cat / 'train' / 'good'}: no training images")
    test_root = _resolve_dir(cat, "test")
    if test_root is None:
        raise DataError(f"{cat / 'test'}: test folder not found")
    gt_root = _resolve_dir(cat, "ground_truth")
    suffixes = ("_mask",) if style == "mvtec" else ("", "_mask")
    test, missing = [], []
    for d in sorted(e.name for e in os.scandir(test_root) if e.is_dir() and not _skip(e.name)):
        label = 0 if d.lower() == "good" else 1
        md = _resolve_dir(gt_root, d) if (gt_root is not None and label) else None
        for fn in _images_in(test_root / d):
            mask = None
            if label:
                mask = _find_mask(md, fn, suffixes) if style == "folder" else _find_mask_mvtec(md, fn)
                if mask is None:
                    missing.append(test_root / d / fn)
            test.append((test_root / d / fn, label, mask))
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
    train, cut_tr = _cap(train, max_train, _task_rng(seed, name, "train"))
    test, cut_te = _cap(test, max_test, _task_rng(seed, name, "test"))
    chosen = _chosen(None, seed, train, test, root) if (cut_tr or cut_te) else None
    return TaskData(name=name,
                    train=[_make_sample(p, lab, m, root) for p, lab, m in train],
                    test=[_make_sample(p, lab, m, root) for p, lab, m in test],
                    has_masks=has_masks, chosen=chosen)


def _find_mask_mvtec(mask_dir: Path | None, fn: str) -> Path | None:
    if mask_dir is None:
        return None
    p = mask_dir / (Path(fn).stem + "_mask.png")
    return p if p.is_file() else None


def _categories(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not _skip(e.name))


# ---------------------------------------------------------------- the stream

def load_stream(dataset: dict, data_root: str | None = None) -> list[TaskData]:
    """The scenario's `dataset` mapping -> TaskData in the order of dataset['tasks'].

    kinds: synthetic | bmad | mvtec | folder; data_root overrides dataset['root']. tasks None: every category
    folder under root, sorted (bmad: the BMAD categories present, in the paper's order).
    """
    from .synthetic import synthetic_stream

    kind = dataset.get("kind", "synthetic")
    tasks = dataset.get("tasks")
    if isinstance(tasks, dict):  # multi-category steps: {merged name: [category, ...]} (pclsim.data.merge)
        from .merge import load_merged

        return load_merged(dataset, data_root, load_stream)
    if tasks is not None:
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise DataError(f"dataset.tasks: expected a list of task names, got {tasks!r}")
        tasks = list(tasks)
        dup = [t for i, t in enumerate(tasks) if t in tasks[:i]]
        if dup:
            raise DataError(f"dataset.tasks: task {dup[0]!r} appears twice")
    max_train = dataset.get("max_train")
    max_test = dataset.get("max_test")
    seed = int(dataset.get("seed", 0) or 0)
    size = int(dataset.get("image_size", 224))

    if kind == "synthetic":
        syn = dataset.get("synthetic") or {}
        names = tuple(tasks) if tasks is not None else BMAD_TASKS
        bad = [t for t in names if t not in BMAD_TASKS]
        if bad:
            raise DataError(f"dataset.tasks: unknown synthetic task {bad[0]!r} (valid: {', '.join(BMAD_TASKS)})")
        n_train = int(syn.get("train", 100))
        n_test = int(syn.get("test", 40))
        if max_train is not None:
            n_train = min(n_train, int(max_train))
        if max_test is not None:
            n_test = min(n_test, int(max_test))
        return synthetic_stream(names, train=n_train, test=n_test, size=size, seed=int(syn.get("seed", 0)))

    if kind not in ("bmad", "mvtec", "folder", "visa"):
        raise DataError(f"dataset.kind: {kind!r} is not one of synthetic, bmad, mvtec, visa, folder")
    root_s = data_root if data_root is not None else dataset.get("root")
    if not root_s:
        raise DataError(f"dataset.root: a {kind} data set needs a root folder (or --data-root)")
    root = Path(os.path.expanduser(str(root_s)))
    if not root.is_dir():
        raise DataError(f"{root}: data root not found" if not root.exists() else f"{root}: data root is not a folder")
    root = root.resolve()

    if kind == "bmad":
        if tasks is None:
            tasks = [t for t in BMAD_TASKS if (root / t).is_dir()]
            if not tasks:
                raise DataError(f"{root}: no BMAD category folder ({', '.join(BMAD_TASKS)})")
        bad = [t for t in tasks if t not in BMAD_TASKS]
        if bad:
            raise DataError(f"dataset.tasks: unknown BMAD task {bad[0]!r} (valid: {', '.join(BMAD_TASKS)})")
        protocol = dataset.get("protocol", "clean")
        return [load_bmad_task(root, t, protocol, max_train, max_test, seed) for t in tasks]

    if kind == "visa":  # VisA: the split CSV lists every object, split, label and mask (pclsim.data.visa)
        from .visa import load_visa_task, read_visa_split, visa_categories

        rows = read_visa_split(root)
        return [load_visa_task(root, t, rows, max_train, max_test, seed) for t in (tasks or visa_categories(rows))]

    if tasks is None:
        tasks = _categories(root)
        if not tasks:
            raise DataError(f"{root}: no category folders")
    missing = [t for t in tasks if not (root / t).is_dir()]
    if missing:
        found = _categories(root)
        raise DataError(f"{root / missing[0]}: unknown task {missing[0]!r} (folders here: "
                        f"{', '.join(found[:12]) or 'none'})")
    return [load_folder_task(root, t, kind, max_train, max_test, seed) for t in tasks]


# ---------------------------------------------------------------- writing

def write_bmad_layout(tasks: list[TaskData], out_dir, image_size: int | None = None) -> None:
    """Write tasks (named after BMAD categories) in BMAD's on-disk layout: train -> train folder, test -> test
    good/Ungood, masks under the category's label folder with the image's file name. Images whose shorter side
    is not image_size are resized to it. Refuses to write into a non-empty category folder."""
    out = Path(out_dir)
    for t in tasks:
        if t.name not in BMAD_LAYOUTS:
            raise DataError(f"{t.name!r}: not a BMAD category (valid: {', '.join(BMAD_TASKS)})")
        cat = out / t.name
        if cat.exists() and (not cat.is_dir() or any(cat.iterdir())):
            raise DataError(f"{cat}: already exists and is not empty")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create: {e.strerror}") from None
    for t in tasks:
        layout = BMAD_LAYOUTS[t.name]
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
