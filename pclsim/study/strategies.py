"""The compared strategies (method.md section 4), each a small class.

A strategy says, after each step of a stream, which memory banks exist and how a test image of
a given task is scored against them. A bank is named by a `BankRef`, a hashable description of
everything its vectors depend on; `pclsim.study.banks` turns a `BankRef` into concrete vectors. Two
runs that reach the same `BankRef` reach the same bank, so their evaluations are shared (see
`protocol.Evaluator`).

To add a strategy, subclass `Strategy`, implement `banks` (and `scoring` if needed), and register
it with `@register`. To add a bank kind, register a resolver in `pclsim.study.banks` (`BANK_KINDS`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BankRef", "Strategy", "STRATEGIES", "REBALANCES", "JOINTS", "get_strategy", "register", "per_task_size"]

# coreset.rebalance (method.md sections 2-3):
#   authors:  every re-reduction re-runs greedy k-center on the stored bank with a fresh random
#             projection (the method as published); a bank depends on (task, arrival step, step).
#   truncate: idealised: one fixed projection, so a re-reduction keeps a prefix of the task's
#             selection order (prefix property) and the final state depends only on the SET of tasks.
REBALANCES = ("authors", "truncate")
# coreset.joint (method.md section 4): composable = greedy k-center over the union of the tasks' own
# selections; exact = greedy k-center over all their pooled training patches.
JOINTS = ("composable", "exact")


@dataclass(frozen=True, order=True)
class BankRef:
    """A memory bank, named by what its vectors depend on.

    kind: "task"      the first `size` vectors of the task's selection order (greedy k-center of all
                      its training patches);
          "rereduced" PatchCoreCL under `rebalance: authors`: the bank of task `tasks[0]` that arrived
                      at step `arrival`, after the re-reductions of steps arrival+1..`step` under the
                      total budget `budget` (size = floor(budget / (step + 1)));
          "random"    the first `size` vectors of a seeded random permutation (ablation);
          "joint"     greedy k-center over the union of the member tasks' selections (composable);
          "pool"      greedy k-center over all pooled patches of the member tasks (exact joint).
    tasks: the task, or the sorted set of tasks, the bank is built from.
    size: number of vectors in the bank.
    """

    kind: str
    tasks: tuple[str, ...]
    size: int
    arrival: int = -1
    step: int = -1
    budget: int = 0


def per_task_size(memory_size: int, n_seen: int) -> int:
    """PatchCoreCL's per-task budget after n_seen tasks: floor(M / n_seen) (method.md section 3)."""
    return memory_size // n_seen


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls):
    STRATEGIES[cls.name] = cls
    return cls


class Strategy:
    """Base class. memory_size: the budget M (vectors); rebalance: one of REBALANCES; joint: how a
    joint bank is selected ("composable" from the tasks' selections, "exact" from all patches)."""

    name = "base"
    identifies_task = False   # reports task-ID accuracy and routing

    def __init__(self, memory_size: int, rebalance: str = "authors", joint: str = "composable"):
        if rebalance not in REBALANCES:
            raise ValueError(f"rebalance must be one of {', '.join(REBALANCES)}, got {rebalance!r}")
        if joint not in JOINTS:
            raise ValueError(f"joint must be one of {', '.join(JOINTS)}, got {joint!r}")
        self.memory_size = int(memory_size)
        self.rebalance = rebalance
        self.joint = joint

    def banks(self, seen: tuple[str, ...]) -> tuple[BankRef, ...]:
        """The banks held after training the tasks `seen` (in arrival order)."""
        raise NotImplementedError

    def scoring(self, banks: tuple[BankRef, ...], eval_task: str) -> tuple[tuple[BankRef, ...], bool]:
        """(banks a test image of eval_task is scored against, whether to pick one by task identification)."""
        return banks, len(banks) > 1


@register
class PatchCoreCL(Strategy):
    """One bank per task under a fixed total budget M: floor(M/(t+1)) each, re-reduced on every task."""

    name = "patchcore_cl"
    identifies_task = True

    def banks(self, seen):
        s = len(seen) - 1
        n = per_task_size(self.memory_size, len(seen))
        if self.rebalance == "truncate":
            return tuple(sorted(BankRef("task", (t,), n) for t in seen))
        return tuple(sorted(BankRef("rereduced", (t,), n, arrival=a, step=s, budget=self.memory_size)
                            for a, t in enumerate(seen)))


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


@register
class Joint(Strategy):
    """One bank of size M selected from the pooled patches of all tasks seen so far."""

    name = "joint"

    def banks(self, seen):
        kind = "pool" if self.joint == "exact" else "joint"
        return (BankRef(kind, tuple(sorted(seen)), self.memory_size),)


@register
class Finetune(Strategy):
    """A single bank of size M, replaced by the newest task's bank: the forgetting baseline."""

    name = "finetune"

    def banks(self, seen):
        return (BankRef("task", (seen[-1],), self.memory_size),)


@register
class RandomCL(PatchCoreCL):
    """Ablation: PatchCoreCL's budget and task identification, banks drawn at random instead of k-center."""

    name = "random_cl"

    def banks(self, seen):
        n = per_task_size(self.memory_size, len(seen))
        return tuple(sorted(BankRef("random", (t,), n) for t in seen))


def get_strategy(name: str, memory_size: int, rebalance: str = "authors", joint: str = "composable") -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(sorted(STRATEGIES))}") from None
    return cls(memory_size, rebalance, joint)
