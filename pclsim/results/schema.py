"""The results contract: every Parquet table of a results folder, its columns, types, units and meaning.

One definition used by the writer (`pclsim.results.tables`, `pclsim.analysis.statistics`), the readers
(`results.read_table`, the report) and the tests. `../shared/design/interface.md` ("Results
folder") is the public description; this module is its executable form.

Names (interface.md): a *run* is one simulated (strategy, memory_size, seed, order), named by
`run_id`; the Ray Tune unit that carries several runs is a *group*. pclsim 0.1.0 wrote the run
column as `trial_id`: readers accept it (LEGACY_COLUMNS) and return `run_id`.

A table is either one file or a folder of part files, one per group (`parts=True`), which
`pandas.read_parquet(folder)` reads as one table. `columns` are what pclsim's writer produces, in
order; `extra` are columns another stage adds later (the sweep), which a reader may find or not.
A column with `optional=True` is absent from some folders (written by later versions only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["Column", "Table", "TABLES", "ORDER_SEPARATOR", "ROUTED_OUTCOMES", "LEGACY_COLUMNS", "legacy_renames",
           "MATRICES", "STEPS", "SUMMARY", "STATISTICS", "ROUTING", "ROUTED", "CATEGORIES", "TASKS",
           "MATRIX_SCHEMA", "STEPS_SCHEMA", "SUMMARY_COLUMNS", "STATISTICS_SCHEMA", "STATISTICS_COLUMNS",
           "ROUTING_SCHEMA", "ROUTED_SCHEMA", "CATEGORIES_SCHEMA"]

ORDER_SEPARATOR = " > "  # the `order` column: the run's task names in training order, joined by this
ROUTED_OUTCOMES = ("correct", "wrong")  # routed.parquet's `routed` column
LEGACY_COLUMNS = {"trial_id": "run_id"}  # 0.1.0's column name -> the current one


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, unit ("" for names and labels) and what a value means."""

    name: str
    type: pa.DataType
    unit: str
    meaning: str
    optional: bool = False


@dataclass(frozen=True)
class Table:
    """One Parquet table of a results folder.

    file: its name in the folder; row: what one row is; parts: a folder of part files (one per
    group) rather than one file; writer: the function that writes it; columns: the writer's
    columns in order; extra: columns a later stage adds (readers must not require them).
    """

    name: str
    file: str
    row: str
    writer: str
    columns: tuple[Column, ...]
    parts: bool = False
    extra: tuple[Column, ...] = field(default=())

    @property
    def schema(self) -> pa.Schema:
        """The writer's Arrow schema (`columns`, in order)."""
        return pa.schema([(c.name, c.type) for c in self.columns])

    @property
    def names(self) -> list[str]:
        """The writer's column names, in order."""
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        """Columns every folder has (readers may rely on them)."""
        return [c.name for c in self.columns if not c.optional]

    @property
    def optional(self) -> list[str]:
        """Columns a folder may lack: newer writer columns and the later stages' extra ones."""
        return [c.name for c in self.columns if c.optional] + [c.name for c in self.extra]

    @property
    def strings(self) -> list[str]:
        """The writer's text columns (names, labels), in order."""
        return [c.name for c in self.columns if pa.types.is_string(c.type)]

    def schema_of(self, names) -> pa.Schema:
        """The contract's Arrow schema for the columns `names` (the writer's order, then the extra columns).
        Raises KeyError naming a column the contract does not define (it would be dropped silently)."""
        names = list(names)
        known = [c.name for c in self.columns + self.extra]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"{self.file}: column(s) {', '.join(map(str, unknown))} not in the results contract")
        return pa.schema([(c.name, c.type) for c in self.columns + self.extra if c.name in names])

    def column(self, name: str) -> Column:
        """The column called `name` (writer's or extra). Raises KeyError if the table has none."""
        for c in self.columns + self.extra:
            if c.name == name:
                return c
        raise KeyError(f"{self.file} has no column {name!r}")

    def is_numeric(self, name: str) -> bool:
        """Whether the column holds integers or floats."""
        t = self.column(name).type
        return pa.types.is_integer(t) or pa.types.is_floating(t)


def legacy_renames(names) -> dict[str, str]:
    """{old: new} for the 0.1.0 column names among `names` whose current name is not also there."""
    names = set(names)
    return {old: new for old, new in LEGACY_COLUMNS.items() if old in names and new not in names}


_S, _I, _F = pa.string(), pa.int64(), pa.float64()
_RUN = (
    Column("run_id", _S, "", "one simulated run: (strategy, memory_size, seed, order); 0.1.0: trial_id"),
    Column("strategy", _S, "", "registered strategy name (pclsim.study.strategies), e.g. patchcore_cl"),
    Column("memory_size", _I, "vectors", "memory budget M of the run (method.md section 3)"),
    Column("seed", _I, "", "coreset seed (greedy k-center start, projections)"),
    Column("order", _S, "", f"task names in training order joined by {ORDER_SEPARATOR!r}"),
)
_STEP = Column("step", _I, "", "0-based training step: the matrix row, after training the step-th task")
_METRIC = Column("metric", _S, "", "registered metric name (pclsim.core.metric_registry); '<metric>@<policy>' "
                                   "for the label-free thresholds (pclsim.core.thresholds, e.g. image_f1@fpr0.05)")
_VALUE = Column("value", _F, "metric", "the metric's value, a fraction in [0, 1] (threshold@*: a score level; "
                                       "threshold_drift@*: a relative change); NaN where undefined")

MATRICES = Table(
    "matrices", "matrices.parquet", "(run, step, eval_task, metric): every cell of the full T x T matrices, "
    "seen and unseen tasks (pixel metrics only for tasks with masks)", "results.rows_table", parts=True,
    columns=_RUN + (_STEP, Column("train_task", _S, "", "the task trained at this step"),
                    Column("eval_task", _S, "", "the evaluated task: the matrix column"), _METRIC, _VALUE))

STEPS = Table(
    "steps", "steps.parquet", "(run, step): the memory bank(s) after the step", "results.steps_table", parts=True,
    columns=(_RUN[0], _STEP, Column("train_task", _S, "", "the task trained at this step"),
             Column("bank_vectors", _I, "vectors", "patch vectors stored over all banks"),
             Column("bank_mb", _F, "MB", "decimal MB of bank_vectors x D float32 values (method.md section 6)"),
             Column("seconds", _F, "s", "wall time of the step; NaN where not measured")))

_PCT = "% of the task's value just after training it"
SUMMARY = Table(
    "summary", "summary.parquet", "(run, metric): continual metrics of the run's T x T matrix (method.md "
    "section 6); a quantity the matrix does not define is null, and `undefined` says why",
    "analysis.summary.build_summary",
    columns=_RUN + (
        _METRIC,
        Column("final_mean", _F, "metric", "mean of the last matrix row (tasks with values)"),
        Column("avg_forgetting_pct", _F, "%", "average relative forgetting, 100/(T-1) sum (a[i][i]-a[T-1][i])/a[i][i]"),
        Column("bwt", _F, "metric", "backward transfer (Lopez-Paz and Ranzato 2017)"),
        Column("fwt", _F, "metric", "forward transfer against the chance level (Lopez-Paz and Ranzato 2017)"),
        Column("relative_gap", _F, "metric", "final_mean of joint (same seed, order, M) minus this run's; "
               "null for joint or without a joint run"),
        Column("bank_mb", _F, "MB", "bank memory after the last step (decimal MB of float32)"),
        Column("arch_mb", _F, "MB", "backbone parameters x 4 bytes"),
        Column("avg_forgetting_paper_pct", _F, "%", "the authors' form: the sum divided by 9 whatever T",
               optional=True),
        Column("max_forgetting", _F, "metric", "mean over tasks of the best earlier value minus the final "
               "one (Chaudhry et al. 2018)", optional=True),
        Column("undefined", _S, "", "why each null quantity of the row is null, 'column: reason' joined by "
               "'; ' (e.g. 'avg_forgetting_pct: matrix[1][1] is 0: relative forgetting is undefined'); "
               "null when every quantity is defined (0.2 folders: absent)", optional=True)),
    extra=(Column("maskless_pixels", _S, "", "how pixel metrics treat mask-less tasks: skip | paper "
                  "(added by the sweep)"),))

STATISTICS = Table(
    "statistics", "statistics.parquet", "(strategy, memory_size, metric, quantity, statistic, task): the "
    "order-robustness study (pclsim.analysis.statistics explains every statistic and its test)",
    "statistics.statistics_table",
    columns=(
        _RUN[1], _RUN[2], _METRIC,
        Column("quantity", _S, "", "final_mean | avg_forgetting_pct (per run), final_value | forgetting_pct "
               "(per task)"),
        Column("statistic", _S, "", "mean, seed_std, order_share, order_test, best_order, worst_order, "
               "best_worst_gap, position_slope, rereduction_slope, position_test, difficulty"),
        Column("task", _S, "", "the task; null for run-level and pooled statistics"),
        Column("order", _S, "", "best / worst order (names joined by ' > '), else null"),
        Column("value", _F, "quantity", "the statistic's value, in the unit of the quantity (slopes: per step)"),
        Column("ci_low", _F, "quantity", "lower end of the 95 % interval"),
        Column("ci_high", _F, "quantity", "upper end of the 95 % interval"),
        Column("p_value", _F, "", "p-value of the statistic's test"),
        Column("effect_size", _F, "", "effect size (its definition: pclsim.analysis.statistics)"),
        Column("n", _I, "", "observations behind the value (runs, orders or seeds: see the note)"),
        Column("method", _S, "", "the function used, e.g. scipy.stats.kruskal"),
        Column("note", _S, "", "why a value is NaN, or how to read it")))

ROUTING = Table(
    "routing", "routing.parquet", "(run, step, true task, chosen bank's task): test images routed there, for "
    "strategies that identify the task (method.md section 3); per (run, step, true task) the counts add up to "
    "that task's test images and the diagonal share is task_id_acc", "results.routing_table", parts=True,
    columns=_RUN + (_STEP, Column("true_task", _S, "", "the task the test images belong to"),
                    Column("chosen_task", _S, "", "the task whose bank they were routed to"),
                    Column("images", _I, "images", "test images routed so")))

ROUTED = Table(
    "routed", "routed.parquet", "(run, step, eval_task, routed, metric): every image metric on the correctly "
    "and wrongly routed test images of a task", "results.routed_metrics_table", parts=True,
    columns=_RUN + (_STEP, Column("eval_task", _S, "", "the evaluated task"),
                    Column("routed", _S, "", " | ".join(ROUTED_OUTCOMES) + ": the images' routing outcome"),
                    _METRIC, Column("value", _F, "metric", "NaN where undefined, e.g. AUROC over one class")))

CATEGORIES = Table(
    "categories", "categories.parquet", "(run, step, merged eval_task, category, metric): per-category values "
    "of merged tasks", "data.category_table.categories_table", parts=True,
    columns=MATRICES.columns + (Column("category", _S, "", "the category inside the merged task"),))

TASKS = Table(
    "tasks", "tasks.parquet", "task: sizes and label prevalences (chance levels, the report's task table)",
    "sweep (actors.task_stats)",
    columns=(
        Column("task", _S, "", "task name"),
        Column("train_patches", _I, "patches", "training patch vectors (the bank's source: calibration images excluded)"),
        Column("calibration_images", _I, "images", "normal training images held out of every bank to fit the "
                                                  "thresholds (dataset.calibration); 0 without"),
        Column("test_images", _I, "images", "test images"),
        Column("dim", _I, "", "feature dimension D"),
        Column("image_prevalence", _F, "fraction", "share of anomalous test images"),
        Column("pixel_prevalence", _F, "fraction", "share of anomalous test pixels; NaN without masks"),
        Column("arch_mb", _F, "MB", "backbone parameters x 4 bytes"),
        Column("maskless_pixels", _S, "", "skip | paper: the policy for tasks without masks"),
        Column("maskless_all_ones", pa.list_(_I), "", "test images given all-one masks under 'paper'"),
        Column("backbone_device", _S, "", "the device that extracted the features")),
    extra=(Column("difficulty_image_auroc", _F, "metric", "single-task image AUROC (easy_to_hard orders)"),
           Column("difficulty_rank", _I, "", "1 = easiest")))


DESIGN = Table(
    "design", "design.parquet", "one decision of an adaptive order design (pclsim.study.adaptive): an evaluated "
    "order (kind 'order'), a stopping check of sample: auto (kind 'check'), its stop (kind 'stop') or a search's "
    "outcome (kind 'result')", "runner.adaptive.write_design",
    columns=(
        Column("design", _S, "", "search | sample_auto"),
        Column("round", _I, "", "0-based round that decided the row (a round's orders run as one batch of trials)"),
        Column("kind", _S, "", "order | check | stop | result"),
        Column("order", _S, "", "the order (names joined by ' > '); null for checks and stops"),
        Column("role", _S, "", "search: the search's own order | uniform: the uniform sample of the same budget | "
               "sample: an order of sample: auto"),
        _RUN[1], _RUN[2], _METRIC,
        Column("quantity", _S, "", "final_mean (an order's value, or the check of the mean over orders) | "
               "position_slope (a task's check)"),
        Column("task", _S, "", "the task of a position_slope check, else null"),
        Column("value", _F, "metric", "an order's final mean (mean over tasks of a[T-1][j], then over seeds); a "
               "check: the mean over the orders so far; NaN where none"),
        Column("ci_half_width", _F, "metric", "95 % t-interval half-width of the check (slopes: per step), or the "
               "widest one at a stop; NaN for orders"),
        Column("n", _I, "", "orders evaluated so far (the search's own, or all orders of sample: auto)"),
        Column("note", _S, "", "running extreme (search), batch kind (checks), why it stopped (stop, result)")))

TABLES = {t.name: t for t in (MATRICES, STEPS, SUMMARY, STATISTICS, ROUTING, ROUTED, CATEGORIES, TASKS,
                                DESIGN)}

MATRIX_SCHEMA = MATRICES.schema
STEPS_SCHEMA = STEPS.schema
SUMMARY_COLUMNS = SUMMARY.names
STATISTICS_SCHEMA = STATISTICS.schema
STATISTICS_COLUMNS = STATISTICS.names
ROUTING_SCHEMA = ROUTING.schema
ROUTED_SCHEMA = ROUTED.schema
CATEGORIES_SCHEMA = CATEGORIES.schema
