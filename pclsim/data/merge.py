"""Multi-category steps: one task of the stream made of several categories (class-incremental protocols).

Scenario syntax: `dataset.tasks` as a mapping from the step's name to its categories, e.g.
```yaml
dataset:
  kind: mvtec
  tasks: {objects_A: [bottle, cable, capsule], objects_B: [carpet]}
```
Orders, matrices and the summary then speak of the merged tasks (objects_A, objects_B): a merged
task's train set is its categories' train sets concatenated (each capped on its own, seeded by
the category's name, as if it were loaded alone), its test set likewise. So a merged task of one
category has exactly that category's images and gives exactly its values.

Per-category values: every merged task's test set is the concatenation of its categories' test
sets, so a category's values are the metrics over its slice of the merged test set, scored
against the same banks (the same image scores, task identification and maps). They are named
"<merged>/<category>" and kept apart from the matrices (`categories.parquet`: the matrices'
columns plus `category`, written by pclsim.results.categories), so every consumer of the T x T
matrices is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .images import TaskData

__all__ = ["MergedTaskData", "parse_task_spec", "merge_tasks", "load_merged", "category_parts",
           "add_category_views", "CategoryResult", "run_categories"]

SEP = "/"


@dataclass
class MergedTaskData(TaskData):
    """A TaskData made of several categories, in order: (category, n_train, n_test) each."""

    categories: tuple = field(default_factory=tuple)


def parse_task_spec(tasks, where: str = "dataset.tasks") -> dict[str, list[str]] | None:
    """A mapping {merged name: [category, ...]} checked, or None for a plain list. Raises DataError."""
    if not isinstance(tasks, dict):
        return None
    if not tasks:
        raise DataError(f"{where}: expected at least one merged task")
    seen: dict[str, str] = {}
    out = {}
    for name, cats in tasks.items():
        if not isinstance(name, str) or not name or SEP in name or ">" in name:
            raise DataError(f"{where}: merged task name {name!r} must be a non-empty name without '/' or '>'")
        if isinstance(cats, str):
            cats = [cats]
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) and c for c in cats):
            raise DataError(f"{where}.{name}: expected a non-empty list of category names")
        for c in cats:
            if c in seen:
                raise DataError(f"{where}.{name}: category {c!r} is already in {seen[c]!r}")
            seen[c] = name
        out[name] = list(cats)
    return out


def merge_tasks(name: str, parts: list[TaskData]) -> MergedTaskData:
    """Concatenate categories into one task. has_masks only when every category has masks (a category
    without masks would otherwise count its anomalous images' pixels as normal)."""
    if not parts:
        raise DataError(f"merged task {name!r} has no categories")
    return MergedTaskData(name=name, train=[s for p in parts for s in p.train], test=[s for p in parts for s in p.test],
                          has_masks=all(p.has_masks for p in parts),
                          chosen={p.name: p.chosen for p in parts} if any(p.chosen for p in parts) else None,
                          categories=tuple((p.name, len(p.train), len(p.test)) for p in parts),
                          validation=[s for p in parts for s in p.validation]
                          if all(p.validation for p in parts) else None)


def load_merged(dataset: dict, data_root, load_stream) -> list[MergedTaskData]:
    """load_stream for a `tasks` mapping: every category loaded as its own task, then merged per step."""
    spec = parse_task_spec(dataset.get("tasks"))
    flat = [c for cats in spec.values() for c in cats]
    loaded = {t.name: t for t in load_stream(dict(dataset, tasks=flat), data_root)}
    return [merge_tasks(name, [loaded[c] for c in cats]) for name, cats in spec.items()]


def category_parts(stream) -> dict[str, list[tuple[str, int]]]:
    """{merged task: [(category, n_test), ...]} of the merged tasks in a loaded stream ({} when none)."""
    return {t.name: [(c, n_te) for c, _, n_te in t.categories] for t in stream if isinstance(t, MergedTaskData)}


# ---------------------------------------------------------------- per-category values

def add_category_views(evaluator, parts: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Make "<merged>/<category>" evaluable on `evaluator` (pclsim.study.protocol.Evaluator.add_view): its slice of
    the merged task's test images, scored against the same banks (no copies, no new distances).
    Returns the category task names, in order. Raises ValueError when the counts do not match the features."""
    names = []
    for merged, cats in parts.items():
        task_features = evaluator.tasks[merged]
        if sum(n for _, n in cats) != task_features.test.shape[0]:
            raise ValueError(f"{merged}: categories hold {sum(n for _, n in cats)} test images, "
                             f"the features {task_features.test.shape[0]}")
        start = 0
        for cat, n in cats:
            sub = f"{merged}{SEP}{cat}"
            evaluator.add_view(sub, merged, slice(start, start + n))
            start += n
            names.append(sub)
    return names


@dataclass
class CategoryResult:
    """Per-category values of one run: metric -> (T steps, K categories) array; names "<merged>/<category>"."""

    names: list[str]
    matrices: dict[str, np.ndarray]

    def rows(self, order: tuple[str, ...]):
        """(step, train_task, eval_task (merged), category, metric, value) for every finite cell."""
        for metric, mat in self.matrices.items():
            for s in range(mat.shape[0]):
                for k, name in enumerate(self.names):
                    if np.isfinite(mat[s, k]):
                        merged, cat = name.split(SEP, 1)
                        yield s, order[s], merged, cat, metric, float(mat[s, k])


def run_categories(strategy, order: tuple[str, ...], evaluator, parts: dict[str, list[tuple[str, int]]]
                   ) -> CategoryResult:
    """Per-category values after every step of `order`: each category scored with the banks (and the task
    identification) its merged task gets. task_id_acc is left to the merged task's row."""
    T = len(order)
    names = [f"{m}{SEP}{c}" for m in order if m in parts for c, _ in parts[m]]
    mats: dict[str, np.ndarray] = {}
    for s in range(T):
        banks = strategy.banks(tuple(order[: s + 1]))
        for k, name in enumerate(names):
            merged = name.split(SEP, 1)[0]
            sb, ident = strategy.scoring(banks, merged)
            res = evaluator.evaluate(name, sb, ident or strategy.identifies_task)
            for metric, v in res.items():
                if metric != "task_id_acc" and "|" not in metric:  # routing splits stay with the merged task
                    mats.setdefault(metric, np.full((T, len(names)), np.nan))[s, k] = v
    return CategoryResult(names, mats)
