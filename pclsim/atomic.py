"""Publishing files and folders atomically: a reader sees nothing or the whole thing, never a part.

The one helper every writer in pclsim uses (results tables, scenario.yaml, run_info.json, the
feature store's chunks and entries, the report). The data go to a hidden temporary name (".tmp-*",
which Parquet dataset readers and pclsim's store skip) in the destination's folder, are flushed and
fsynced, and are renamed over the destination (os.replace, atomic on POSIX). On any error the
temporary file is removed and the OSError propagates as the file system raised it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_file"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int = 0o644):
    """A binary file object to write `path` through; published only when the block ends without error.

    mode: the file's permissions (the temporary file is created 0600; results, reports and store
    entries are meant to be shared). Creates missing parent folders. Raises OSError as the file
    system does, leaving no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # name the file (pyarrow and fsync errors carry none)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path, mode) as f:
        f.write(data)


def atomic_write_text(text: str, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(text.encode("utf-8"), path, mode)


def atomic_write_json(obj, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write `obj` as indented JSON (values json cannot encode as their str) to `path` atomically."""
    atomic_write_text(json.dumps(obj, indent=1, default=str), path, mode)
