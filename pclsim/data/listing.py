"""Listing a data set's folders: the helpers every on-disk kind shares (bmad, folder, visa).

Listing reads directory entries and stats the files it keeps; no image is decoded here. A sample's
key (`make_sample`) is its path relative to the data root, size and mtime (and its mask's), so a
changed file invalidates its cached features.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import IMAGE_EXTS, Sample, TaskData

__all__ = ["JUNK_DIRS", "resolve_dir", "images_in", "image_dir", "make_sample", "find_mask", "check_all_paired", "task_rng", "cap", "cap_splits", "task_data",
           "chosen_record", "category_folders", "skip_name"]


def resolve_dir(base: Path, rel: str) -> Path | None:
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


def skip_name(name: str) -> bool:
    """Whether a directory entry is hidden or an archiver's / OS's folder (JUNK_DIRS): never data."""
    return name.startswith(".") or name in JUNK_DIRS


def images_in(d: Path | None) -> list[str]:
    """Sorted names of the image files directly in d (hidden files, e.g. macOS '._x.png', skipped)."""
    if d is None or not d.is_dir():
        return []
    return sorted(e.name for e in os.scandir(d)
                  if e.is_file() and not skip_name(e.name) and e.name.lower().endswith(IMAGE_EXTS))


def image_dir(base: Path, rel: str) -> Path | None:
    """base/rel, or the same folder with or without a trailing 'img' level when only that one holds images:
    BMAD's own README draws Brain's train folder as train/good/img while the archive has train/good."""
    d = resolve_dir(base, rel)
    if images_in(d):
        return d
    parts = Path(rel).parts
    alt = str(Path(*parts[:-1])) if parts[-1].lower() == "img" and len(parts) > 1 else str(Path(rel) / "img")
    a = resolve_dir(base, alt)
    return a if images_in(a) else d


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


def make_sample(img: Path, label: int, mask: Path | None, root: Path) -> Sample:
    """A Sample of one image file (label 0 normal, 1 anomalous; its mask file or None); DataError if unreadable."""
    key = _file_id(img, root)
    if mask is not None:
        key += "|mask:" + _file_id(mask, root)  # the cache also stores masks: a changed mask must invalidate it
    return Sample(key=key, label=int(label), path=str(img), mask_path=str(mask) if mask is not None else None)


def find_mask(mask_dir: Path | None, name: str, suffixes: tuple[str, ...]) -> Path | None:
    """The mask of image file `name` in mask_dir: the same name, else <stem><suffix><ext> for every image
    format the reading rule accepts (IMAGE_EXTS, either case); None when absent."""
    if mask_dir is None or not mask_dir.is_dir():
        return None
    stem = Path(name).stem
    exts = [e for ext in (".png",) + IMAGE_EXTS for e in (ext, ext.upper())]
    candidates = [name] + [stem + sfx + ext for sfx in suffixes for ext in exts]
    for c in candidates:
        p = mask_dir / c
        if p.is_file():
            return p
    return None


def check_all_paired(mask_dirs, used) -> None:
    """DataError naming the folder when a mask folder holds image files that no test image was paired with
    (a naming rule the kind does not know would otherwise leave the task without masks, or with fewer)."""
    used = {Path(u).resolve() for u in used if u is not None}
    for d in sorted({Path(d) for d in mask_dirs if d is not None and Path(d).is_dir()}):
        left = [fn for fn in images_in(d) if (d / fn).resolve() not in used]
        if left:
            raise DataError(f"{d}: {len(left)} mask file(s) not paired with any anomalous test image (e.g. {left[0]}); "
                            "a mask is named like its image, or <image stem>_mask, in any image format")


def task_rng(seed: int, name: str, what: str) -> np.random.Generator:
    """The generator of one task's split ("train" / "test"): a task's choice does not depend on which other
    tasks are in the stream."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(what.encode())])


def cap(items: list, limit: int | None, rng: np.random.Generator) -> tuple[list, bool]:
    """(at most `limit` of items, a seeded random choice kept in their order; whether any was dropped)."""
    if limit is None or len(items) <= limit:
        return items, False
    keep = np.sort(rng.choice(len(items), size=int(limit), replace=False))
    return [items[i] for i in keep], True


def cap_splits(name: str, train: list, test: list, max_train: int | None, max_test: int | None, seed: int
               ) -> tuple[list, list, bool]:
    """Both splits of a task capped (`cap`, each split seeded by (seed, task, split)); (train, test, any cut)."""
    train, cut_train = cap(train, max_train, task_rng(seed, name, "train"))
    test, cut_test = cap(test, max_test, task_rng(seed, name, "test"))
    return train, test, cut_train or cut_test


def task_data(name: str, train: list, test: list, root: Path, has_masks: bool, chosen: dict | None = None
              ) -> TaskData:
    """TaskData from (image path, label, mask path or None) entries of each split."""
    return TaskData(name=name, train=[make_sample(p, lab, m, root) for p, lab, m in train],
                    test=[make_sample(p, lab, m, root) for p, lab, m in test], has_masks=has_masks, chosen=chosen)


def chosen_record(protocol, seed, train, test, root: Path) -> dict:
    """data.json's record of which files seeded caps (or the paper protocol) chose, paths relative to root."""

    def rel(p):
        try:
            return Path(p).relative_to(root).as_posix()
        except ValueError:
            return str(p)

    return {"protocol": protocol, "seed": int(seed),
            "train": [rel(p) for p, _, _ in train], "test": [rel(p) for p, _, _ in test]}


def category_folders(root: Path) -> list[str]:
    """The category (task) folders directly under root, sorted."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not skip_name(e.name))
