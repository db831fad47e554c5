"""The registry of data-set kinds: the values `dataset.kind` may take, and how each loads a stream.

A kind is one `DatasetKind`, registered once with `register_dataset_kind` in the module that
implements it (`data/bmad.py`, `data/folder.py`, `data/visa.py`, `data/synthetic.py`). The
scenario's allowed `dataset.kind` values are this registry's names, and `load_stream`
(`data/loaders.py`) dispatches on it, so a new layout touches one module plus its test:

```python
register_dataset_kind(DatasetKind("mine", load=load_mine, needs_root=True))
```

This module imports nothing of pclsim's beyond its errors, so every kind module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import DataError

__all__ = ["DatasetKind", "DATASET_KINDS", "register_dataset_kind", "get_dataset_kind", "dataset_kind_names"]


@dataclass(frozen=True)
class DatasetKind:
    """How one kind of data set becomes a stream of tasks.

    name: the `dataset.kind` value.
    load(dataset, root, tasks) -> list[TaskData]: `dataset` is the scenario's `dataset` mapping
        (max_train, max_test, seed, image_size, protocol, synthetic ...); `root` the data folder as an
        existing, resolved `pathlib.Path` (None when `needs_root` is False); `tasks` the task names asked
        for, in stream order, or None for "every task the data set has" in the kind's own order. Returns
        the tasks in that order; raises DataError naming the file, folder or key at fault.
    needs_root: whether the kind reads a folder (`dataset.root` / `--data-root`).
    """

    name: str
    load: Callable
    needs_root: bool = True


DATASET_KINDS: dict[str, DatasetKind] = {}


def register_dataset_kind(kind: DatasetKind) -> DatasetKind:
    """Add (or replace) a kind under `kind.name`; returns it. ValueError for a name that is not a plain word."""
    if not isinstance(kind.name, str) or not kind.name.isidentifier():
        raise ValueError(f"dataset kind name must be a plain word, got {kind.name!r}")
    DATASET_KINDS[kind.name] = kind
    return kind


def dataset_kind_names() -> tuple[str, ...]:
    """The registered kinds, in registration order (the built-ins first)."""
    return tuple(DATASET_KINDS)


def get_dataset_kind(name: str) -> DatasetKind:
    """The kind registered as `name`; DataError naming `dataset.kind` and the valid values otherwise."""
    try:
        return DATASET_KINDS[name]
    except (KeyError, TypeError):
        raise DataError(f"dataset.kind: {name!r} is not one of {', '.join(DATASET_KINDS)}") from None
