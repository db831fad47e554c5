"""Issue 23: the built-in stream grows to 15 domains (`pclsim data synth --tasks 12`), so that order designs
have a long stream to work on without a data set."""

import zlib

import numpy as np
import pytest

from pclsim.data import load_stream, synthetic_stream, write_bmad_layout
from pclsim.data.synthetic import DIFFICULTY, NOISE_SCALE, SYNTHETIC_TASKS, generate
from pclsim.data.synthetic_variants import VARIANTS
from pclsim.errors import DataError


def _base_output(task, base, knobs, index=3, label=1, size=96):
    """The base generator run with the variant's own seeds and knobs, before the variant's transform."""
    from pclsim.data.synthetic_domains import GENERATORS

    seeds = [0, zlib.crc32(task.encode()), 1, index]
    img, mask = GENERATORS[base](np.random.default_rng(seeds + [0]), np.random.default_rng(seeds + [1]), size,
                                 bool(label), knobs)
    return np.clip(np.asarray(img, np.float32), 0, 1), mask


def test_fifteen_distinct_domains_with_the_base_masks():
    assert len(SYNTHETIC_TASKS) == 15 == len(set(SYNTHETIC_TASKS))
    stream = synthetic_stream(SYNTHETIC_TASKS[:12], train=2, test=4, size=64)
    assert [t.name for t in stream] == list(SYNTHETIC_TASKS[:12])
    assert [t.has_masks for t in stream][6:] == [True, True, True, False, False, False]  # Brain/Liver/RESC variants
    imgs = [t.test[0].load()[0].astype(float) for t in stream]
    assert min(np.abs(a - b).mean() for i, a in enumerate(imgs) for b in imgs[i + 1:]) > 1.0  # no two alike


@pytest.mark.parametrize("task", ["Brain_AD_small", "Brain_AD_T2", "Retina_OCT2017_AD_flipped"])
def test_a_variant_is_its_base_under_the_stated_transform(task):
    """rot90 / invert / flip applied to the base generator's image (and mask) with the variant's seeds."""
    base, kind, over = VARIANTS[task]
    knobs = dict(DIFFICULTY[base], noise=NOISE_SCALE, **over)
    ref, ref_mask = _base_output(task, base, knobs)
    ref = {"rot90": np.rot90, "invert": lambda a: 1.0 - a, "flip": lambda a: a[::-1]}[kind](ref)
    img, mask = generate(task, "test", 3, 1, 0, 96)
    ref8 = np.clip(np.rint(ref * 255), 0, 255).astype(np.uint8)
    if ref8.ndim == 2:
        ref8 = np.repeat(ref8[..., None], 3, axis=2)
    assert np.array_equal(img, ref8)
    if ref_mask is not None:
        geo = np.rot90 if kind == "rot90" else (lambda a: a[::-1]) if kind == "flip" else (lambda a: a)
        assert mask.any() and np.array_equal(mask, geo(np.asarray(ref_mask, bool)))


def test_a_written_twelve_task_stream_reads_back_as_bmad(tmp_path):
    write_bmad_layout(synthetic_stream(SYNTHETIC_TASKS[:12], train=2, test=4, size=64), tmp_path, 64)
    back = load_stream({"kind": "bmad", "tasks": None}, str(tmp_path))
    assert [t.name for t in back] == list(SYNTHETIC_TASKS[:12])
    assert [t.has_masks for t in back] == [t in ("Brain_AD", "Liver_AD", "Retina_RESC_AD") or
                                           VARIANTS.get(t, ("",))[0] in ("Brain_AD", "Liver_AD", "Retina_RESC_AD")
                                           for t in SYNTHETIC_TASKS[:12]]
    with pytest.raises(DataError, match="Kidney_AD"):
        synthetic_stream(("Kidney_AD",))


def test_cli_synth_tasks_12_and_its_bounds(tmp_path):
    from tests.test_cli import cli

    r = cli("data", "synth", tmp_path / "s", "--tasks", "12", "--train", "2", "--test", "2", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == sorted(SYNTHETIC_TASKS[:12])
    assert (tmp_path / "s" / "pclsim-synthetic.json").is_file()  # the folder says it is synthetic (the report reads it)
    r = cli("data", "synth", tmp_path / "t", "--tasks", "16")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--tasks" in r.stderr and "1..15" in r.stderr
