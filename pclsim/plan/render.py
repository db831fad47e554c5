"""`pclsim plan`'s text: the node, the sizes, one row per stage, the totals, what will not fit."""

from __future__ import annotations

__all__ = ["plan_text", "duration", "gigabytes"]

GB = 1e9


def duration(seconds: float | None) -> str:
    """'42 s', '3.5 min', '2.1 h', '1.4 days'; 'not calibrated' for None."""
    if seconds is None:
        return "not calibrated"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def gigabytes(nbytes: float) -> str:
    """Decimal GB with a precision that suits the size ('0.02 GB', '5.3 GB', '174 GB')."""
    g = nbytes / GB
    return f"{g:.2f} GB" if g < 1 else f"{g:.1f} GB" if g < 100 else f"{g:,.0f} GB"


def _counts(plan) -> str:
    tasks = list(plan.tasks.values())
    same = all((t.train, t.test, t.held) == (tasks[0].train, tasks[0].test, tasks[0].held) for t in tasks)
    if same:
        t = tasks[0]
        held = f" ({t.held} of them held out of the banks)" if t.held else ""
        return f"{t.train:,} train + {t.test:,} test images a task{held}"
    return ", ".join(f"{t.name} {t.train:,} + {t.test:,}" for t in tasks) + " train + test images"


def plan_text(plan) -> str:
    n = plan.node
    gpus = f"{n.gpus} GPU{'s' if n.gpus != 1 else ''}" if n.gpus else "no GPU"
    from pathlib import Path

    from .calibration import BUNDLED

    cal = plan.calibration
    where = f"{cal.get('cpus', '?')} CPUs" + (f", {cal['gpus']} GPUs" if cal.get("gpus") else "")
    path = cal.get("path")
    if path and Path(path).resolve() == BUNDLED.resolve():
        path = "the bundled pclsim/plan/calibration.json"
    lines = [f"plan: {plan.scenario} on {n.cpus} CPUs, {gpus}, {gigabytes(n.memory)} memory, "
             f"{gigabytes(n.disk)} free disk" + (f" in {n.disk_path}" if n.disk_path else ""),
             f"  {len(plan.tasks)} tasks, {_counts(plan)}{'' if plan.counted else ' (assumed)'}; "
             f"{plan.patches:,} patches an image, D = {plan.dim:,}; {plan.runs:,} runs in {plan.trials:,} trials",
             f"  coefficients: {path} (measured on {where}"
             + (f", {cal['date']}" if cal.get("date") else "") + ")", ""]
    rows = [("stage", "jobs", "at once", "time", "peak memory", "disk")]
    for s in plan.stages:
        rows.append((s.name, f"{s.jobs:,}", f"{s.lanes} {s.device.upper()}", duration(s.seconds), gigabytes(s.peak),
                     gigabytes(s.disk)))
    rows.append(("total", "", "", duration(plan.seconds), gigabytes(plan.peak_memory), gigabytes(plan.disk)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("  (memory: the whole process tree, Ray included, at the stage's peak; total memory is the largest "
                 "stage's; total disk: the feature store, candidate tables, banks and results, plus a task's "
                 "chunks while it is assembled)")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if plan.fits:
        lines.append("fits: nothing above exceeds the node")
    for p in plan.problems:
        lines.append(f"will not fit: {p}")
    return "\n".join(lines)
