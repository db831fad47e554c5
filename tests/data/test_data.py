"""pclsim.data: on-disk layouts, preprocessing geometry, the synthetic stream, lazy batching, bad input."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pclsim.data.synthetic import SYNTH_VERSION
from pclsim.data import (BMAD_TASKS, MASKED_TASKS, Sample, iter_batches, load_stream, preprocess, synthetic_stream,
                         write_bmad_layout)
from pclsim.errors import DataError


def _png(path: Path, arr=None, size=(24, 20), value=None, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        arr = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


# The six BMAD layouts, written out by hand from method.md section 8 (independent of the loader's table).
# Each entry: (train dir, [valid normal dirs], [(valid anomalous dir, valid mask dir)], test normal, (test anom, mask))
BMAD_TREES = {
    "Brain_AD": ("train/good", "valid/good/img", ("valid/Ungood/img", "valid/Ungood/label"),
                 "test/good/img", ("test/Ungood/img", "test/Ungood/label")),
    "Liver_AD": ("train/good", "valid/img/good", ("valid/img/Ungood", "valid/label/Ungood"),
                 "test/img/good", ("test/img/Ungood", "test/label/Ungood")),
    "Retina_RESC_AD": ("Train/train/good", "Val/val/good", ("Val/val/Ungood", "Val/val_label/Ungood"),
                       "Test/test/good", ("Test/test/Ungood", "Test/test_label/Ungood")),
    "Chest_AD": ("train/good", "val/good", ("val/Ungood", None), "test/good", ("test/Ungood", None)),
    "Histopathology_AD": ("train/good", "valid/good", ("valid/Ungood", None), "test/good", ("test/Ungood", None)),
    "Retina_OCT2017_AD": ("train/good", "val/good", ("val/Ungood", None), "test/good", ("test/Ungood", None)),
}
N_TRAIN, N_VGOOD, N_VBAD, N_TGOOD, N_TBAD = 5, 2, 3, 2, 4


def _bmad(root: Path, names=BMAD_TASKS):
    for name in names:
        tr, vg, (vb, vbm), tg, (tb, tbm) = BMAD_TREES[name]
        cat = root / name
        for i in range(N_TRAIN):
            _png(cat / tr / f"tr{i}.png")
        for i in range(N_VGOOD):
            _png(cat / vg / f"vg{i}.png")
        for i in range(N_VBAD):
            _png(cat / vb / f"vb{i}.png")
            if vbm:
                _png(cat / vbm / f"vb{i}.png", value=255)
        for i in range(N_TGOOD):
            _png(cat / tg / f"tg{i}.png")
        for i in range(N_TBAD):
            _png(cat / tb / f"tb{i}.png")
            if tbm:
                _png(cat / tbm / f"tb{i}.png", value=255)
    return root


@pytest.fixture(scope="module")
def bmad_root(tmp_path_factory):
    return _bmad(tmp_path_factory.mktemp("bmad"))


@pytest.mark.parametrize("name", BMAD_TASKS)
def test_bmad_clean_layout(bmad_root, name):
    (task,) = load_stream({"kind": "bmad", "tasks": [name], "protocol": "clean"}, str(bmad_root))
    assert task.name == name and task.has_masks == (name in MASKED_TASKS)
    assert len(task.train) == N_TRAIN and all(s.label == 0 for s in task.train)
    assert all(Path(s.path).name.startswith("tr") for s in task.train)
    assert sorted(s.label for s in task.test) == [0] * N_TGOOD + [1] * N_TBAD
    assert all(Path(s.path).name.startswith("t") for s in task.test)
    tb, tbm = BMAD_TREES[name][4]
    for s in task.test:
        if s.label == 1 and tbm:
            assert Path(s.mask_path) == bmad_root / name / tbm / Path(s.path).name
        else:
            assert s.mask_path is None
        assert s.key.startswith(f"{name}/") and s.key.count("|") >= 2
    img, mask = task.test[-1].load()
    assert img.shape == (20, 24, 3) and img.dtype == np.uint8
    if name in MASKED_TASKS:
        assert mask.shape == (20, 24) and mask.all()


@pytest.mark.parametrize("name", BMAD_TASKS)
def test_bmad_paper_protocol_moves_validation(bmad_root, name):
    (task,) = load_stream({"kind": "bmad", "tasks": [name], "protocol": "paper"}, str(bmad_root))
    assert len(task.train) == N_TRAIN + N_VGOOD and all(s.label == 0 for s in task.train)
    assert sum(Path(s.path).name.startswith("vg") for s in task.train) == N_VGOOD
    assert len(task.test) == N_TGOOD + N_TBAD + N_VBAD
    vb = [s for s in task.test if Path(s.path).name.startswith("vb")]
    assert len(vb) == N_VBAD and all(s.label == 1 for s in vb)
    if name in MASKED_TASKS:
        assert all(s.mask_path and Path(s.mask_path).name == Path(s.path).name for s in vb)
    assert sorted(task.chosen["train"]) == sorted(str(Path(s.path).relative_to(bmad_root)) for s in task.train)


def test_bmad_seeded_caps(bmad_root):
    ds = {"kind": "bmad", "tasks": ["Brain_AD"], "protocol": "paper", "max_train": 4, "max_test": 5}

    def pick(seed):
        (t,) = load_stream({**ds, "seed": seed}, str(bmad_root))
        return [s.path for s in t.train], [s.path for s in t.test], t.chosen

    a, b, c = pick(0), pick(0), [pick(s) for s in range(1, 6)]
    assert len(a[0]) == 4 and len(a[1]) == 5
    assert a[:2] == b[:2]
    assert any(x[:2] != a[:2] for x in c)  # another seed chooses otherwise (7C4 * 9C5 possibilities)
    assert a[2]["train"] == [str(Path(p).relative_to(bmad_root)) for p in a[0]] and a[2]["seed"] == 0
    (clean,) = load_stream({**ds, "protocol": "clean", "max_train": 3}, str(bmad_root))
    assert len(clean.train) == 3 and len(clean.test) == 5
    assert all(not Path(s.path).name.startswith("v") for s in clean.train + clean.test)


def test_bmad_all_tasks_in_given_order(bmad_root):
    order = ["Chest_AD", "Brain_AD", "Retina_OCT2017_AD"]
    assert [t.name for t in load_stream({"kind": "bmad", "tasks": order}, str(bmad_root))] == order
    assert [t.name for t in load_stream({"kind": "bmad", "tasks": None}, str(bmad_root))] == list(BMAD_TASKS)


def test_mvtec_layout(tmp_path):
    cat = tmp_path / "bottle"
    for i in range(3):
        _png(cat / "train/good" / f"{i:03d}.png")
    _png(cat / "test/good/000.png")
    for d in ("broken", "crack"):
        for i in range(2):
            _png(cat / "test" / d / f"{i:03d}.png")
            m = np.zeros((20, 24), np.uint8)
            m[i:i + 3, :5] = 255
            _png(cat / "ground_truth" / d / f"{i:03d}_mask.png", m)
    (t,) = load_stream({"kind": "mvtec", "tasks": None, "root": str(tmp_path)})
    assert t.name == "bottle" and t.has_masks and len(t.train) == 3
    assert [s.label for s in t.test] == [1, 1, 1, 1, 0]  # folders sorted: broken, crack, good
    s = t.test[1]
    assert s.mask_path.endswith("ground_truth/broken/001_mask.png")
    _, mask = s.load()
    assert mask.sum() == 15 and mask[1:4, :5].all()
    (cat / "ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DataError, match="crack/001.png"):
        load_stream({"kind": "mvtec", "tasks": ["bottle"], "root": str(tmp_path)})


def test_folder_layout_optional_masks_and_sorted_tasks(tmp_path):
    for cat in ("zeta", "alpha"):
        for i in range(2):
            _png(tmp_path / cat / "train/good" / f"{i}.jpg".replace(".jpg", ".png"))
        _png(tmp_path / cat / "test/good/a.png")
        _png(tmp_path / cat / "test/lesion/b.bmp".replace(".bmp", ".png"))
    _png(tmp_path / "alpha/ground_truth/lesion/b.png", value=255)
    ts = load_stream({"kind": "folder", "tasks": None}, str(tmp_path))
    assert [t.name for t in ts] == ["alpha", "zeta"]
    assert ts[0].has_masks and not ts[1].has_masks
    assert {s.label for s in ts[1].test} == {0, 1}
    assert ts[0].test[1].mask_path.endswith("b.png") and ts[1].test[1].mask_path is None
    with pytest.raises(DataError, match="nope"):
        load_stream({"kind": "folder", "tasks": ["alpha", "nope"]}, str(tmp_path))


def test_grey_and_16bit_become_rgb(tmp_path):
    g = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    img, _ = Sample("k", 0, str(_png(tmp_path / "g.png", g))).load()
    assert img.shape == (20, 24, 3) and (img == g[..., None]).all()
    g16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    img16, _ = Sample("k", 0, str(tmp_path / "g16.png")).load()
    assert img16.shape == (20, 24, 3) and img16.max() > 200  # not clipped to white nor left at >> 8 darkness
    np.testing.assert_allclose(img16[..., 0].astype(float), np.round(g16 / 257.0), atol=1)


def test_preprocess_matches_torchvision_and_keeps_mask_aligned():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[20:30, 40:50] = True
    S = 32
    short = round(S * 256 / 224)
    x, m = preprocess(img, mask, S)
    ref = transforms.Compose([transforms.Resize(short, transforms.InterpolationMode.BILINEAR),
                              transforms.CenterCrop(S), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    np.testing.assert_allclose(x, ref(Image.fromarray(img)).numpy(), atol=1e-5)
    mref = transforms.Compose([transforms.Resize(short, transforms.InterpolationMode.NEAREST),
                               transforms.CenterCrop(S)])(Image.fromarray(mask.astype(np.uint8) * 255))
    assert x.dtype == np.float32 and x.shape == (3, S, S) and m.dtype == bool
    np.testing.assert_array_equal(m, np.asarray(mref) > 0)
    # the block's centre (25, 45) maps through scale 37/48 and crop offsets (2, 8) to about (17.3, 26.7)
    ys, xs = np.nonzero(m)
    assert abs(ys.mean() - (25 * short / 48 - 2)) < 1.0 and abs(xs.mean() - (45 * short / 48 - 8)) < 1.0


# ---------------------------------------------------------------- bad input

def test_missing_root_and_unknown_tasks(tmp_path, bmad_root):
    with pytest.raises(DataError, match="does-not-exist"):
        load_stream({"kind": "bmad"}, str(tmp_path / "does-not-exist"))
    with pytest.raises(DataError, match="Kidney_AD"):
        load_stream({"kind": "bmad", "tasks": ["Brain_AD", "Kidney_AD"]}, str(bmad_root))
    with pytest.raises(DataError, match="Kidney_AD"):
        load_stream({"kind": "synthetic", "tasks": ["Kidney_AD"]})
    with pytest.raises(DataError, match="Liver_AD"):  # a known task whose folder is absent
        load_stream({"kind": "bmad", "tasks": ["Liver_AD"]}, str(_bmad(tmp_path / "b", ["Brain_AD"])))


def test_category_without_train_images(tmp_path):
    _png(tmp_path / "cat/test/good/a.png")
    _png(tmp_path / "cat/test/bad/b.png")
    (tmp_path / "cat/train/good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"cat[/\\]train[/\\]good"):
        load_stream({"kind": "folder", "tasks": None}, str(tmp_path))
    _bmad(tmp_path / "b", ["Chest_AD"])
    for f in (tmp_path / "b/Chest_AD/train/good").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="Chest_AD"):
        load_stream({"kind": "bmad", "tasks": ["Chest_AD"]}, str(tmp_path / "b"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_images_name_the_file(tmp_path, damage):
    p = _png(tmp_path / "x.png", size=(64, 64), mode="RGB")
    data = p.read_bytes()
    p.write_bytes({"garbage": b"not a png at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(DataError, match="x.png"):
        Sample("k", 0, str(p)).load()
    with pytest.raises(DataError, match="x.png"):  # surfaces through the worker threads too
        list(iter_batches([Sample("a", 0, str(_png(tmp_path / "ok.png")))] * 3 + [Sample("k", 0, str(p))], 16, 2))


def test_mask_size_mismatch(tmp_path):
    s = Sample("k", 1, str(_png(tmp_path / "i.png", size=(24, 20))), str(_png(tmp_path / "m.png", size=(20, 20))))
    with pytest.raises(DataError, match="m.png"):
        s.load()
    cat = _bmad(tmp_path / "b", ["Brain_AD"]) / "Brain_AD"
    _png(cat / "test/Ungood/label/tb0.png", size=(8, 8), value=255)
    (t,) = load_stream({"kind": "bmad", "tasks": ["Brain_AD"]}, str(tmp_path / "b"))
    bad = next(s for s in t.test if s.path.endswith("tb0.png"))
    with pytest.raises(DataError, match="tb0.png"):
        bad.load()


def test_file_key_tracks_size_and_mtime(tmp_path):
    _bmad(tmp_path, ["Chest_AD"])
    ds = {"kind": "bmad", "tasks": ["Chest_AD"]}
    k1 = load_stream(ds, str(tmp_path))[0].train[0].key
    p = tmp_path / "Chest_AD/train/good/tr0.png"
    _png(p, size=(30, 30))
    k2 = load_stream(ds, str(tmp_path))[0].train[0].key
    assert k1 != k2 and k2.split("|")[0] == "Chest_AD/train/good/tr0.png"
    assert k2.split("|")[1] == str(p.stat().st_size)


# ---------------------------------------------------------------- synthetic stream

def test_synthetic_deterministic_and_seeded():
    a = synthetic_stream(train=2, test=4, size=64, seed=0)
    b = synthetic_stream(train=2, test=4, size=64, seed=0)
    c = synthetic_stream(train=2, test=4, size=64, seed=1)
    assert [t.name for t in a] == list(BMAD_TASKS)
    for ta, tb, tc in zip(a, b, c):
        for sa, sb, sc in zip(ta.train + ta.test, tb.train + tb.test, tc.train + tc.test):
            ia, ma = sa.load()
            ib, mb = sb.load()
            assert sa.key == sb.key != sc.key
            assert ia.shape == (64, 64, 3) and ia.dtype == np.uint8
            assert ia.tobytes() == ib.tobytes()
            assert (ma is None) == (mb is None) and (ma is None or (ma == mb).all())
            assert ia.tobytes() != sc.load()[0].tobytes()
    assert a[0].test[0].key == f"synthetic/{SYNTH_VERSION}/Brain_AD/test/0/seed0/px64"


def test_synthetic_masks_labels_and_colour():
    stream = synthetic_stream(train=2, test=12, size=224, seed=3)
    for t in stream:
        assert t.has_masks == (t.name in MASKED_TASKS)
        assert [s.label for s in t.train] == [0, 0]
        assert sum(s.label for s in t.test) == 6
        imgs = []
        for s in t.test:
            img, mask = s.load()
            imgs.append(img)
            if t.name not in MASKED_TASKS:
                assert mask is None
            elif s.label == 1:
                assert mask.any() and mask.mean() < 0.5
                _, m = preprocess(img, mask, 224)  # the anomaly survives the centre crop
                assert m.any()
            else:
                assert not mask.any()
        grey = all((im[..., 0] == im[..., 1]).all() and (im[..., 0] == im[..., 2]).all() for im in imgs)
        assert grey == (t.name != "Histopathology_AD")
        assert np.std([im.mean() for im in imgs]) > 0.5  # normals and anomalies vary


def test_synthetic_domains_differ():
    means = {t.name: np.mean([s.load()[0].astype(float) for s in t.train], axis=0)
             for t in synthetic_stream(train=4, test=2, size=64)}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).mean() > 10, (a, b)


def test_load_stream_synthetic_caps_and_write_bmad_roundtrip(tmp_path):
    ds = {"kind": "synthetic", "tasks": ["Brain_AD", "Chest_AD"], "image_size": 64, "max_train": 3,
          "synthetic": {"train": 5, "test": 6, "seed": 2}}
    stream = load_stream(ds)
    assert [len(t.train) for t in stream] == [3, 3] and [len(t.test) for t in stream] == [6, 6]
    write_bmad_layout(stream, tmp_path, 64)
    assert len(list((tmp_path / "Brain_AD/test/Ungood/label").glob("*.png"))) == 3
    back = load_stream({"kind": "bmad", "tasks": ["Brain_AD", "Chest_AD"]}, str(tmp_path))
    for t, u in zip(stream, back):
        assert sorted(s.label for s in t.test) == sorted(s.label for s in u.test)
        assert len(u.train) == 3 and u.has_masks == (t.name == "Brain_AD")
        orig = {s.load()[0][..., 0].tobytes() for s in t.test}
        assert {s.load()[0][..., 0].tobytes() for s in u.test} == orig  # PNG is lossless
    with pytest.raises(DataError, match="not empty"):
        write_bmad_layout(stream, tmp_path, 64)


# ---------------------------------------------------------------- lazy batching

@dataclass(frozen=True)
class _Counted(Sample):
    """Constant image of value `index`; counts every decode so the test can see how far decoding runs ahead."""

    index: int = 0
    log: object = None

    def load(self):
        with self.log["lock"]:
            self.log["started"] += 1
        time.sleep(0.002)
        return np.full((8, 8, 3), self.index, np.uint8), None


@pytest.mark.parametrize("workers,prefetch", [(3, 1), (2, 0), (0, 2), (4, 2)])
def test_iter_batches_order_and_bound(workers, prefetch):
    log = {"lock": threading.Lock(), "started": 0}
    n, B = 50, 4
    samples = [_Counted(f"k{i}", i % 2, None, None, index=i, log=log) for i in range(n)]
    seen, yielded = [], 0
    for imgs, masks, labels in iter_batches(samples, 8, batch_size=B, workers=workers, prefetch=prefetch):
        time.sleep(0.02)  # a slow consumer: the decoders must wait for it, not run ahead
        with log["lock"]:
            started = log["started"]
        assert started - yielded <= (prefetch + 1) * B
        yielded += imgs.shape[0]
        assert imgs.dtype == torch.float32 and imgs.shape[1:] == (3, 8, 8)
        assert masks.dtype == torch.bool and not masks.any() and labels.dtype == torch.int64
        # undo the normalisation to read back which sample each row is
        v = imgs[:, 0, 0, 0] * 0.229 + 0.485
        seen += torch.round(v * 255).to(torch.int64).tolist()
        assert labels.tolist() == [i % 2 for i in seen[-imgs.shape[0]:]]
    assert seen == list(range(n))
    if workers > 0 and prefetch > 0:
        assert log["started"] == n


def test_iter_batches_masks_are_aligned(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[:10] = 255
    s1 = Sample("a", 1, str(_png(tmp_path / "a.png", size=(40, 40))), str(_png(tmp_path / "am.png", m)))
    s0 = Sample("b", 0, str(_png(tmp_path / "b.png", size=(40, 40))))
    imgs, masks, labels = next(iter_batches([s0, s1], 32, batch_size=8))
    assert imgs.shape == (2, 3, 32, 32) and labels.tolist() == [0, 1]
    assert not masks[0].any() and masks[1, :5].all() and not masks[1, 12:].any()


# ---------------------------------------------------------------------------------------- registries

@dataclass(frozen=True)
class _Stripes(Sample):
    """A toy data set's image: vertical stripes of period `period`, anomalous ones with a bright square."""

    period: int = 4

    def load(self):
        img = np.zeros((40, 40, 3), np.uint8)
        img[:, :: self.period] = 200
        mask = np.zeros((40, 40), bool)
        if self.label:
            mask[10:20, 10:20] = True
            img[mask] = 255
        return img, mask


def _load_stripes(dataset, root, tasks):
    """The toy kind: one task per name, 'stripes<period>'; root is not used."""
    from pclsim.data import TaskData

    out = []
    for name in tasks or ["stripes3", "stripes5"]:
        p = int(name.removeprefix("stripes"))

        def sample(split, i, label):
            return _Stripes(key=f"toy/{name}/{split}/{i}", label=label, path=None, mask_path=None, period=p)

        out.append(TaskData(name, [sample("train", i, 0) for i in range(4)],
                            [sample("test", i, i % 2) for i in range(4)], has_masks=True))
    return out


def test_a_dataset_kind_registered_in_one_call_runs_through_the_scenario_and_loading(tmp_path):
    """Adding a data-set kind is one registry call: the scenario accepts it (no root needed), load_stream
    dispatches to it, the preflight checks and the decoder take its samples as they take any other."""
    from pclsim.data import DATASET_KINDS, DatasetKind, register_dataset_kind
    from pclsim.study.preflight import check_stream
    from pclsim.errors import ScenarioError
    from pclsim.study.scenario import resolve

    raw = {"name": "toy", "dataset": {"kind": "stripes", "tasks": ["stripes3", "stripes5"], "image_size": 32},
           "memory_sizes": [8], "strategies": ["patchcore_cl"]}
    with pytest.raises(ScenarioError, match="'dataset.kind': 'stripes' is not one of"):
        resolve(raw)
    register_dataset_kind(DatasetKind("stripes", load=_load_stripes, needs_root=False))
    try:
        sc = resolve(raw)
        stream = load_stream(sc["dataset"])
        assert [t.name for t in stream] == ["stripes3", "stripes5"]
        assert [s.label for s in stream[0].test] == [0, 1, 0, 1]
        assert check_stream(sc, stream, cache_dir=tmp_path) == 0  # no file to read: every check passes
        images, masks, labels = next(iter_batches(stream[1].test, 32, batch_size=4, workers=0))
        assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 0, 1]
        assert masks[1].any() and not masks[0].any()
        assert [t.name for t in load_stream({"kind": "stripes", "tasks": None})] == ["stripes3", "stripes5"]
    finally:
        DATASET_KINDS.pop("stripes")
    with pytest.raises(DataError, match="dataset.kind: 'stripes' is not one of"):
        load_stream({"kind": "stripes"})


def test_builtin_kinds_are_the_scenarios_allowed_values():
    from pclsim.data import dataset_kind_names
    from pclsim.errors import ScenarioError
    from pclsim.study.scenario import resolve

    assert set(dataset_kind_names()) == {"synthetic", "bmad", "mvtec", "visa", "folder"}
    with pytest.raises(ScenarioError, match="bmad, synthetic, mvtec, folder, visa"):
        resolve({"name": "x", "dataset": {"kind": "imagenet"}})


def test_synthetic_cache_key_is_the_generator_version_and_parameters(monkeypatch):
    """Editing synthetic.py (a comment) keeps every cached feature: the key never reads a source file; it
    changes with SYNTH_VERSION and with each generator parameter."""
    import pclsim.data.synthetic as synthetic
    from pclsim.store.cache import task_key

    task = synthetic_stream(("Brain_AD",), train=2, test=2, size=64, seed=0)[0]
    key = task_key("extractor", task)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"a cache key read {self}"))
    assert task_key("extractor", task) == key
    for other in (synthetic_stream(("Brain_AD",), train=2, test=2, size=64, seed=1)[0],
                  synthetic_stream(("Brain_AD",), train=2, test=2, size=72, seed=0)[0]):
        assert task_key("extractor", other) != key
    monkeypatch.setattr(synthetic, "SYNTH_VERSION", "v-next")
    assert task_key("extractor", synthetic_stream(("Brain_AD",), train=2, test=2, size=64, seed=0)[0]) != key


# ---------------------------------------------------------------- issue 22: masks in every format, unpaired ones

def _grey(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _mvtec_like(root: Path, mask_name) -> None:
    img = np.full((24, 24), 90, np.uint8)
    for i in range(2):
        _grey(root / "cat/train/good" / f"{i}.png", img)
    _grey(root / "cat/test/good/0.png", img)
    for i in range(2):
        _grey(root / "cat/test/crack" / f"{i}.png", img)
        m = np.zeros((24, 24), np.uint8)
        m[i:i + 4, :6] = 255
        _grey(root / "cat/ground_truth/crack" / mask_name(i), m)


@pytest.mark.parametrize("kind", ["mvtec", "folder"])
@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".TIFF"])
def test_every_folder_kind_finds_masks_in_every_format(tmp_path, kind, ext):
    _mvtec_like(tmp_path, lambda i: f"{i}_mask{ext}")
    (t,) = load_stream({"kind": kind, "tasks": ["cat"], "root": str(tmp_path)})
    assert t.has_masks and [Path(s.mask_path).name for s in t.test if s.label] == [f"0_mask{ext}", f"1_mask{ext}"]
    assert t.test[0].load()[1].sum() == 24


@pytest.mark.parametrize("kind", ["mvtec", "folder"])
def test_a_mask_no_image_is_paired_with_is_an_error_naming_the_folder(tmp_path, kind):
    _mvtec_like(tmp_path, lambda i: f"{i}_mask.png")
    _grey(tmp_path / "cat/ground_truth/crack/7_mask.png", np.zeros((24, 24), np.uint8))   # no test image 7
    with pytest.raises(DataError, match=r"ground_truth/crack: 1 mask file\(s\) not paired .*7_mask.png"):
        load_stream({"kind": kind, "tasks": ["cat"], "root": str(tmp_path)})


def test_folder_masks_under_another_naming_rule_are_not_silently_dropped(tmp_path):
    _mvtec_like(tmp_path, lambda i: f"mask_{i}.png")  # a rule the kind does not know: no image is paired
    with pytest.raises(DataError, match=r"ground_truth/crack: 2 mask file\(s\) not paired .*mask_0.png"):
        load_stream({"kind": "folder", "tasks": ["cat"], "root": str(tmp_path)})


def test_bmad_masks_may_use_another_image_format(bmad_root, tmp_path):
    import shutil

    root = tmp_path / "bmad"
    shutil.copytree(bmad_root, root)
    mdir = root / "Brain_AD" / "test" / "Ungood" / "label"
    for p in sorted(mdir.glob("*.png")):
        Image.open(p).save(p.with_suffix(".tif"))
        p.unlink()
    (t,) = load_stream({"kind": "bmad", "tasks": ["Brain_AD"]}, str(root))
    assert all(s.mask_path.endswith(".tif") for s in t.test if s.label)
    _grey(mdir / "stray.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"label: 1 mask file\(s\) not paired .*stray.png"):
        load_stream({"kind": "bmad", "tasks": ["Brain_AD"]}, str(root))
