"""Publishing files and folders atomically: a reader sees nothing or the whole thing, never a part.

The one helper every writer in pclsim uses (results tables, scenario.yaml, run_info.json, the
feature store's chunks and entries, the report). The data go to a hidden temporary name (".tmp-*",
which Parquet dataset readers and pclsim's store skip) in the destination's folder, are flushed and
fsynced, and are renamed over the destination (os.replace, atomic on POSIX). On any error the
temporary file is removed and the OSError propagates as the file system raised it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_file"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int | None = 0o644):
    """A binary file object to write `path` through; published only when the block ends without error.

    mode: the file's permissions (results, reports and store entries are meant to be shared); None: as
    `open()` creates files, 0o666 less the umask (and a default ACL, where the folder has one), which
    the feature cache uses so that a group sharing it decides with its umask (pclsim.store.sharing).
    With a mode, the temporary file is private (0o600) until it is published. Creates missing parent
    folders (0o777 less the umask). Raises OSError as the file system does, leaving no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        fd, tmp = _create_temp(path.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # name the file (pyarrow and fsync errors carry none)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _create_temp(folder: Path) -> tuple[int, str]:
    """A new file folder/.tmp-<random>, opened for writing, created with 0o666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{os.urandom(6).hex()}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def atomic_write_bytes(data: bytes, path: str | os.PathLike, mode: int | None = 0o644) -> None:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path, mode) as f:
        f.write(data)


def atomic_write_text(text: str, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(text.encode("utf-8"), path, mode)


def atomic_write_json(obj, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Write `obj` as indented JSON (values json cannot encode as their str) to `path` atomically."""
    atomic_write_text(json.dumps(obj, indent=1, default=str), path, mode)
