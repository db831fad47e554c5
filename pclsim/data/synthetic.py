"""The built-in synthetic medical stream: six domains named after the BMAD categories.

Every image is generated on `Sample.load()` from (task, split, index, label, seed, size) alone: no disk, no
download, a few milliseconds each (numpy/scipy/PIL, vectorised). Each domain varies its normal images (anatomy
shape, position, intensity, noise, texture) and draws anomalies of varied size and contrast, some of them small
and faint on purpose, so that PatchCore does not score 1.0. Brain, Liver and RESC come with pixel masks.
Nine further domains (pclsim.data.synthetic_variants: a base domain under another acquisition) make a
stream of up to 15 tasks (SYNTHETIC_TASKS).

Coordinates are in [-1, 1] across the image (1 = half the side). Anomalies stay inside |y|, |x| < 0.8 so the
centre crop of the preprocessing (224 of 256) never cuts them away.

This module holds the knobs, the samples and the stream, and registers `dataset.kind: synthetic`; the
domains' generators are in `synthetic_domains` / `synthetic_retina` (built on `synthetic_shapes`), imported
when the first image is generated, so validating a scenario does not load scipy.

A sample's identity (its cache key) is SYNTH_VERSION plus the generator's parameters (task, split, index,
seed, size): never the bytes of the source files, so editing a comment keeps every cached feature.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .bmad import BMAD_TASKS, MASKED_TASKS
from .images import Sample, TaskData
from .kinds import DatasetKind, register_dataset_kind
from .synthetic_variants import VARIANTS, base_domain

__all__ = ["SYNTH_VERSION", "DIFFICULTY", "NOISE_SCALE", "ANOMALY_FRACTION", "SYNTHETIC_TASKS", "SyntheticSample",
           "synthetic_stream", "generate", "load_synthetic"]

# Every built-in domain: the six named after BMAD's categories (the default stream), then the nine variants
# of pclsim.data.synthetic_variants (`--tasks 12` takes the first twelve).
SYNTHETIC_TASKS = tuple(BMAD_TASKS) + tuple(VARIANTS)

# Bump when a generator or a knob below changes: the version is part of every sample key, so cached features
# of older images are not reused.
SYNTH_VERSION = "v2"

# Difficulty knobs. size: anomaly radius range (half-image units, drawn log-uniformly); contrast: strength range
# (drawn uniformly; its meaning is per domain: intensity change, fluid darkness, nuclear atypia ...).
DIFFICULTY = {
    "Brain_AD": {"size": (0.05, 0.22), "contrast": (0.25, 0.70)},
    "Liver_AD": {"size": (0.05, 0.20), "contrast": (0.20, 0.55)},
    "Retina_RESC_AD": {"size": (0.06, 0.22), "contrast": (0.60, 1.10)},
    "Chest_AD": {"size": (0.06, 0.25), "contrast": (0.20, 0.50)},
    "Histopathology_AD": {"size": (0.18, 0.40), "contrast": (0.80, 1.30)},
    "Retina_OCT2017_AD": {"size": (0.06, 0.20), "contrast": (0.60, 1.20)},
}
NOISE_SCALE = 1.0  # multiplies every domain's sensor noise
ANOMALY_FRACTION = 0.5  # of the test split

_MASKED = MASKED_TASKS  # the domains with pixel masks: the same three as BMAD's
_SPLITS = {"train": 0, "test": 1}


def generate(task: str, split: str, index: int, label: int, seed: int = 0, size: int = 224):
    """The synthetic image (S,S,3) uint8 and its mask (S,S) bool (None for the three image-level domains).

    Deterministic in its arguments (and the knobs above). Raises DataError for a task not in BMAD_TASKS.
    """
    from .synthetic_domains import GENERATORS

    if task not in SYNTHETIC_TASKS:
        raise DataError(f"unknown synthetic task {task!r} (valid: {', '.join(SYNTHETIC_TASKS)})")
    dom = base_domain(task)
    transform, over = VARIANTS[task][1:] if task in VARIANTS else ("none", {})
    knobs = dict(DIFFICULTY[dom], noise=NOISE_SCALE)
    knobs.update({k: (v * NOISE_SCALE if k == "noise" else v) for k, v in over.items()})
    base = [int(seed), zlib.crc32(task.encode()), _SPLITS[split], int(index)]
    rng = np.random.default_rng(base + [0])
    ra = np.random.default_rng(base + [1])
    img, mask = GENERATORS[dom](rng, ra, int(size), bool(label), knobs)
    img, mask = _transform(np.clip(np.asarray(img, np.float32), 0.0, 1.0), mask, transform)
    img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if dom in _MASKED:
        mask = np.zeros(img.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    return img, mask


def _transform(img: np.ndarray, mask, kind: str):
    """A variant's acquisition (pclsim.data.synthetic_variants): img float in [0, 1], (S,S) or (S,S,3); the
    geometric transforms move the mask (S,S) too."""
    if kind == "invert":
        img = 1.0 - img
    elif kind == "gamma_dark":
        img = img ** 1.8
    elif kind == "gamma_bright":
        img = img ** 0.55
    elif kind == "stain" and img.ndim == 3:
        img = img[..., [1, 2, 0]]  # another stain's colours
    elif kind in ("flip", "rot90"):
        f = (lambda a: a[::-1]) if kind == "flip" else np.rot90
        img = np.ascontiguousarray(f(img))
        mask = None if mask is None else np.ascontiguousarray(f(mask))
    return img, mask


@dataclass(frozen=True)
class SyntheticSample(Sample):
    task: str = ""
    split: str = "train"
    index: int = 0
    seed: int = 0
    size: int = 224

    def load(self):
        return generate(self.task, self.split, self.index, self.label, self.seed, self.size)


def _key(task, split, index, seed, size):
    return f"synthetic/{SYNTH_VERSION}/{task}/{split}/{index}/seed{seed}/px{size}"


def synthetic_stream(tasks=None, train: int = 100, test: int = 40, size: int = 224, seed: int = 0) -> list[TaskData]:
    """TaskData for each synthetic domain (default: the six BMAD-named ones, BMAD's order; any of SYNTHETIC_TASKS);
    `train` normal images and `test` images per task, about ANOMALY_FRACTION of them anomalous (at least one of
    each), `size` px square. Raises DataError for an unknown task or train < 1, test < 2."""
    tasks = tuple(BMAD_TASKS if tasks is None else tasks)
    bad = [t for t in tasks if t not in SYNTHETIC_TASKS]
    if bad:
        raise DataError(f"unknown synthetic task {bad[0]!r} (valid: {', '.join(SYNTHETIC_TASKS)})")
    if train < 1 or test < 2:
        raise DataError(f"synthetic stream needs train >= 1 and test >= 2, got train={train} test={test}")
    out = []
    for t in tasks:
        n_anom = min(test - 1, max(1, int(round(test * ANOMALY_FRACTION))))
        labels = np.zeros(test, np.int64)
        labels[np.random.default_rng([int(seed), zlib.crc32(t.encode()), 7]).permutation(test)[:n_anom]] = 1

        def mk(split, i, lab):
            return SyntheticSample(key=_key(t, split, i, seed, size), label=int(lab), path=None, mask_path=None,
                                   task=t, split=split, index=i, seed=int(seed), size=int(size))

        out.append(TaskData(name=t, train=[mk("train", i, 0) for i in range(train)],
                            test=[mk("test", i, labels[i]) for i in range(test)],
                            has_masks=base_domain(t) in _MASKED))
    return out


def load_synthetic(dataset: dict, root: Any, tasks: list[str] | None) -> list[TaskData]:
    """The `synthetic` kind (pclsim.data.kinds): sizes from dataset.synthetic {train, test, seed}, capped by
    dataset.max_train / max_test; image side dataset.image_size. root is ignored."""
    syn = dataset.get("synthetic") or {}
    names = tuple(tasks) if tasks is not None else BMAD_TASKS
    bad = [t for t in names if t not in SYNTHETIC_TASKS]
    if bad:
        raise DataError(f"dataset.tasks: unknown synthetic task {bad[0]!r} (valid: {', '.join(SYNTHETIC_TASKS)})")
    n_train = int(syn.get("train", 100))
    n_test = int(syn.get("test", 40))
    if dataset.get("max_train") is not None:
        n_train = min(n_train, int(dataset["max_train"]))
    if dataset.get("max_test") is not None:
        n_test = min(n_test, int(dataset["max_test"]))
    return synthetic_stream(names, train=n_train, test=n_test, size=int(dataset.get("image_size", 224)),
                            seed=int(syn.get("seed", 0)))


register_dataset_kind(DatasetKind("synthetic", load=load_synthetic, needs_root=False))
