"""Scenario files: loading, validation (unknown keys are errors), defaults, expansion into runs."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data import dataset_kind_names, get_dataset_kind
from ..data.bmad import BMAD_TASKS, PROTOCOLS
from ..data.images import MIN_IMAGE_SIZE, RESIZE_MODES
from ..errors import ScenarioError
from .orders import (DIFFICULTY_ORDERS, check_orders, describe_orders, difficulty_order, expand_orders,
                     needs_difficulty, order_entries)
from ..core.reweighting import REWEIGHTINGS
from .scenario_checks import check_int, fail
from ..store.entry import DTYPES
from .strategies import JOINTS, REBALANCES, STRATEGIES

_orders = expand_orders  # the name pclsim.report imports

__all__ = ["DEFAULTS", "load_scenario", "resolve", "Run", "expand_runs", "group_runs", "scenario_hash",
           "DIFFICULTY_ORDERS", "needs_difficulty", "difficulty_order", "describe_orders"]

DEFAULTS = {
    "name": None,
    "dataset": {
        "kind": "synthetic",
        "root": None,
        "tasks": list(BMAD_TASKS),
        "image_size": 224,
        "resize": "crop",  # crop: shorter side + centre crop (the authors') | full: whole image (anomalib's)
        "protocol": "clean",
        "max_train": 2000,
        "max_test": 2000,
        "seed": 0,
        "synthetic": {"train": 100, "test": 40, "seed": 0},
    },
    "model": {
        "backbone": "efficientnet_lite0",
        "weights": "bundled",  # bundled | pretrained (timm, by name) | none | path to a checkpoint
        "layers": None,
        "reweighting": "paper",
        "batch_size": 32,
        "feature_dtype": "float16",  # the on-disk feature store: float16 (half the disk) | float32 (exact)
    },
    # all | {sample: N, seed: S} | easy_to_hard | hard_to_easy | a list of orders (task lists or either keyword);
    # easy_to_hard: by each task's single-task image AUROC at the largest memory size, measured in the study
    "orders": "all",
    "strategies": ["patchcore_cl", "multi_model", "joint", "finetune"],
    "memory_sizes": [1000, 3000],
    # rebalance: authors = the method as published (fresh projection per re-reduction); truncate = idealised
    # (fixed projection: a re-reduction keeps a prefix; the final state depends only on the SET of tasks).
    # projection_dim: auto = the JL dimension (eps 0.9) of the number of points of each selection.
    "coreset": {"projection": "jl", "projection_dim": "auto", "rebalance": "authors", "joint": "composable"},
    "evaluation": {"pixel_metrics": True, "gallery": 0,  # gallery: anomaly maps stored per task for the report
                   "maskless_pixels": "skip"},  # skip | paper: the authors' random all-0/all-1 masks (method.md 5)
    "seeds": [0],
}

# The allowed values of each key with a closed set, each read from the one place that defines it; the
# registries (dataset kinds, reweightings) are read when a scenario is checked, so a kind or a
# reweighting registered later is accepted.
_CHOICES = {
    "dataset.kind": dataset_kind_names,
    "dataset.protocol": lambda: PROTOCOLS,
    "dataset.resize": lambda: RESIZE_MODES,
    "evaluation.maskless_pixels": lambda: ("skip", "paper"),  # pclsim.study.maskless.MASKLESS_POLICIES (torch-free here)
    "model.reweighting": lambda: tuple(REWEIGHTINGS),
    "model.feature_dtype": lambda: DTYPES,
    "coreset.projection": lambda: ("jl", "none"),
    "coreset.rebalance": lambda: REBALANCES,
    "coreset.joint": lambda: JOINTS,
}




def _merge(defaults: dict, given: dict, src: str, prefix: str = "") -> dict:
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        path = f"{prefix}{k}"
        if k not in defaults:
            valid = ", ".join(sorted(defaults))
            fail(src, path, f"unknown key (valid here: {valid})")
        if isinstance(defaults[k], dict):
            if v is None:
                continue
            if not isinstance(v, dict):
                fail(src, path, f"expected a mapping, got {type(v).__name__}")
            out[k] = _merge(defaults[k], v, src, path + ".")
        else:
            out[k] = v
    return out




def _int_list(sc: dict, src: str, key: str, lo: int) -> list[int]:
    """A top-level list of integers (a single integer is accepted as a list of one)."""
    v = sc[key]
    if isinstance(v, int) and not isinstance(v, bool):
        v = sc[key] = [v]
    if not isinstance(v, list) or not v:
        fail(src, key, "expected a non-empty list of integers")
    for x in v:
        check_int(src, key, x, lo=lo)
    return v


def resolve(raw: dict, src: str = "<scenario>", data_root: str | None = None, base_dir: str | None = None) -> dict:
    """Validate a scenario mapping and fill in every default. Paths become absolute."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{src}: expected a mapping at the top level, got {type(raw).__name__}")
    sc = _merge(DEFAULTS, raw, src)
    if isinstance(raw.get("coreset"), dict) and raw["coreset"].get("rebalance") == "recompute":
        fail(src, "coreset.rebalance", "'recompute' was removed in 0.2 (it ran truncation): use 'authors' "
                                        "(the authors' re-reduction, fresh projection each time) or 'truncate'")
    for key, allowed in _CHOICES.items():
        sect, k = key.split(".")
        choices = allowed()
        if not isinstance(sc[sect][k], str) or sc[sect][k] not in choices:
            fail(src, key, f"{sc[sect][k]!r} is not one of {', '.join(choices)}")
    if sc["name"] is None:
        sc["name"] = Path(src).stem if src != "<scenario>" else "scenario"
    if not isinstance(sc["name"], str) or not sc["name"] or "/" in sc["name"]:
        fail(src, "name", f"expected a plain name, got {sc['name']!r}")
    ds = sc["dataset"]
    if data_root is not None:
        ds["root"] = data_root
    if get_dataset_kind(ds["kind"]).needs_root:
        if not ds["root"]:
            fail(src, "dataset.root", f"a {ds['kind']} data set needs a root folder (or --data-root)")
        root = Path(os.path.expanduser(str(ds["root"])))
        if not root.is_absolute():
            root = Path(base_dir or ".") / root
        ds["root"] = str(root.resolve())
    tasks = ds["tasks"]
    if isinstance(tasks, dict):  # multi-category steps {merged: [categories]}: orders run over the merged names
        from ..data.merge import parse_task_spec
        from ..errors import DataError

        try:
            ds["tasks"] = parse_task_spec(tasks)
        except DataError as e:
            raise ScenarioError(f"{src}: {e}") from None
    elif tasks is not None:
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            fail(src, "dataset.tasks", "expected a non-empty list of task names")
        if len(set(tasks)) != len(tasks):
            fail(src, "dataset.tasks", "duplicate task names")
    for k in ("image_size", "max_train", "max_test", "seed"):
        check_int(src, f"dataset.{k}", ds[k], lo=1 if k != "seed" else 0)
    if ds["image_size"] < MIN_IMAGE_SIZE:
        fail(src, "dataset.image_size", f"must be at least {MIN_IMAGE_SIZE}, got {ds['image_size']}")
    for k in ("train", "test", "seed"):
        check_int(src, f"dataset.synthetic.{k}", ds["synthetic"][k], lo=0 if k == "seed" else 2)
    if unknown := set(ds["synthetic"]) - {"train", "test", "seed"}:
        fail(src, f"dataset.synthetic.{sorted(unknown)[0]}", "unknown key")
    m = sc["model"]
    if not isinstance(m["backbone"], str):
        fail(src, "model.backbone", "expected a timm model name")
    w = m["weights"]
    if w not in ("bundled", "none", "pretrained"):
        wp = Path(os.path.expanduser(str(w)))
        if not wp.is_absolute():
            wp = Path(base_dir or ".") / wp
        m["weights"] = str(wp.resolve())
    if m["layers"] is not None and (not isinstance(m["layers"], list) or len(m["layers"]) != 2):
        fail(src, "model.layers", "expected null or a list of two layer names")
    check_int(src, "model.batch_size", m["batch_size"], lo=1)
    strategies = sc["strategies"]
    if isinstance(strategies, str):
        strategies = sc["strategies"] = [strategies]
    if not isinstance(strategies, list) or not strategies:
        fail(src, "strategies", "expected a non-empty list")
    for s in strategies:
        if s not in STRATEGIES:
            fail(src, "strategies", f"unknown strategy {s!r} (valid: {', '.join(sorted(STRATEGIES))})")
    if len(set(strategies)) != len(strategies):
        fail(src, "strategies", "duplicate strategy")
    ms = _int_list(sc, src, "memory_sizes", lo=1)
    _int_list(sc, src, "seeds", lo=0)
    if sc["coreset"]["projection_dim"] != "auto":
        check_int(src, "coreset.projection_dim", sc["coreset"]["projection_dim"], lo=1)
    check_int(src, "evaluation.gallery", sc["evaluation"]["gallery"], lo=0)
    if tasks is not None:
        check_orders(sc, src)
        n_max = max(len(tasks) if o in DIFFICULTY_ORDERS else len(o) for o in order_entries(sc))
        if min(ms) < n_max:
            fail(src, "memory_sizes", f"memory size {min(ms)} is smaller than the number of tasks ({n_max})")
    return sc




def _check_ints(node, src: str, key: str = "") -> None:
    """YAML 1.1 reads 010 as octal 8 and 1:30 as base-60 90, silently; a scenario's numbers never mean that."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _check_ints(v, src, f"{key}.{k.value}" if key else str(k.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_ints(v, src, f"{key}[{i}]")
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        body = str(node.value).replace("_", "").lstrip("+-")
        if ":" in body or (len(body) > 1 and body[0] == "0" and body[1:].isdigit()):
            fail(src, key or "<top>", f"{node.value} (line {node.start_mark.line + 1}) would be read as "
                                       f"{yaml.safe_load(node.value)} (a YAML 1.1 octal or base-60 number); write "
                                       "it without the leading zero or colon")


def load_scenario(path: str | os.PathLike, data_root: str | None = None) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{path}: scenario file not found")
    try:
        text = p.read_text()
        raw = yaml.safe_load(text)
        _check_ints(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read: {e}") from None
    if raw is None:
        raise ScenarioError(f"{path}: the scenario file is empty")
    return resolve(raw, str(path), data_root=data_root, base_dir=str(p.parent.resolve()))


@dataclass(frozen=True)
class Run:
    """One simulated run: (strategy, memory size, seed, order)."""

    strategy: str
    memory_size: int
    seed: int
    order: tuple[str, ...]

    @property
    def order_str(self) -> str:
        return " > ".join(self.order)

    @property
    def run_id(self) -> str:
        """The `run_id` column of the results (interface.md): names this (strategy, memory size, seed, order)."""
        h = hashlib.sha1(self.order_str.encode()).hexdigest()[:10]
        return f"{self.strategy}-M{self.memory_size}-s{self.seed}-{h}"

    @property
    def trial_id(self) -> str:
        """Deprecated alias of `run_id` (0.1.0's name; a Tune trial carries a group of runs)."""
        return self.run_id


def expand_runs(sc: dict, difficulty: dict[str, float] | None = None) -> list[Run]:
    """Every (strategy, memory size, seed, order) of a resolved scenario.

    difficulty: {task: single-task image AUROC}, needed (and only used) when the orders are
    easy_to_hard / hard_to_easy; ScenarioError when it is needed but missing or incomplete.
    """
    orders = expand_orders(sc, difficulty)
    return [Run(s, m, seed, o) for seed in sc["seeds"] for s in sc["strategies"]
            for m in sc["memory_sizes"] for o in orders]


def group_runs(runs: list[Run], max_orders: int = 720) -> dict[str, list[Run]]:
    """Coarse Tune trials: one per (strategy, memory size, seed), split into chunks of orders.

    All orders of one strategy share the evaluation memo inside a trial, so fewer, larger
    trials are both cheaper for Tune and faster for the memo.
    """
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.strategy, r.memory_size, r.seed), []).append(r)
    out = {}
    for (s, m, seed), rs in groups.items():
        for c in range(0, len(rs), max_orders):
            out[f"{s}-M{m}-s{seed}-g{c // max_orders}"] = rs[c : c + max_orders]
    return out


_NEW_KEYS = (("dataset", "resize", "crop"), ("evaluation", "maskless_pixels", "skip"))


def scenario_hash(sc: dict) -> str:
    """Content hash of everything that changes results (not the name or output folder)."""
    body = {k: v for k, v in sc.items() if k not in ("name", "pclsim_version", "scenario_hash", "data_hash")}
    body["evaluation"] = {k: v for k, v in body.get("evaluation", {}).items() if k != "gallery"}  # output only
    # keys added after 0.1.0 leave the hash of a scenario at their default unchanged (old folders still resume)
    for sect, k, default in _NEW_KEYS:
        if isinstance(body.get(sect), dict) and body[sect].get(k) == default:
            body[sect] = {kk: vv for kk, vv in body[sect].items() if kk != k}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
