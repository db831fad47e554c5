"""The compared strategies (method.md section 4), each a small class.

A strategy says, after each step of a stream, which memory banks exist and how a test image of
a given task is scored against them. A bank is named by a `BankRef`: the source whose
selection order it truncates, and how many vectors it keeps. Because every bank is a prefix of
a selection order computed once, two orders that reach the same SET of seen tasks reach the
same banks, and their evaluations are shared (see protocol.Evaluator).

To add a strategy, subclass `Strategy`, implement `banks` and (if needed) `scoring`, and
register it with `@register`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BankRef", "Strategy", "STRATEGIES", "get_strategy", "register", "per_task_size"]


@dataclass(frozen=True, order=True)
class BankRef:
    kind: str            # "task": a task's greedy order; "joint": greedy order of a set of tasks; "random": a random order
    tasks: tuple[str, ...]  # the task (or sorted set of tasks) the bank is built from
    size: int            # number of vectors kept (a prefix of the source's selection order)


def per_task_size(memory_size: int, n_seen: int) -> int:
    """PatchCoreCL's per-task budget after n_seen tasks: floor(M / n_seen)."""
    return memory_size // n_seen


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls):
    STRATEGIES[cls.name] = cls
    return cls


class Strategy:
    name = "base"
    identifies_task = False   # reports task-ID accuracy

    def __init__(self, memory_size: int):
        self.memory_size = int(memory_size)

    def banks(self, seen: tuple[str, ...]) -> tuple[BankRef, ...]:
        """The banks held after training the tasks `seen` (in arrival order)."""
        raise NotImplementedError

    def scoring(self, banks: tuple[BankRef, ...], eval_task: str) -> tuple[tuple[BankRef, ...], bool]:
        """(banks a test image of eval_task is scored against, whether to pick one by task identification)."""
        return banks, len(banks) > 1

    def source_sizes(self, tasks: tuple[str, ...]) -> dict[str, set[int]]:
        """Prefix lengths this strategy can ask of each source kind over a stream of `tasks` (for planning)."""
        raise NotImplementedError


@register
class PatchCoreCL(Strategy):
    """One bank per task under a fixed total budget M: floor(M/(t+1)) each, rebalanced on every task."""

    name = "patchcore_cl"
    identifies_task = True

    def banks(self, seen):
        n = per_task_size(self.memory_size, len(seen))
        return tuple(sorted(BankRef("task", (t,), n) for t in seen))

    def source_sizes(self, tasks):
        return {"task": {per_task_size(self.memory_size, s) for s in range(1, len(tasks) + 1)}}


@register
class MultiModel(Strategy):
    """One independent PatchCore of size M per task, scored with the task's own model (oracle identity).

    A task not seen yet has no model of its own: its images are scored by the model that task
    identification picks among those that exist.
    """

    name = "multi_model"

    def banks(self, seen):
        return tuple(sorted(BankRef("task", (t,), self.memory_size) for t in seen))

    def scoring(self, banks, eval_task):
        own = tuple(b for b in banks if b.tasks == (eval_task,))
        return (own, False) if own else (banks, len(banks) > 1)

    def source_sizes(self, tasks):
        return {"task": {self.memory_size}}


@register
class Joint(Strategy):
    """One bank of size M selected from the pooled patches of all tasks seen so far."""

    name = "joint"

    def banks(self, seen):
        return (BankRef("joint", tuple(sorted(seen)), self.memory_size),)

    def source_sizes(self, tasks):
        return {"joint": {self.memory_size}}


@register
class Finetune(Strategy):
    """A single bank of size M, replaced by the newest task's bank: the forgetting baseline."""

    name = "finetune"

    def banks(self, seen):
        return (BankRef("task", (seen[-1],), self.memory_size),)

    def source_sizes(self, tasks):
        return {"task": {self.memory_size}}


@register
class RandomCL(PatchCoreCL):
    """Ablation: PatchCoreCL's budget and task identification, banks drawn at random instead of k-center."""

    name = "random_cl"

    def banks(self, seen):
        n = per_task_size(self.memory_size, len(seen))
        return tuple(sorted(BankRef("random", (t,), n) for t in seen))

    def source_sizes(self, tasks):
        return {"random": {per_task_size(self.memory_size, s) for s in range(1, len(tasks) + 1)}}


def get_strategy(name: str, memory_size: int) -> Strategy:
    try:
        return STRATEGIES[name](memory_size)
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(sorted(STRATEGIES))}") from None
