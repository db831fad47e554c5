"""The on-disk feature store: exact float32 path, float16 rounding, chunked writes, atomicity, handles."""

import os
import pickle

import numpy as np
import pytest

from pclsim.store import writing as store
from pclsim.data import iter_batches, synthetic_stream
from pclsim.errors import DataError
from pclsim.core.features import FeatureExtractor
from pclsim.core.task_features import TaskFeatures


@pytest.fixture(scope="module")
def ex():
    return FeatureExtractor("efficientnet_lite0", "bundled", image_size=64, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def task():
    # Brain_AD has masks; 10 train and 7 test images: several batches of 4 with a ragged last one
    return synthetic_stream(["Brain_AD"], train=10, test=7, size=64, seed=3)[0]


@pytest.fixture(scope="module")
def reference(ex, task):
    """Today's path: FeatureExtractor.extract over the whole split, float32 in memory."""
    tr, _, _ = ex.extract(iter_batches(task.train, 64, ex.batch_size, 0), total=len(task.train))
    te, masks, labels = ex.extract(iter_batches(task.test, 64, ex.batch_size, 0), total=len(task.test))
    return tr.reshape(-1, ex.dim), te, masks, labels


def test_float32_entry_is_the_extractor_output_bit_for_bit(ex, task, reference, tmp_path):
    ref = store.extract_task(task, ex, tmp_path, "float32", workers=0)
    tf = ref.open()
    tr, te, masks, labels = reference
    assert isinstance(tf.train, np.memmap) and isinstance(tf.test, np.memmap)
    assert not tf.train.flags.writeable
    assert tf.train.dtype == np.float32 and tf.train.shape == (10 * ex.num_patches, ex.dim)
    assert tf.test.shape == (7, ex.num_patches, ex.dim)
    np.testing.assert_array_equal(tf.train, tr)
    np.testing.assert_array_equal(tf.test, te)
    np.testing.assert_array_equal(tf.labels, labels)
    np.testing.assert_array_equal(tf.masks, masks)
    assert tf.masks.any() and tf.labels.sum() > 0
    assert (tf.grid, tf.image_size, tf.dim) == (ex.grid, 64, ex.dim)
    assert ref.float32_bytes == ref.nbytes == (10 + 7) * ex.num_patches * ex.dim * 4


def test_float16_entry_is_the_rounded_output(ex, task, reference, tmp_path):
    ref = store.extract_task(task, ex, tmp_path, "float16", workers=0)
    tf = ref.open()
    tr, te, _, _ = reference
    assert tf.train.dtype == np.float16 and ref.nbytes * 2 == ref.float32_bytes
    np.testing.assert_array_equal(tf.train, tr.astype(np.float16))
    np.testing.assert_array_equal(tf.test, te.astype(np.float16))
    # IEEE half: round to nearest, relative error at most 2^-11 within its normal range
    big = np.abs(te) > 1e-3
    assert np.max(np.abs(tf.test[big].astype(np.float64) - te[big]) / np.abs(te[big])) <= 2.0 ** -11
    # the file on disk is half the float32 file (plus the .npy header)
    assert os.path.getsize(ref.path / "test.npy") - te.astype(np.float16).nbytes < 256


def test_dtype_is_part_of_the_key_and_entries_are_reused(ex, task, tmp_path):
    k16 = store.store_key(ex.cache_key(), task, "float16")
    k32 = store.store_key(ex.cache_key(), task, "float32")
    assert k16 != k32
    a = store.extract_task(task, ex, tmp_path, "float16", workers=0)
    mtime = os.path.getmtime(a.path / "train.npy")
    b = store.extract_task(task, ex, tmp_path, "float16", workers=0)  # a hit: nothing rewritten
    assert a == b and os.path.getmtime(b.path / "train.npy") == mtime
    with pytest.raises(ValueError, match="float16, float32"):
        store.store_key(ex.cache_key(), task, "bfloat16")


def test_chunked_extraction_gives_the_same_entry(ex, task, tmp_path):
    whole = store.extract_task(task, ex, tmp_path / "a", "float16", workers=0)
    key = store.store_key(ex.cache_key(), task, "float16")
    chunks = store.plan_chunks(task, 4)
    assert [(c.split, c.start, c.stop) for c in chunks] == [
        ("train", 0, 4), ("train", 4, 8), ("train", 8, 10), ("test", 0, 4), ("test", 4, 7)]
    root = tmp_path / "b"
    for c in reversed(chunks):  # any order, as free workers take them
        store.write_chunk(root, key, task, c, ex, "float16", workers=0)
    # a chunk is not extracted twice
    part = root / "features" / f".parts-{key}" / f"{chunks[0].stem}.npy"
    mtime = os.path.getmtime(part)
    store.write_chunk(root, key, task, chunks[0], ex, "float16", workers=0)
    assert os.path.getmtime(part) == mtime
    ref = store.finalise(root, key, task, chunks, image_size=64, grid=ex.grid, dim=ex.dim, dtype="float16")
    for fn in ("train.npy", "test.npy", "labels.npy", "masks.npy"):
        assert (ref.path / fn).read_bytes() == (whole.path / fn).read_bytes(), fn
    assert not (root / "features" / f".parts-{key}").exists()  # chunk files removed once assembled


def test_finalise_refuses_missing_or_partial_chunks(ex, task, tmp_path):
    key = store.store_key(ex.cache_key(), task, "float16")
    chunks = store.plan_chunks(task, 4)
    for c in chunks[:-1]:
        store.write_chunk(tmp_path, key, task, c, ex, "float16", workers=0)
    with pytest.raises(FileNotFoundError, match="never written"):
        store.finalise(tmp_path, key, task, chunks, image_size=64, grid=ex.grid, dim=ex.dim)
    with pytest.raises(ValueError, match="do not cover"):
        store.finalise(tmp_path, key, task, chunks[1:], image_size=64, grid=ex.grid, dim=ex.dim)
    assert store.lookup(tmp_path, key) is None
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_extraction_leaves_no_entry(ex, tmp_path):
    task = synthetic_stream(["Liver_AD"], train=6, test=4, size=64, seed=1)[0]

    class Broken:
        key, label, path, mask_path = "broken", 0, "/nonexistent/broken.png", None

        def load(self):
            raise DataError("/nonexistent/broken.png: cannot read image")

    task.test.append(Broken())
    with pytest.raises(DataError, match="broken.png"):
        store.extract_task(task, ex, tmp_path, "float16", workers=0)
    assert [p.name for p in (tmp_path / "features").iterdir()] == []  # no entry, no temporary folder


def test_a_damaged_entry_is_not_trusted(ex, task, tmp_path):
    ref = store.extract_task(task, ex, tmp_path, "float16", workers=0)
    good = ref.open().test.copy()
    with open(ref.path / "test.npy", "r+b") as f:  # a truncated file, e.g. a crash in a copy by hand
        f.truncate(os.path.getsize(ref.path / "test.npy") - 10)
    assert store.lookup(tmp_path, ref.key) is None
    again = store.extract_task(task, ex, tmp_path, "float16", workers=0)
    np.testing.assert_array_equal(again.open().test, good)
    (again.path / "meta.json").unlink()  # an entry without its meta (never published) is not one
    assert store.lookup(tmp_path, ref.key) is None


def test_pickled_features_carry_the_handle_not_the_arrays(ex, task, tmp_path):
    tf = store.extract_task(task, ex, tmp_path, "float16", workers=0).open()
    blob = pickle.dumps(tf)
    assert len(blob) < 4000 < tf.train.nbytes
    back = pickle.loads(blob)
    assert isinstance(back.train, np.memmap)
    np.testing.assert_array_equal(back.test, tf.test)
    np.testing.assert_array_equal(back.masks, tf.masks)
    # handles by themselves are small too, and open() names a missing entry
    h = pickle.loads(pickle.dumps(tf.ref))
    assert h == tf.ref
    import shutil

    shutil.rmtree(h.path)
    with pytest.raises(FileNotFoundError, match="Brain_AD"):
        h.open()
    # in-memory TaskFeatures (no store) still pickle by value
    plain = TaskFeatures("x", np.ones((4, 2), np.float32), np.ones((1, 4, 2), np.float32), np.zeros(1, np.int64),
                         None, (2, 2), 8)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(plain)).train, plain.train)


def test_load_or_extract_goes_through_the_store(ex, task, tmp_path):
    from pclsim.store.cache import load_cached, load_or_extract

    tf = load_or_extract(task, ex, cache_root=tmp_path, workers=0, dtype="float32")
    assert isinstance(tf.train, np.memmap) and tf.train.dtype == np.float32
    key = store.store_key(ex.cache_key(), task, "float32")
    np.testing.assert_array_equal(load_cached(tmp_path, key).test, tf.test)
    assert load_cached(tmp_path, store.store_key(ex.cache_key(), task, "float16")) is None


def test_ray_stores_the_handle_and_workers_map_the_entry(ex, task, tmp_path):
    """ray.put of store-backed TaskFeatures costs a few hundred bytes of object store; a worker that gets
    it maps the same entry (np.memmap on the store's file), on whatever node it runs."""
    ray = pytest.importorskip("ray")
    tf = store.extract_task(task, ex, tmp_path, "float16", workers=0).open()
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        before = ray.available_resources()["object_store_memory"]
        ref = ray.put(tf)
        used = before - ray.available_resources()["object_store_memory"]
        assert used < 4096 < tf.train.nbytes

        @ray.remote
        def probe(x):
            return isinstance(x.train, np.memmap), str(x.test.filename), float(x.test.astype(np.float32).sum())

        is_map, fn, total = ray.get(probe.remote(ref))
        assert is_map and fn == str(tf.ref.path / "test.npy")
        assert total == float(tf.test.astype(np.float32).sum())
    finally:
        ray.shutdown()
