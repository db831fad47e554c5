"""The metrics of a run, in one table: name, kind, display label, chance level, reference function.

Every place that needs to know about a metric reads it from here: `results.chance_level` (the
FWT baseline of a task never trained on), the report's Table 1 rows and their labels, and the
tests. A new metric is one `register_metric(Metric(...))` call (plus its function in
`pclsim.metrics` and its test); a name that was never registered raises KeyError instead of
getting a baseline guessed from its suffix.

Kinds
- "image": computed from the task's image labels and image scores; the chance level may use the
  image prevalence (share of anomalous test images).
- "pixel": computed from the pooled pixels of the task's masks and anomaly maps, only for tasks
  with masks; the chance level may use the pixel prevalence (share of anomalous pixels).
- "routing": task identification of strategies with one bank per task (method.md section 3);
  the chance level may use the number of tasks.

Chance levels (the value of a scorer without information, method.md section 6 for the metrics):
- ROC AUC: 0.5, the area under the diagonal ROC curve of random scores.
- F1-max: 2p / (1 + p). Random scores have precision p at every threshold, so at recall q
  F1 = 2pq / (p + q), largest at q = 1 (calling every item anomalous).
- PR area and average precision: p, the precision of random scores at every recall.
- AU-PRO (fpr_limit 0.3): PRO(fpr) = fpr for random maps, so the normalised area up to 0.3 is
  (0.3^2 / 2) / 0.3 = 0.15.
- task identification accuracy: 1 / T, a bank chosen uniformly among T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import metrics as metric_fns

__all__ = ["Metric", "METRICS", "KINDS", "register_metric", "unregister_metric", "get_metric", "metric_names",
           "metric_label", "chance_of"]

KINDS = ("image", "pixel", "routing")


@dataclass(frozen=True)
class Metric:
    """One metric of the T x T matrices.

    name: the `metric` value in matrices.parquet / summary.parquet.
    kind: "image" | "pixel" | "routing" (see the module docstring).
    label: how tables and figures name it (e.g. "pixel AU-PRO").
    chance: chance(prevalence, n_tasks) -> float, the value a scorer without information gets;
        prevalence is the share of anomalous images (kind "image") or pixels (kind "pixel") of the
        task, a fraction in [0, 1]; n_tasks is T. Functions that need neither ignore them.
    function: the reference single-metric function in `pclsim.metrics` (labels, scores) or
        (masks, maps) -> float; None where the evaluator computes the value itself (task_id_acc).
    table1: a row of the report's Table 1 (the paper's layout, method.md section 7).
    higher_is_better: True, False (lower is better: a false-positive rate) or None (a level without a
        better direction: a threshold); the order statistics' best and worst orders follow it.
    not_summarised: {summary column: why}: the continual quantities of summary.parquet
        (pclsim.analysis.summary.QUANTITIES) that have no meaning for this metric; the summary
        stores them as null with this reason. Every other quantity is computed where the matrix
        defines it.
    """

    name: str
    kind: str
    label: str
    chance: Callable[[float, int], float]
    function: Callable | None = None
    table1: bool = False
    not_summarised: dict = field(default_factory=dict)
    higher_is_better: bool | None = True   # False: lower is better (an FPR); None: a level with no direction

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.name or "|" in self.name:
            raise ValueError(f"metric name must be non-empty and without '|' (the routed split), got {self.name!r}")


METRICS: dict[str, Metric] = {}
# metrics at fitted thresholds ("image_f1@fpr0.05"): built on first lookup from their name, kept apart from
# METRICS (the registered, scenario-independent table that Table 1 and the evaluator's loop read)
_DERIVED: dict[str, Metric] = {}


def register_metric(metric: Metric, replace: bool = False) -> Metric:
    """Add `metric` to the table (in registration order, which is the order of Table 1's rows).

    Raises ValueError when the name is taken, unless replace=True."""
    if metric.name in METRICS and not replace:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a registered metric (tests that register a toy one). Raises KeyError if unknown."""
    del METRICS[name]


def get_metric(name: str) -> Metric:
    """The registered metric called `name`. Raises KeyError naming the registered ones.

    A metric at a fitted threshold ("image_f1@fpr0.05", pclsim.core.thresholds) is built from its name on
    its first lookup, in whatever process asks (a Ray worker included), and kept apart from METRICS."""
    try:
        return METRICS[name]
    except KeyError:
        if name not in _DERIVED:
            deployed = _threshold_metric(name)
            if deployed is not None:
                _DERIVED[name] = deployed
        if name in _DERIVED:
            return _DERIVED[name]
        raise KeyError(f"unknown metric {name!r}: register it with pclsim.core.metric_registry.register_metric "
                       f"(registered: {', '.join(METRICS)})") from None


def metric_names(kind: str | None = None, table1: bool | None = None) -> list[str]:
    """Registered metric names in registration order, optionally of one kind / only Table 1's."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return [m.name for m in METRICS.values()
            if (kind is None or m.kind == kind) and (table1 is None or m.table1 == table1)]


def metric_label(name: str) -> str:
    """The display label of a registered metric; an unregistered name is shown as it is."""
    m = METRICS.get(name)
    return m.label if m is not None else name


def chance_of(name: str, prevalence: float | None = None, n_tasks: int = 1) -> float:
    """Chance level of metric `name` for a task with the given prevalence (fraction) and T tasks.

    Raises KeyError for an unregistered metric; ValueError when the metric needs a prevalence
    and none (or one outside [0, 1]) is given."""
    m = get_metric(name)
    if prevalence is not None and not 0.0 <= float(prevalence) <= 1.0:
        raise ValueError(f"{name}: prevalence must be a fraction in [0, 1], got {prevalence!r}")
    if int(n_tasks) < 1:
        raise ValueError(f"{name}: n_tasks must be >= 1, got {n_tasks!r}")
    return float(m.chance(prevalence, int(n_tasks)))


# ----------------------------------------------------------------------------- chance levels

def _half(p, n_tasks):
    return 0.5


def _f1_all_positive(p, n_tasks):
    p = _need_prevalence(p, "F1-max")
    return 2.0 * p / (1.0 + p)


def _prevalence(p, n_tasks):
    return _need_prevalence(p, "precision-recall area")


def _aupro_random(p, n_tasks, fpr_limit=0.3):
    return fpr_limit / 2.0  # integral of x dx from 0 to the limit, divided by the limit


def _threshold_metric(name: str) -> Metric | None:
    """The Metric of a name "<base>@<policy>" of pclsim.core.thresholds, or None (chance levels: that module)."""
    from .thresholds import alarm_rate, split_metric_name

    got = split_metric_name(name)
    if got is None:
        return None
    base, policy = got
    r = alarm_rate(policy)
    label = {"image_precision": "image precision", "image_recall": "image recall", "image_f1": "image F1",
             "image_fpr": "image FPR", "threshold": "threshold", "threshold_drift": "threshold drift"}[base]
    label = f"{label} @ {policy.label}"
    if base == "image_precision":
        chance = _prevalence
    elif base == "image_recall" or base == "image_fpr":
        chance = lambda p, n_tasks: r  # noqa: E731
    elif base == "image_f1":
        def chance(p, n_tasks):
            p = _need_prevalence(p, "F1")
            return 2 * p * r / (p + r)
    else:
        chance = lambda p, n_tasks: float("nan")  # noqa: E731
    direction = True
    if base in ("threshold", "threshold_drift"):
        direction = None
        why = (f"{base} is a {'score level' if base == 'threshold' else 'relative change of a score level'}, not a "
               "performance: only its final mean is summarised")
        skip = {q: why for q in ("avg_forgetting_pct", "avg_forgetting_paper_pct", "max_forgetting", "bwt", "fwt")}
    elif base == "image_fpr":
        direction = False
        why = "a false-positive rate is better when LOWER: a drop is no forgetting (read BWT with its sign inverted)"
        skip = {q: why for q in ("avg_forgetting_pct", "avg_forgetting_paper_pct", "max_forgetting")}
    else:
        skip = {}
    return Metric(name, "image", label, chance, None, table1=False, not_summarised=skip, higher_is_better=direction)


def _one_of_tasks(p, n_tasks):
    return 1.0 / n_tasks


def _need_prevalence(p, what):
    if p is None:
        raise ValueError(f"the chance level of a {what} needs the prevalence of anomalous items")
    return float(p)


# ----------------------------------------------------------------------------- the metrics of pclsim

# Routing accuracy: its final mean, its drop (BWT, max forgetting) and its confusion (routing.parquet)
# mean what they say. A RELATIVE drop does not: a task that two look-alike tasks share is routed to the
# other's bank from its own step on (a[i][i] = 0), and the drop relative to 0 is no forgetting. Nor
# does FWT: before a task's step its bank does not exist, so a[i-1][i] = 0 by construction.
_RELATIVE = "a relative drop of routing accuracy is not forgetting (a[i][i] is 0 whenever a look-alike task takes the routing)"
_ROUTING_NOT_SUMMARISED = {
    "avg_forgetting_pct": _RELATIVE, "avg_forgetting_paper_pct": _RELATIVE,
    "fwt": "routing accuracy before a task's step is 0 by construction (its bank does not exist yet)",
}

for _m in (
    Metric("image_auroc", "image", "image AUROC", _half, metric_fns.image_auroc, table1=True),
    Metric("image_f1", "image", "image F1", _f1_all_positive, metric_fns.f1_max, table1=True),
    Metric("pixel_auroc", "pixel", "pixel AUROC", _half, metric_fns.pixel_auroc, table1=True),
    Metric("pixel_f1", "pixel", "pixel F1", _f1_all_positive, metric_fns.pixel_f1, table1=True),
    Metric("pixel_pr", "pixel", "pixel PR", _prevalence, metric_fns.pixel_pr, table1=True),
    Metric("pixel_ap", "pixel", "pixel AP", _prevalence, metric_fns.pixel_ap),
    Metric("pixel_aupro", "pixel", "pixel AU-PRO", _aupro_random, metric_fns.aupro, table1=True),
    Metric("task_id_acc", "routing", "task-ID accuracy", _one_of_tasks, not_summarised=_ROUTING_NOT_SUMMARISED),
):
    register_metric(_m)
del _m
