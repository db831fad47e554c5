"""Content-addressed feature cache: a task's frozen-backbone features are extracted once.

Key = the extractor's identity (backbone, weights, layers, size) + the task's sample keys (file
path, size, mtime, or the synthetic generator's version and parameters) + labels
(`pclsim.store.entry.task_key`). No source file is hashed: a synthetic image's identity is
`pclsim.data.synthetic.SYNTH_VERSION` plus its parameters. The entries themselves live
in the on-disk feature store (pclsim.store.writing: chunked, memory-mapped, float16 by default), written
atomically, so a crash never leaves one that a later run would trust.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.task_features import TaskFeatures
from .entry import task_key

__all__ = ["default_cache_dir", "task_key", "load_or_extract", "load_cached", "remove_stale_temporaries"]


def default_cache_dir() -> Path:
    """$PCLSIM_CACHE_DIR (resolved), else ~/.cache/pclsim."""
    env = os.environ.get("PCLSIM_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "pclsim"


def load_cached(root: Path, key: str, name: str | None = None, image_size: int | None = None) -> TaskFeatures | None:
    """The stored features under `key` (a store key, see store.store_key), memory-mapped, or None.
    (`name` and `image_size` are kept for callers of 0.1.0; the entry's meta.json holds both.)"""
    from .writing import lookup

    ref = lookup(root, key)
    return ref.open() if ref is not None else None


def load_or_extract(task, extractor, *, cache_root: Path | None = None, workers: int = 2,
                    progress=None, dtype: str = "float16") -> TaskFeatures:
    """TaskFeatures of one task (pclsim.data.TaskData), from the store or by running `extractor` into it.

    train (N*P, D) and test (N, P, D) are read-only memmaps in `dtype` ("float16" | "float32");
    see pclsim.store.writing. progress, if given, is called with the number of images of every batch.
    """
    from .writing import extract_task

    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    return extract_task(task, extractor, root, dtype, workers=workers, progress=progress).open()


def remove_stale_temporaries(root, quiet: bool = False) -> tuple[int, int, int]:
    """At a sweep's start: remove the temporary folders and files killed processes left in the cache `root`
    (pclsim.store.sharing.remove_stale: this user's, whose owner process is dead, or unchanged for
    STALE_AGE_S, 24 h, where the owner cannot be checked from here) and, unless `quiet`, say once on
    stderr how many and how much space came back (nothing when none).
    Returns (folders removed, files removed, bytes freed)."""
    import sys

    from .sharing import remove_stale

    folders, files, freed = remove_stale(Path(root))
    if (folders or files) and not quiet:
        what = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((folders, "folder"), (files, "file")) if n]
        what[0] = what[0].replace(" ", " stale temporary ", 1)  # "2 stale temporary folders and 1 file"
        print(f"cache: removed {' and '.join(what)} ({freed / 1e6:.1f} MB) in {root}",
              file=sys.stderr, flush=True)
    return folders, files, freed
