"""Issue 20: candidate tables in the on-disk store (pclsim.store.tables).

A stored table holds exactly the lists an in-memory one holds, is read memory-mapped block by block, gives
the same nearest neighbours in every subset bank as a brute-force search, is found again by its content
address (never recomputed, never reused for other data), and a damaged or half-written entry is never used.
"""

from __future__ import annotations

import errno
import itertools

import numpy as np
import pytest

from toy_features import make_tasks
from pclsim.core import candidates
from pclsim.core.candidates import subset_nn
from pclsim.errors import PclsimError
from pclsim.store.entry import publish_entry, write_meta
from pclsim.store.sharing import make_temp_dir
from pclsim.store.tables import TableRef, TableWriter, lookup_table, table_dir, table_key
from pclsim.study.engine import candidate_rows, plan_study, run_selection, run_table, stored_table
from pclsim.study.scenario import Run

CORESET = {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"}


def to_store(root, tasks: dict, salt: str = "") -> dict:
    """The toy tasks written as feature-store entries and mapped back (TaskFeatures with their `ref`)."""
    out = {}
    (root / "features").mkdir(parents=True, exist_ok=True)
    for name, tf in tasks.items():
        tmp = make_temp_dir(root / "features", ".tmp-")
        np.save(tmp / "train.npy", tf.train)
        np.save(tmp / "test.npy", tf.test)
        np.save(tmp / "labels.npy", tf.labels)
        if tf.masks is not None:
            np.save(tmp / "masks.npy", tf.masks)
        write_meta(tmp, name, tf.image_size, tf.grid, tf.dim, len(tf.train) // (tf.grid[0] * tf.grid[1]),
                   len(tf.test), "float32", tf.masks is not None)
        out[name] = publish_entry(tmp, root, f"{name.lower()}{salt}{'0' * 24}", name).open()
    return out


def plan(tasks):
    runs = [Run(s, 40, 0, o) for s in ("patchcore_cl", "joint") for o in itertools.permutations(tasks)]
    sp = plan_study(runs, CORESET).seeds[0]
    orders = {k: run_selection(tasks, sp.needs, CORESET, 0, k) for k in sp.selections}
    return sp, orders


def test_a_stored_table_equals_the_in_memory_one_and_is_read_mapped(tmp_path):
    tasks = to_store(tmp_path / "cache", make_tasks(3, seed=3, n_train=30))
    sp, orders = plan(tasks)
    assert sp.sources
    for src in sp.sources:
        rows = candidate_rows(sp.needs, orders, src)
        want = run_table(tasks, sp.needs, CORESET, 0, src, rows)
        ref = stored_table(tasks, sp.needs, CORESET, 0, src, rows)
        assert isinstance(ref, TableRef) and ref.path.is_dir()
        assert ref.nbytes == sum(a.nbytes for a in want.pos.values()) * 2 + rows.nbytes
        got = ref.open()
        assert np.array_equal(got.rows, want.rows)
        assert set(got.pos) == set(want.pos)
        for name in want.pos:
            assert isinstance(got.pos[name], np.memmap) and not got.pos[name].flags.writeable
            assert np.array_equal(got.pos[name], want.pos[name])
            assert np.array_equal(got.dist[name], want.dist[name])


def test_subset_nn_of_a_stored_table_read_in_blocks_equals_brute_force(tmp_path, monkeypatch):
    monkeypatch.setattr(candidates, "BLOCK_ENTRIES", 5 * 16 * 8)  # blocks of 5 images: several per task
    tasks = to_store(tmp_path / "cache", make_tasks(2, seed=4, n_train=30))
    sp, orders = plan(tasks)
    src = sp.sources[0]
    rows = candidate_rows(sp.needs, orders, src)
    table = stored_table(tasks, sp.needs, CORESET, 0, src, rows, k=8).open()
    base = np.asarray(tasks[src[1]].train, dtype=np.float64)
    rng = np.random.default_rng(0)
    for size in (1, 5, len(rows) // 2, len(rows)):
        bank = np.sort(rng.choice(rows, size, replace=False))
        vecs = base[bank]
        for name, tf in tasks.items():
            q = np.asarray(tf.test, dtype=np.float64)
            brute = np.sqrt(((q[:, :, None, :] - vecs[None, None]) ** 2).sum(-1))

            def exact(mask):
                d = brute[mask]
                return d.min(1).astype(np.float32), d.argmin(1)

            d, i, _ = subset_nn(table, name, bank, exact)
            np.testing.assert_allclose(d, brute.min(-1), rtol=1e-4, atol=1e-4)
            assert np.allclose(brute[np.arange(len(q))[:, None], np.arange(q.shape[1])[None], i], brute.min(-1),
                               rtol=1e-4, atol=1e-4)


def test_a_stored_table_is_found_by_its_content_and_never_reused_for_other_data(tmp_path, monkeypatch):
    raw = make_tasks(2, seed=5, n_train=30)
    tasks = to_store(tmp_path / "cache", raw)
    sp, orders = plan(tasks)
    src = sp.sources[0]
    rows = candidate_rows(sp.needs, orders, src)
    first = stored_table(tasks, sp.needs, CORESET, 0, src, rows)

    def no_build(*a, **k):
        raise AssertionError("a stored table was recomputed")

    with monkeypatch.context() as m:
        m.setattr("pclsim.study.engine.build_table", no_build)
        assert stored_table(tasks, sp.needs, CORESET, 0, src, rows) == first
    # other features (another store key), other candidates or another K: another entry
    other = to_store(tmp_path / "cache", raw, salt="b")
    assert stored_table(other, sp.needs, CORESET, 0, src, rows).key != first.key
    assert table_key(src, rows[:-1], first.k, {n: t.ref.key for n, t in tasks.items()}) != first.key
    assert stored_table(tasks, sp.needs, CORESET, 0, src, rows, k=4).key != first.key


def test_a_damaged_entry_is_discarded_and_rebuilt(tmp_path):
    tasks = to_store(tmp_path / "cache", make_tasks(2, seed=6, n_train=30))
    sp, orders = plan(tasks)
    src = sp.sources[0]
    rows = candidate_rows(sp.needs, orders, src)
    ref = stored_table(tasks, sp.needs, CORESET, 0, src, rows)
    want = ref.open().dist[src[1]].copy()
    f = ref.path / "dist-0.npy"
    f.write_bytes(f.read_bytes()[:-4])  # truncated, as by a crash of a copy
    assert lookup_table(ref.root, ref.key) is None and not ref.path.exists()
    again = stored_table(tasks, sp.needs, CORESET, 0, src, rows)
    assert again == ref and np.array_equal(again.open().dist[src[1]], want)


def test_a_full_disk_leaves_no_half_written_table(tmp_path, monkeypatch):
    tasks = to_store(tmp_path / "cache", make_tasks(2, seed=7, n_train=30))
    sp, orders = plan(tasks)
    src = sp.sources[0]
    rows = candidate_rows(sp.needs, orders, src)
    calls = [0]
    real = TableWriter.write

    def full(self, *a):
        calls[0] += 1
        if calls[0] == 2:  # the second chunk's write finds the disk full
            def no_space():
                raise OSError(errno.ENOSPC, "No space left on device")

            return self._io(no_space)
        return real(self, *a)

    monkeypatch.setattr(TableWriter, "write", full)
    with pytest.raises(PclsimError) as e:
        stored_table(tasks, sp.needs, CORESET, 0, src, rows, k=4)
    assert str(tmp_path / "cache" / "tables") in str(e.value) and "space" in str(e.value)
    assert not list((tmp_path / "cache" / "tables").iterdir())  # no entry, no temporary folder
    assert not table_dir(tmp_path / "cache", table_key(src, rows, 4,
                                                       {n: t.ref.key for n, t in tasks.items()})).exists()
