"""Every scenario key in one table: its default, what it means and how its value is checked.

`KEYS` is the typed model of a scenario file: `pclsim.study.scenario.resolve` merges a file over the
defaults this table gives (a key not in the table is an error), then runs each key's check once, in
table order; checks that relate several keys (the tasks, the orders, memory sizes against the tasks,
paths) follow in `resolve`. The README's key table is generated from here
(`python -m pclsim.study.keys --readme README.md`; tests/study/test_scenario_keys.py checks it is
current). A new key is one `register_key(Key(...))` call; the code that reads it is the only other
place it appears, and a test must show that it changes what runs.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..core.reweighting import REWEIGHTINGS
from ..data import dataset_kind_names
from ..data.bmad import BMAD_TASKS, PROTOCOLS
from ..data.images import MIN_IMAGE_SIZE, RESIZE_MODES
from ..store.entry import DTYPES
from .scenario_checks import check_int, fail
from .strategies import JOINTS, REBALANCES, STRATEGIES

__all__ = ["Key", "KEYS", "register_key", "defaults", "check_keys", "set_keys", "markdown_table", "integer",
           "choice", "int_list", "boolean"]


@dataclass(frozen=True)
class Key:
    """One scenario key.

    path: dotted ("dataset.image_size"); default: its value when the file leaves it out; doc: one
    sentence for the README; check(src, path, value) -> the value to use (normalised), raising
    ScenarioError through `scenario_checks.fail` with the path; None: any value (checked in resolve).
    """

    path: str
    default: Any
    doc: str
    check: Callable[[str, str, Any], Any] | None = None


KEYS: dict[str, Key] = {}


def register_key(key: Key) -> Key:
    """Add a key (ValueError when the path is taken or clashes with a section); returns it."""
    if key.path in KEYS or any(p.startswith(key.path + ".") or key.path.startswith(p + ".") for p in KEYS):
        raise ValueError(f"scenario key {key.path!r} is already defined or clashes with a section")
    KEYS[key.path] = key
    return key


def defaults() -> dict:
    """The nested mapping of every key's default (a fresh copy)."""
    out: dict = {}
    for key in KEYS.values():
        *sections, leaf = key.path.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = copy.deepcopy(key.default)
    return out


def check_keys(sc: dict, src: str) -> None:
    """Run every key's check on the merged scenario `sc`, in table order, storing the normalised values."""
    for key in KEYS.values():
        if key.check is None:
            continue
        *sections, leaf = key.path.split(".")
        node = sc
        for s in sections:
            node = node[s]
        node[leaf] = key.check(src, key.path, node[leaf])


def set_keys(sc: dict) -> dict:
    """{path: value} of the keys whose resolved value differs from their default (what `validate` prints);
    the name and the data root are left out (validate prints them on their own lines)."""
    out = {}
    for key in KEYS.values():
        if key.path in ("name", "dataset.root"):
            continue
        node = sc
        for part in key.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != key.default:
            out[key.path] = node
    return out


# ----------------------------------------------------------------------------- checks

def integer(lo: int) -> Callable:
    """An integer (not a bool) >= lo."""
    return lambda src, path, v: check_int(src, path, v, lo=lo)


def choice(values: Callable[[], tuple]) -> Callable:
    """One of values() (read when a scenario is checked, so a registry's later entries count)."""
    def check(src, path, v):
        allowed = tuple(values())
        if not isinstance(v, str) or v not in allowed:
            fail(src, path, f"{v!r} is not one of {', '.join(allowed)}")
        return v
    check.values = values
    return check


def int_list(lo: int) -> Callable:
    """A non-empty list of distinct integers >= lo (a single integer is a list of one)."""
    def check(src, path, v):
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not v:
            fail(src, path, "expected a non-empty list of integers")
        for x in v:
            check_int(src, path, x, lo=lo)
        if len(set(v)) != len(v):
            fail(src, path, f"duplicate value {next(x for x in v if v.count(x) > 1)} (each would run twice)")
        return v
    return check


def boolean(src, path, v):
    if not isinstance(v, bool):
        fail(src, path, f"expected true or false, got {v!r}")
    return v


def _plain_string(what: str) -> Callable:
    def check(src, path, v):
        if not isinstance(v, str) or not v:
            fail(src, path, f"expected {what}")
        return v
    return check


def _layers(src, path, v):
    if v is not None and (not isinstance(v, list) or len(v) != 2):
        fail(src, path, "expected null or a list of two layer names")
    return v


def _strategies(src, path, v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        fail(src, path, "expected a non-empty list")
    for s in v:
        if s not in STRATEGIES:
            fail(src, path, f"unknown strategy {s!r} (valid: {', '.join(sorted(STRATEGIES))})")
    if len(set(v)) != len(v):
        fail(src, path, "duplicate strategy")
    return v


def _rebalance(src, path, v):
    if v == "recompute":
        fail(src, path, "'recompute' was removed in 0.2 (it ran truncation): use 'authors' (the authors' "
                        "re-reduction, fresh projection each time) or 'truncate'")
    return choice(lambda: REBALANCES)(src, path, v)


def _fraction(src, path, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        fail(src, path, f"expected a share of the training images in [0, 1), got {v!r}")
    return float(v) if v else 0


def _thresholds(src, path, v):
    from ..core.thresholds import parse_policy

    if v is None:
        return []
    if not isinstance(v, list):
        fail(src, path, "expected a list of policies such as [fpr: 0.05, sigma: 3]")
    labels = []
    for n, entry in enumerate(v):
        try:
            p = parse_policy(entry)
        except ValueError as e:
            fail(src, f"{path}[{n}]", str(e))
        if p.label in labels:
            fail(src, f"{path}[{n}]", f"duplicate policy {p.label}")
        labels.append(p.label)
    return v


def _projection_dim(src, path, v):
    return v if v == "auto" else check_int(src, path, v, lo=1)


# ----------------------------------------------------------------------------- the keys of pclsim

for _k in (
    Key("name", None, "results folder name (`results/<name>/`); default: the scenario file's name"),
    Key("dataset.kind", "synthetic", "data-set kind (a registered `DatasetKind`)", choice(dataset_kind_names)),
    Key("dataset.root", None, "folder of the data set (not for synthetic); `--data-root` overrides; relative "
                              "to the scenario file"),
    Key("dataset.tasks", list(BMAD_TASKS), "task names in stream order; null: every task the data set has; "
                                           "a mapping {step: [categories]} merges categories into one step"),
    Key("dataset.image_size", 224, f"input size in px (at least {MIN_IMAGE_SIZE})", integer(MIN_IMAGE_SIZE)),
    Key("dataset.resize", "crop", "crop: shorter side + centre crop (the authors') | full: whole image "
                                  "(anomalib's)", choice(lambda: RESIZE_MODES)),
    Key("dataset.protocol", "clean", "BMAD protocol: clean | paper (method.md section 5)", choice(lambda: PROTOCOLS)),
    Key("dataset.max_train", 2000, "training images per task at most (seeded choice)", integer(1)),
    Key("dataset.max_test", 2000, "test images per task at most (seeded choice)", integer(1)),
    Key("dataset.seed", 0, "seed of the capped choices, the calibration split and the paper's random masks",
        integer(0)),
    Key("dataset.calibration", 0, "share of each task's training images held out of every bank to fit "
                                  "`evaluation.thresholds` (seeded choice)", _fraction),
    Key("dataset.synthetic.train", 100, "built-in stream: training images per task", integer(2)),
    Key("dataset.synthetic.test", 40, "built-in stream: test images per task", integer(2)),
    Key("dataset.synthetic.seed", 0, "built-in stream: seed of the generated images", integer(0)),
    Key("model.backbone", "efficientnet_lite0", "a timm model name (a tag such as `.tv_in1k` picks its weights)",
        _plain_string("a timm model name")),
    Key("model.weights", "bundled", "bundled | pretrained (timm, by name) | none | path to a checkpoint"),
    Key("model.layers", None, "null: the backbone's default pair of feature levels; or two layer names", _layers),
    Key("model.reweighting", "paper", "paper (3 neighbours) | anomalib (9, softmax) | none (a registered "
                                      "reweighting)", choice(lambda: tuple(REWEIGHTINGS))),
    Key("model.batch_size", 32, "images per forward pass of the extractor", integer(1)),
    Key("model.feature_dtype", "float16", "the on-disk feature store: float16 (half the disk) | float32 (exact)",
        choice(lambda: DTYPES)),
    Key("orders", "all", "all | an order design ({sample: N, seed: S}, {balanced: N, seed: S}, {sample: auto, precision: X, max: N}, "
                         "{search: worst|best, budget: N}) or a list of them | easy_to_hard | hard_to_easy | a list "
                         "of orders (task lists or either keyword)"),
    Key("strategies", ["patchcore_cl", "multi_model", "joint", "finetune"], "registered strategies to compare",
        _strategies),
    Key("memory_sizes", [1000, 3000], "memory budgets M (vectors)", int_list(1)),
    Key("coreset.projection", "jl", "jl: sparse random projection before greedy k-center | none",
        choice(lambda: ("jl", "none"))),
    Key("coreset.projection_dim", "auto", "auto: the JL dimension (eps 0.9) of each selection's points; or an "
                                          "integer", _projection_dim),
    Key("coreset.rebalance", "authors", "authors: fresh projection per re-reduction (as published) | truncate: "
                                        "a fixed projection (idealised, order-invariant)", _rebalance),
    Key("coreset.joint", "composable", "joint bank from the tasks' selections (composable) or all pooled "
                                       "patches (exact)", choice(lambda: JOINTS)),
    Key("evaluation.pixel_metrics", True, "compute pixel metrics for tasks with masks", boolean),
    Key("evaluation.gallery", 0, "anomaly maps stored per task for the report", integer(0)),
    Key("evaluation.maskless_pixels", "skip", "skip | paper: the authors' random all-0/all-1 masks for mask-less "
                                              "tasks (method.md section 5)", choice(lambda: ("skip", "paper"))),
    Key("evaluation.thresholds", [], "label-free thresholds per bank: fpr: A (quantile of held-out normal scores) "
                                     "| sigma: K (mean + K std) | valid (best F1 on BMAD's valid/); their metrics "
                                     "join the matrices", _thresholds),
    Key("evaluation.threshold_refit", True, "refit a bank's thresholds whenever the bank changes (false: a bank "
                                            "keeps those of its first step)", boolean),
    Key("seeds", [0], "coreset seeds (greedy start, projections)", int_list(0)),
):
    register_key(_k)
del _k


def markdown_table() -> str:
    """The README's table of every key: path, default, meaning."""
    def fmt(v):
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v).replace("'", "")
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k.path}` | `{fmt(k.default)}` | {k.doc.replace('|', chr(92) + '|')} |" for k in KEYS.values()]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- scenario-keys:begin -->", "<!-- scenario-keys:end -->"


def _write_readme(path: str) -> None:
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    p.write_text(f"{head}{BEGIN}\n{markdown_table()}{END}{tail}")


if __name__ == "__main__":  # python -m pclsim.study.keys --readme README.md
    if sys.argv[1:2] == ["--readme"] and len(sys.argv) == 3:
        _write_readme(sys.argv[2])
    else:
        print(markdown_table(), end="")
