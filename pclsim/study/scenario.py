"""Scenario files: loading, validation (unknown keys are errors), defaults, expansion into runs.

Every key, its default, meaning and check is in `pclsim.study.keys` (the scenario's typed model);
`resolve` is the one pass that merges a file over those defaults, runs each key's check, then the
checks that relate several keys (paths, tasks, orders, memory sizes against the tasks).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data import get_dataset_kind
from ..errors import ScenarioError
from .orders import (DIFFICULTY_ORDERS, check_orders, describe_orders, difficulty_order, expand_orders,
                     needs_difficulty, order_entries)
from .keys import check_keys, defaults
from . import adaptive as _adaptive  # noqa: F401  (registers the adaptive order designs: search, sample: auto)
from .scenario_checks import fail

_orders = expand_orders  # the name pclsim.report imports

__all__ = ["DEFAULTS", "load_scenario", "resolve", "Run", "expand_runs", "group_runs", "scenario_hash",
           "DIFFICULTY_ORDERS", "needs_difficulty", "difficulty_order", "describe_orders"]

# The built-in keys' defaults (0.2's name); `keys.defaults()` also holds keys registered later.
DEFAULTS = defaults()


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




def resolve(raw: dict, src: str = "<scenario>", data_root: str | None = None, base_dir: str | None = None) -> dict:
    """Validate a scenario mapping and fill in every default. Paths become absolute."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{src}: expected a mapping at the top level, got {type(raw).__name__}")
    sc = _merge(defaults(), raw, src)
    check_keys(sc, src)  # every key's own check, once (pclsim.study.keys)
    if sc["name"] is None:
        sc["name"] = Path(src).stem if src != "<scenario>" else "scenario"
    if not isinstance(sc["name"], str) or not sc["name"] or "/" in sc["name"]:
        fail(src, "name", f"expected a plain name, got {sc['name']!r}")
    ds = sc["dataset"]
    if data_root is not None:
        ds["root"] = data_root
    if not get_dataset_kind(ds["kind"]).needs_root and ds["root"] is not None:
        fail(src, "dataset.root", f"a {ds['kind']} data set reads no folder, but one was given "
                                  f"({'--data-root' if data_root is not None else 'dataset.root'}: {ds['root']})")
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
    m = sc["model"]
    w = m["weights"]
    if w not in ("bundled", "none", "pretrained"):
        wp = Path(os.path.expanduser(str(w)))
        if not wp.is_absolute():
            wp = Path(base_dir or ".") / wp
        m["weights"] = str(wp.resolve())
    ms = sc["memory_sizes"]
    if tasks is not None:
        check_orders(sc, src)
        n_max = max(len(tasks) if o in DIFFICULTY_ORDERS else len(o) for o in order_entries(sc))
        if min(ms) < n_max:
            fail(src, "memory_sizes", f"memory size {min(ms)} is smaller than the number of tasks ({n_max})")
    from ..core.thresholds import parse_policy

    policies = [parse_policy(p) for p in sc["evaluation"]["thresholds"]]
    for n, p in enumerate(policies):
        if p.kind == "valid" and (ds["kind"] != "bmad" or ds.get("protocol") != "clean"):
            fail(src, f"evaluation.thresholds[{n}]", "valid needs a labelled validation split kept apart from train "
                                                     f"and test: BMAD's valid/ under protocol clean has one; "
                                                     f"dataset.kind {ds['kind']}"
                                                     + (" under protocol paper (valid/ joins train and test)"
                                                        if ds["kind"] == "bmad" else " has none") + "; use fpr or sigma")
    if any(p.needs_calibration for p in policies) and not sc["dataset"]["calibration"]:
        fail(src, "dataset.calibration", "evaluation.thresholds fit each bank's threshold on held-out normal training "
                                         "images: set a share of them, e.g. dataset.calibration: 0.1")
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
    body = {k: v for k, v in sc.items() if k not in ("name", "pclsim_version", "scenario_hash", "data_hash",
                                                       "weights_used")}
    body["evaluation"] = {k: v for k, v in body.get("evaluation", {}).items() if k != "gallery"}  # output only
    # keys added after 0.1.0 leave the hash of a scenario at their default unchanged (old folders still resume)
    for sect, k, default in _NEW_KEYS:
        if isinstance(body.get(sect), dict) and body[sect].get(k) == default:
            body[sect] = {kk: vv for kk, vv in body[sect].items() if kk != k}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
