"""Streaming the feature store keeps one chunk resident, not the task (issue 11: memory bounded by the
banks, not by the features). Residency is read from /proc/self/smaps: the resident pages of the
store file's mapping in this process, after each consumer has streamed a whole task."""

import os

import numpy as np
import pytest

from pclsim.study.banks import BankBuilder, SelectionNeeds
from pclsim.core.candidates import build_table
from pclsim.coreset import greedy_coreset
from pclsim.core.task_features import TaskFeatures
from pclsim.study.strategies import BankRef
from pclsim.core.tensors import read_rows, release_pages

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")


def mapped_rss(path) -> int:
    """Bytes of `path` resident through this process's mappings of it."""
    path, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss", "Pss")):
                inside = head[-1] == path
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


def store_array(tmp_path, name, a):
    p = tmp_path / f"{name}.npy"
    np.save(p, a)
    return p, np.load(p, mmap_mode="r")


def test_reading_a_whole_memmap_keeps_it_resident_unless_released(tmp_path):
    """The measurement itself: a plain read leaves the file mapped and resident; release_pages drops it,
    and the values read back after a release are the same."""
    x = np.random.default_rng(0).standard_normal((60_000, 64)).astype(np.float16)  # 7.7 MB
    p, a = store_array(tmp_path, "x", x)
    assert mapped_rss(p) < 0.05 * x.nbytes
    first = float(np.asarray(a, dtype=np.float32).sum())
    assert mapped_rss(p) > 0.9 * x.nbytes
    assert release_pages(a) and mapped_rss(p) < 0.05 * x.nbytes
    assert float(np.asarray(a, dtype=np.float32).sum()) == first  # faulted back in from the page cache
    assert not release_pages(x)  # not a mapping: nothing to release
    np.testing.assert_array_equal(read_rows(a, slice(10, 20)), x[10:20].astype(np.float32))


def test_selection_streams_a_mapped_task(tmp_path):
    x = np.random.default_rng(1).standard_normal((200_000, 48)).astype(np.float16)  # 19 MB, 4 chunks of 65,536
    p, a = store_array(tmp_path, "train", x)
    got = greedy_coreset(a, 40, projection_dim=None, seed=0, device="cpu")
    assert mapped_rss(p) < 0.05 * x.nbytes
    np.testing.assert_array_equal(got, greedy_coreset(x.astype(np.float32), 40, projection_dim=None, seed=0,
                                                      device="cpu"))


def test_candidate_table_streams_a_mapped_test_set(tmp_path):
    rng = np.random.default_rng(2)
    test = rng.standard_normal((120, 196, 32)).astype(np.float16)  # 1.5 MB, 8 chunks of 16 images
    p, a = store_array(tmp_path, "test", test)
    tf = TaskFeatures("A", np.zeros((0, 32), np.float16), a, np.zeros(120, np.int64), None, (14, 14), 112)
    cand = rng.standard_normal((50, 32)).astype(np.float32)
    tb = build_table(("task", "A"), np.arange(50), cand, {"A": tf}, k=4, chunk_images=16, backend="torch")
    assert mapped_rss(p) < 0.05 * test.nbytes
    q = test.astype(np.float32).reshape(-1, 32)
    brute = np.argsort(((q[:, None, :] - cand[None]) ** 2).sum(-1), axis=1, kind="stable")[:, 0]
    assert (tb.pos["A"].reshape(-1, 4)[:, 0] == brute).mean() > 0.999  # float ties aside, the nearest


def test_pooled_selection_streams_its_tasks_and_equals_the_concatenation(tmp_path):
    """coreset.joint: exact selects over all patches of the member tasks without concatenating them."""
    rng = np.random.default_rng(3)
    parts = {t: rng.standard_normal((30_000 + 7 * i, 24)).astype(np.float16) for i, t in enumerate("ABC")}
    tasks, paths = {}, []
    for t, x in parts.items():
        p, a = store_array(tmp_path, t, x)
        paths.append(p)
        tasks[t] = TaskFeatures(t, a, np.zeros((1, 4, 24), np.float16), np.zeros(1, np.int64), None, (2, 2), 16)
    ref = BankRef("pool", ("A", "B", "C"), 300)
    builder = BankBuilder(tasks, SelectionNeeds.of([ref]), projection_dim=None, seed=0, device="cpu")
    (src, rows), = builder.resolve(ref)
    assert all(mapped_rss(p) < 0.05 * parts[t].nbytes for p, t in zip(paths, "ABC"))
    whole = np.concatenate([x.astype(np.float32) for x in parts.values()])
    np.testing.assert_array_equal(rows, greedy_coreset(whole, 300, projection_dim=None, device="cpu"))
    np.testing.assert_array_equal(builder.bank_vectors(ref), whole[rows])

