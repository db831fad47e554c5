"""A feature cache several users and sweeps share: who owns what, temporary folders, stale leftovers.

The cache folder (`PCLSIM_CACHE_DIR`) may be one folder on shared storage for a whole group. Then:

- everything pclsim creates there gets its mode from the creator's umask and its group from the
  folder (a setgid folder gives its group to everything made inside it): files as `open()` makes
  them (0o666 & ~umask), folders as `mkdir` does (0o777 & ~umask), never the private 0o600 / 0o700
  of `tempfile`. A group shares a cache with `chgrp GROUP cache && chmod 2775 cache` and
  `umask 002` in every member's environment (and on the Ray nodes);
- nothing of another user is moved, replaced or deleted: an entry of theirs that cannot be read,
  or that is damaged, is a `PclsimError` naming it, its owner and the fix (`unreadable`, `not_ours`);
- every temporary folder (`features/.tmp-*` while an entry is written, `features/.trash-*` while a
  damaged one is deleted) holds an owner record (`OWNER`: host, boot, pid namespace, pid and the
  process's start time, so a reused pid is not taken for the owner); `remove_stale` removes those
  of this user whose owner is dead, or, when the owner cannot be checked from here (another host,
  a reboot, no record), that have not changed for `STALE_AGE_S`. A SIGKILL (OOM killer,
  preemption, `ray job stop`) leaves such a folder, task-sized; the next sweep on the same host takes
  it away (`pclsim.store.cache.remove_stale_temporaries`), one elsewhere a day later. The same sweep
  removes this user's chunk files of tasks whose entry is complete (features/.parts-<key>/).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
import uuid
from pathlib import Path

from ..errors import PclsimError

try:
    import pwd
except ImportError:  # not POSIX
    pwd = None

__all__ = ["OWNER", "STALE_AGE_S", "make_temp_dir", "write_owner", "owner_state", "remove_stale", "owner_name",
           "is_ours", "unreadable", "not_ours", "cannot_write", "remove_own"]

OWNER = ".pclsim-owner.json"  # the owner record inside a temporary folder
STALE_AGE_S = 24 * 3600  # seconds without change after which a temporary folder or file whose owner cannot be
                         # checked from this host (another node, a reboot, no record) is taken as abandoned:
                         # far longer than any write of one task or chunk between two file changes
TEMP_PREFIXES = (".tmp-", ".trash-")

_FIX = ("ask its owner to make the cache readable by the group (chmod -R g+rX on the cache folder, and "
        "`chgrp GROUP cache && chmod 2775 cache` plus `umask 002` for what is written next), or set "
        "PCLSIM_CACHE_DIR to a folder of your own")


# --------------------------------------------------------------------------------------- who owns what
def owner_name(uid: int) -> str:
    """The user name of `uid`, or "uid N" where the system has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (AttributeError, KeyError):
        return f"uid {uid}"


def _owner_of(path: Path) -> str:
    """The user owning `path`, or its nearest existing folder above (a folder not yet made)."""
    for p in (Path(path), *Path(path).parents):
        try:
            return owner_name(os.stat(p).st_uid)
        except OSError:  # not there yet, or in a folder this user may not enter: the folder above
            continue
    return "its owner"


def is_ours(path: Path) -> bool:
    """Whether this process's user owns `path` (lstat); False when it is gone."""
    try:
        return os.lstat(path).st_uid == os.geteuid()
    except OSError:
        return False


def unreadable(path: Path, e: OSError | None = None) -> PclsimError:
    """The error for a cache entry (or folder) this user may not read: names it, its owner and the fix."""
    return PclsimError(f"{path}: feature-cache entry of user {_owner_of(path)} that you cannot read "
                       f"(permission denied); pclsim neither re-extracts over it nor moves it: {_FIX}")


def not_ours(path: Path, why: str) -> PclsimError:
    """The error for a damaged entry of another user: pclsim never moves or deletes it."""
    return PclsimError(f"{path}: feature-cache entry of user {_owner_of(path)} is damaged ({why}); pclsim does "
                       f"not move or delete another user's entry: ask {_owner_of(path)} to delete it, or set "
                       "PCLSIM_CACHE_DIR to a folder of your own")


def cannot_write(folder: Path, e: OSError) -> PclsimError:
    """The error for a cache folder this user may not write into (to extract a task there)."""
    return PclsimError(f"{folder}: cannot write into this feature-cache folder of user {_owner_of(folder)} "
                       f"({e.strerror or e}); to extract features there the folder must be writable by your "
                       "group: ask its owner for `chgrp GROUP` and `chmod 2775` on it and `umask 002` for "
                       "everyone writing, or set PCLSIM_CACHE_DIR to a folder of your own")


# --------------------------------------------------------------------------------------- processes
def _proc_start(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks after boot (/proc/PID/stat, field 22); None without /proc
    or without that process."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    try:
        return int(raw.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine() -> dict:
    """Where pids mean the same as here: host name, kernel boot id, pid namespace."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def _record() -> dict:
    pid = os.getpid()
    return dict(_machine(), pid=pid, start=_proc_start(pid), uid=os.geteuid(), created=time.time())


def write_owner(folder: Path) -> None:
    """Record this process as the owner of the temporary `folder` (the file OWNER inside it)."""
    with open(Path(folder) / OWNER, "w") as f:
        json.dump(_record(), f)


def owner_state(folder: Path) -> str:
    """"alive", "dead" or "unknown": whether the process recorded in `folder`'s owner record still runs.

    Checked only for an owner on this host, this boot and this pid namespace (a pid with the recorded start
    time); an owner elsewhere, or no readable record, is "unknown"."""
    try:
        rec = json.loads((Path(folder) / OWNER).read_text())
        pid, start = int(rec["pid"]), rec.get("start")
        where = {k: rec[k] for k in ("host", "boot", "pidns")}
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    if where != _machine() or not where["boot"]:
        return "unknown"
    now = _proc_start(pid)
    if now is not None:
        return "alive" if start is None or now == start else "dead"
    if os.path.isdir("/proc/self"):
        return "dead"  # /proc works here and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except OSError:
        pass
    return "alive"


# --------------------------------------------------------------------------------------- temporary folders
def make_temp_dir(base: Path, prefix: str) -> Path:
    """A new, empty folder base/<prefix><random> with this process's owner record in it.

    Made with mode 0o777 less the umask, in the group a setgid `base` gives (not tempfile's 0o700, which
    only its creator can read once renamed into place). Raises OSError as mkdir does."""
    base = Path(base)
    for _ in range(100):
        p = base / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            os.mkdir(p, 0o777)
        except FileExistsError:
            continue
        write_owner(p)
        return p
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(base))


def _age(p: Path, st: os.stat_result) -> float:
    """Seconds since `p` or (a folder) any file directly in it last changed."""
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(p) as it:
                for e in it:
                    try:
                        newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        pass
        except OSError:
            pass
    return time.time() - newest


def remove_own(p: Path) -> tuple[int, bool]:
    """Delete what this user owns under `p` (a file, or a folder tree: this user's files in it, and its
    folders once empty), never anything of another user. Returns (bytes of the files deleted, whether
    `p` itself is gone)."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return 0, True
    except OSError:
        return 0, False
    ours = st.st_uid == os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        if not ours:
            return 0, False
        try:
            os.unlink(p)
            return st.st_size, True
        except FileNotFoundError:
            return 0, True
        except OSError:
            return 0, False
    freed = 0
    try:
        children = list(os.scandir(p))
    except OSError:
        children = []
    for e in children:
        freed += remove_own(Path(e.path))[0]
    if not ours:
        return freed, False
    try:
        os.rmdir(p)
    except FileNotFoundError:
        pass
    except OSError:
        return freed, False
    return freed, True


def _candidates(root: Path):
    """(path, kind) of every temporary thing pclsim may leave in a cache: "folder" for features/.tmp-*,
    features/.trash-* and the same in tables/ (candidate tables being written), "file" for .tmp-* files of interrupted atomic writes in features/.parts-*/ and
    banks/, "parts" for a chunk folder features/.parts-<key> whose entry features/<key> is complete (its
    chunk files are copies of the entry's, left where another user's or a killed sweep's finalise
    could not remove them)."""
    feats = root / "features"
    for folder in (feats, root / "banks", root / "tables"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            name = e.name
            if name.startswith(TEMP_PREFIXES):
                yield Path(e.path), "folder" if e.is_dir(follow_symlinks=False) else "file"
            elif folder == feats and name.startswith(".parts-") and e.is_dir(follow_symlinks=False):
                if (feats / name[len(".parts-"):] / "meta.json").is_file():
                    yield Path(e.path), "parts"
                    continue
                try:
                    inner = list(os.scandir(e.path))
                except OSError:
                    continue
                for f in inner:
                    if f.name.startswith(".tmp-") and not f.is_dir(follow_symlinks=False):
                        yield Path(f.path), "file"


def remove_stale(root, max_age: float = STALE_AGE_S) -> tuple[int, int, int]:
    """Remove the temporary folders and files a killed process left in the cache `root`.

    A temporary folder (features/.tmp-*, .trash-*) goes when this user owns it and its recorded owner
    process is dead on this host, or when its owner cannot be checked from here (`owner_state`:
    "unknown") and nothing in it changed for `max_age` seconds (default `STALE_AGE_S`, 24 h). Temporary
    files of interrupted chunk and bank writes (.tmp-* in features/.parts-*/ and banks/) carry no record:
    they go after `max_age`. This user's chunk files of a task whose entry is complete go at once (the
    chunk folder too, once empty). A live owner's folder, and anything of another user, always stays.
    Returns (folders removed, files removed, bytes freed); never raises for a file-system error."""
    root = Path(root)
    folders = files = freed = 0
    for p, kind in _candidates(root):
        if kind != "parts":
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if st.st_uid != os.geteuid():
                continue
            state = owner_state(p) if kind == "folder" else "unknown"
            if state == "alive" or (state == "unknown" and _age(p, st) < max_age):
                continue
        got, gone = remove_own(p)
        freed += got
        if got or gone:
            folders, files = (folders, files + 1) if kind == "file" else (folders + 1, files)
    return folders, files, freed
