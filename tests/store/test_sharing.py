"""Issue 26, items 2 and 8: one feature cache shared by several users and sweeps; stale temporary folders.

Two users: the test runs as root and acts as another user by switching its effective ids (`as_user`:
setgroups, setegid, seteuid, and back), so the permission checks of the kernel apply to the code under
test. A subprocess with setuid cannot be used here: the interpreter lives under /root, which no other
user may enter. Skipped with that reason when not root. Two concurrent sweeps of one user on one cache:
tests/runner/test_faults.py (test_two_sweeps_share_a_cache_and_a_third_into_a_busy_folder_refuses).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pclsim.atomic import atomic_write_bytes
from pclsim.core.features import FeatureExtractor
from pclsim.data import synthetic_stream
from pclsim.errors import PclsimError
from pclsim.store import sharing
from pclsim.store import writing as store
from pclsim.store.cache import remove_stale_temporaries

from pclsim_cli import cli

ROOT = Path(__file__).resolve().parents[2]
GID, U1, U2 = 4100, 4101, 4102  # ids no account has here: what a second and third user of the cache are
TWO_DAYS = 2 * 24 * 3600

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second user needs root (seteuid); "
                                                           "the two-user cases are untested here")


@pytest.fixture(scope="module")
def ex():
    return FeatureExtractor("efficientnet_lite0", "bundled", image_size=64, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def tasks():
    return synthetic_stream(["Brain_AD", "Liver_AD"], train=6, test=5, size=64, seed=3)


@pytest.fixture(scope="module")
def reference(ex, tasks):
    """Every task extracted whole by this user into a private cache: what any user must read back."""
    root = Path(tempfile.mkdtemp())
    refs = {t.name: store.extract_task(t, ex, root, "float16", workers=0) for t in tasks}
    yield {n: {fn: (r.path / fn).read_bytes() for fn in ("train.npy", "test.npy", "labels.npy", "masks.npy")}
           for n, r in refs.items()}
    shutil.rmtree(root)


@pytest.fixture()
def shared():
    """A group's cache folder as the README asks for one: group GID, setgid, 2775, where every user can reach."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pclsim-shared-"))
    os.chmod(root, 0o755)
    cache = root / "cache"
    cache.mkdir()
    if os.geteuid() == 0:
        os.chown(cache, -1, GID)
    os.chmod(cache, 0o2775)
    yield cache
    shutil.rmtree(root)


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def as_user(uid, mask=0o002):
    """This process as user `uid` of group GID (effective ids, supplementary groups) with umask `mask`."""
    groups = os.getgroups()
    old = os.umask(mask)
    os.setgroups([GID])
    os.setegid(GID)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)
        os.umask(old)


def tree(cache: Path) -> list[Path]:
    return sorted((cache / "features").rglob("*"))


def temporaries(cache: Path) -> list[str]:
    return [p.name for p in (cache / "features").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def assert_same_entry(ref, want):
    for fn, data in want.items():
        assert (ref.path / fn).read_bytes() == data, fn


# ----------------------------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_entries_and_chunks_get_the_umask_not_a_private_mode(ex, tasks, reference, tmp_path, mask):
    whole, chunked = tasks
    with umask(mask):
        store.extract_task(whole, ex, tmp_path, "float16", workers=0)
        key = store.store_key(ex.cache_key(), chunked, "float16")
        chunks = store.plan_chunks(chunked, 4)
        for c in chunks[:-1]:
            store.write_chunk(tmp_path, key, chunked, c, ex, "float16", workers=0)
        parts = sorted(store.parts_dir(tmp_path, key).iterdir())
        assert [p.name for p in parts] and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask for p in parts)
        store.write_chunk(tmp_path, key, chunked, chunks[-1], ex, "float16", workers=0)
        ref = store.finalise(tmp_path, key, chunked, chunks, image_size=64, grid=ex.grid, dim=ex.dim)
        atomic_write_bytes(b"x", tmp_path / "banks" / "b.pkl", mode=None)
    assert_same_entry(ref, reference[chunked.name])
    got = [(p.name if p.is_file() else "<dir>", stat.S_IMODE(p.stat().st_mode)) for p in tree(tmp_path)]
    assert {n for n, _ in got} == {"<dir>", "meta.json", "train.npy", "test.npy", "labels.npy", "masks.npy"}
    assert len(got) == 2 * 6  # two entries of five files (no owner record, no chunk file left)
    assert all(m == (0o777 & ~mask if n == "<dir>" else 0o666 & ~mask) for n, m in got), got
    assert stat.S_IMODE((tmp_path / "banks" / "b.pkl").stat().st_mode) == 0o666 & ~mask
    assert not temporaries(tmp_path)


# ----------------------------------------------------------------------------------------------- two users
@needs_root
def test_two_users_share_one_cache_without_extracting_twice(ex, tasks, reference, shared):
    first, second = tasks
    key2 = store.store_key(ex.cache_key(), second, "float16")
    chunks = store.plan_chunks(second, 4)
    with as_user(U1):
        mine = store.extract_task(first, ex, shared, "float16", workers=0)
        for c in chunks[:2]:  # a sweep of U1 writes part of the second task's chunks, then stops
            store.write_chunk(shared, key2, second, c, ex, "float16", workers=0)
    before = {fn: os.stat(mine.path / fn) for fn in ("meta.json", "train.npy")}
    with as_user(U2):
        hit = store.lookup(shared, mine.key)  # U1's entry, read by U2: a hit, nothing moved or re-extracted
        again = store.extract_task(first, ex, shared, "float16", workers=0)
        tf = hit.open()
        assert float(np.abs(tf.test.astype(np.float32)).sum()) > 0
        for c in chunks[2:]:  # U2 writes the rest into U1's chunk folder and assembles the entry
            store.write_chunk(shared, key2, second, c, ex, "float16", workers=0)
        ref2 = store.finalise(shared, key2, second, chunks, image_size=64, grid=ex.grid, dim=ex.dim)
    assert hit == again == mine
    for fn, st in before.items():
        now = os.stat(mine.path / fn)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert_same_entry(mine, reference[first.name])
    assert_same_entry(ref2, reference[second.name])
    for p in tree(shared):  # every file the group's, per umask 002; folders setgid
        st = p.lstat()
        assert st.st_gid == GID, p
        assert stat.S_IMODE(st.st_mode) == (0o2775 if p.is_dir() else 0o664), p
    assert {p.stat().st_uid for p in (mine.path, ref2.path)} == {U1, U2}
    # U2 removed its own chunk files only: U1's stay until U1's next sweep, which removes them (entry complete)
    parts = store.parts_dir(shared, key2)
    assert {p.stat().st_uid for p in parts.iterdir()} == {U1} and len(list(parts.iterdir())) == 4
    with as_user(U1):
        folders, files, freed = sharing.remove_stale(shared)
    assert (folders, files) == (1, 0) and freed > 0 and not parts.exists()
    assert not temporaries(shared)


@needs_root
def test_an_entry_another_user_keeps_private_is_a_permission_error_not_damage(ex, tasks, shared):
    first = tasks[0]
    with as_user(U1, mask=0o077):  # U1's umask keeps its entries to itself (what tempfile forced before)
        ref = store.extract_task(first, ex, shared, "float16", workers=0)
    assert stat.S_IMODE(ref.path.stat().st_mode) & 0o777 == 0o700
    ino = ref.path.stat().st_ino
    with as_user(U2):
        with pytest.raises(PclsimError) as e1:
            store.lookup(shared, ref.key)
        with pytest.raises(PclsimError) as e2:
            store.extract_task(first, ex, shared, "float16", workers=0)
    for e in (e1, e2):
        msg = str(e.value)
        assert msg.startswith(f"{ref.path}: feature-cache entry of user uid {U1} that you cannot read"), msg
        assert "chmod -R g+rX" in msg and "PCLSIM_CACHE_DIR" in msg and "\n" not in msg
    assert ref.path.stat().st_ino == ino and store.lookup(shared, ref.key) == ref  # untouched, still valid
    assert not temporaries(shared)


@needs_root
def test_a_damaged_entry_is_removed_only_by_its_owner(ex, tasks, shared):
    first = tasks[0]
    with as_user(U1):  # umask 002: U2 could rename it; it must not
        ref = store.extract_task(first, ex, shared, "float16", workers=0)
    test_npy = ref.path / "test.npy"
    with open(test_npy, "r+b") as f:
        f.truncate(test_npy.stat().st_size - 10)
    for who in (U2, 0):  # another user, root included, never moves it
        with as_user(who) if who else contextlib.nullcontext():
            with pytest.raises(PclsimError, match=rf"^{re.escape(str(ref.path))}: feature-cache entry of user uid {U1} is damaged "
                                                  r"\(test.npy: \d+ bytes, expected \d+\); pclsim does not move"):
                store.lookup(shared, ref.key)
        assert ref.path.is_dir()
    with as_user(U1):  # its owner: discarded and extracted again, as before
        assert store.lookup(shared, ref.key) is None
        assert not ref.path.exists() and not temporaries(shared)
        again = store.extract_task(first, ex, shared, "float16", workers=0)
    assert again == ref and store.lookup(shared, ref.key) == ref


@needs_root
def test_features_folder_another_user_made_private_is_one_error_naming_it(ex, tasks, shared):
    with as_user(U1, mask=0o022):
        store.extract_task(tasks[0], ex, shared, "float16", workers=0)
    with as_user(U2):
        assert store.lookup(shared, store.store_key(ex.cache_key(), tasks[0], "float16")) is not None
        with pytest.raises(PclsimError, match=rf"^{re.escape(str(shared / 'features'))}: cannot write into this feature-cache "
                                              rf"folder of user uid {U1} \(Permission denied\).*umask 002"):
            store.extract_task(tasks[1], ex, shared, "float16", workers=0)
        key = store.store_key(ex.cache_key(), tasks[1], "float16")
        with pytest.raises(PclsimError, match=rf"^{re.escape(str(shared / 'features'))}: cannot write"):
            store.write_chunk(shared, key, tasks[1], store.plan_chunks(tasks[1], 4)[0], ex, workers=0)


# ----------------------------------------------------------------------------------------------- stale temporaries
def _dead_owner_folder(base: Path, size: int) -> Path:
    """A temporary folder made, with `size` bytes in it, by a process that then ended."""
    code = ("import sys; from pathlib import Path; from pclsim.store.sharing import make_temp_dir; "
            "p = make_temp_dir(Path(sys.argv[1]), '.tmp-k-'); (p / 'train.npy').write_bytes(b'1' * int(sys.argv[2]));"
            "print(p)")
    r = subprocess.run([sys.executable, "-c", code, str(base), str(size)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    return Path(r.stdout.strip())


def _age(p: Path, seconds: float):
    t = time.time() - seconds
    for q in [*p.iterdir(), p] if p.is_dir() else [p]:
        os.utime(q, (t, t))


def test_stale_temporaries_go_live_and_recent_ones_stay(tmp_path, capsys):
    feats = tmp_path / "features"
    feats.mkdir()
    dead = _dead_owner_folder(feats, 3_000_000)
    assert sharing.owner_state(dead) == "dead"
    live = sharing.make_temp_dir(feats, ".tmp-live-")
    _age(live, TWO_DAYS)  # a very long extraction by a live process
    assert sharing.owner_state(live) == "alive"
    reused = sharing.make_temp_dir(feats, ".trash-reused-")  # this pid, but another process's start time
    rec = json.loads((reused / sharing.OWNER).read_text())
    (reused / sharing.OWNER).write_text(json.dumps(dict(rec, start=rec["start"] + 1)))
    assert sharing.owner_state(reused) == "dead"
    elsewhere, old_elsewhere = (sharing.make_temp_dir(feats, ".tmp-node2-") for _ in range(2))
    for p in (elsewhere, old_elsewhere):  # another node of the cluster: its pids mean nothing here
        (p / sharing.OWNER).write_text(json.dumps(dict(rec, host="node-2")))
        (p / "train.npy").write_bytes(b"2" * 1000)
    _age(old_elsewhere, TWO_DAYS)
    assert sharing.owner_state(elsewhere) == "unknown"
    recordless = feats / ".tmp-k-norecord"  # killed between mkdir and the owner record
    recordless.mkdir()
    banks = tmp_path / "banks"
    banks.mkdir()
    (banks / ".tmp-old").write_bytes(b"3" * 500)  # an interrupted bank write, two days old, and a fresh one
    (banks / ".tmp-new").write_bytes(b"4" * 500)
    _age(banks / ".tmp-old", TWO_DAYS)
    (banks / "done.pkl").write_bytes(b"5")
    _age(banks / "done.pkl", TWO_DAYS)
    entry = feats / "0123"
    entry.mkdir()
    (entry / "meta.json").write_text("{}")
    _age(entry, TWO_DAYS)

    expect_freed = sum(f.stat().st_size for d in (dead, reused, old_elsewhere) for f in d.iterdir()) + 500
    assert remove_stale_temporaries(tmp_path) == (3, 1, expect_freed)
    assert capsys.readouterr().err == (f"cache: removed 3 stale temporary folders and 1 file "
                                       f"({expect_freed / 1e6:.1f} MB) in {tmp_path}\n")
    assert sorted(p.name for p in feats.iterdir()) == sorted([live.name, elsewhere.name, recordless.name, "0123"])
    assert sorted(p.name for p in banks.iterdir()) == [".tmp-new", "done.pkl"]
    assert remove_stale_temporaries(tmp_path) == (0, 0, 0)  # nothing left to remove: no line
    _age(recordless, TWO_DAYS)
    assert remove_stale_temporaries(tmp_path, quiet=True) == (1, 0, 0)
    assert capsys.readouterr().err == ""


@needs_root
def test_stale_temporaries_of_another_user_are_never_removed(shared):
    feats = shared / "features"
    feats.mkdir()
    os.chown(feats, -1, GID)
    os.chmod(feats, 0o2777)
    dead = _dead_owner_folder(feats, 1000)
    for p in (dead, *dead.iterdir()):
        os.chown(p, U1, GID)
    _age(dead, TWO_DAYS)
    size = sum(f.stat().st_size for f in dead.iterdir())
    assert sharing.remove_stale(shared) == (0, 0, 0) and dead.is_dir()  # root: not its folder
    with as_user(U2):
        assert sharing.remove_stale(shared) == (0, 0, 0) and dead.is_dir()
    with as_user(U1):
        assert sharing.remove_stale(shared) == (1, 0, size)
    assert not dead.exists()


# ----------------------------------------------------------------------------------------------- a killed extractor
_KILLED = """
import sys, time
from pclsim.core.features import FeatureExtractor
from pclsim.data import synthetic_stream
from pclsim.store.writing import extract_task

ex = FeatureExtractor("efficientnet_lite0", "bundled", image_size=64, device="cpu", batch_size=2)
task = synthetic_stream(["Brain_AD"], train=6, test=8, size=64, seed=0)[0]

def wrote(n):
    print("batch written", flush=True)
    time.sleep(600)  # SIGKILLed here, mid-entry

extract_task(task, ex, sys.argv[1], "float16", workers=0, progress=wrote)
"""

_SCENARIO = """name: killed
dataset:
  kind: synthetic
  tasks: [Brain_AD, Liver_AD]
  image_size: 64
  synthetic: {train: 6, test: 8, seed: 0}
model:
  backbone: efficientnet_lite0
  weights: bundled
orders: all
strategies: [patchcore_cl, finetune]
memory_sizes: [30]
seeds: [0]
"""


def test_a_killed_extractor_leaves_nothing_after_the_next_sweep(tmp_path):
    cache = tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", _KILLED, str(cache)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout.readline().strip() == "batch written"
        left = temporaries(cache)
        assert len(left) == 1 and left[0].startswith(".tmp-")
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    size = sum(f.stat().st_size for f in (cache / "features" / left[0]).iterdir())
    scenario = tmp_path / "killed.yaml"
    scenario.write_text(_SCENARIO)
    r = cli("sweep", scenario, "--out", tmp_path / "after", "--max-concurrent", "1",
            env={"PCLSIM_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"cache: removed 1 stale temporary folder ({size / 1e6:.1f} MB) in {cache}\n" in r.stderr
    assert r.stderr.count("cache: removed") == 1
    assert not temporaries(cache) and not list((cache / "features").glob(".parts-*"))
    clean = cli("sweep", scenario, "--out", tmp_path / "clean", "--quiet", "--max-concurrent", "1",
                env={"PCLSIM_CACHE_DIR": str(tmp_path / "clean-cache")})
    assert clean.returncode == 0 and "cache:" not in clean.stderr, clean.stderr[-3000:]
    for table in ("matrices", "summary"):
        x, y = (pd.read_parquet(tmp_path / f / f"{table}.parquet") for f in ("after", "clean"))
        cols = [c for c in x.columns if "second" not in c and x[c].dtype != object or c in ("run_id", "metric")]
        keys = [c for c in ("run_id", "metric", "step", "eval_task") if c in x.columns]
        pd.testing.assert_frame_equal(x[cols].sort_values(keys).reset_index(drop=True),
                                      y[cols].sort_values(keys).reset_index(drop=True))
