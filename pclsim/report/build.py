"""`build_report`: a results folder -> index.html, PNG figures and Table 1 (csv, md) in one folder."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from ..errors import PclsimError
from .figures import fig_curves, fig_heatmaps, fig_memory, fig_position, fig_robustness
from .deployed import deployed_section, protocol_section
from .gallery import fig_gallery
from .order import order_section
from .page import page, write_text
from .published import paper_comparison
from .reading import ReportData, first_line
from .tables import per_task_final, table1, table1_markdown, undefined_cells

__all__ = ["build_report", "report_command", "PUBLISHED_CSV"]

PUBLISHED_CSV = "table1_published.csv"  # the paper's published Table 1 beside the measured one (paper's scenario only)


def build_report(results_dir, metric: str = "image_f1", out_dir=None) -> Path:
    """Write index.html, PNG figures and Table 1 (csv, md) for a sweep's results folder.

    metric: a metric in matrices.parquet shown by the figures, the per-task table and the
    order section (Table 1 shows every registered Table 1 metric). When the study is the seed
    paper's (dataset.kind bmad, the six BMAD tasks), Table 1 also shows the paper's published
    values beside the cells it publishes, and table1_published.csv holds them per cell
    (pclsim.report.published); otherwise that file is removed if an earlier report left one. Returns the path of index.html
    (default RESULTS_DIR/report/index.html). Raises PclsimError (one line) for a missing or
    unreadable folder or table, a metric without rows, or an output folder that cannot be written.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise PclsimError(f"{root}: results folder not found")
    d = ReportData(root, metric)
    out = Path(out_dir) if out_dir is not None else root / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise PclsimError(f"{out}: cannot write the report: {first_line(e)}") from None

    mean, std, _n = table1(d)
    undefined = undefined_cells(d)
    per_task = per_task_final(d)
    paper = paper_comparison(d, mean)  # None unless the study is the paper's (BMAD's six tasks)
    mean.index.name = "row"
    std.index.name = "row"
    try:
        mean.to_csv(out / "table1.csv", float_format="%.6g")
        std.to_csv(out / "table1_std.csv", float_format="%.6g")
        per_task.to_csv(out / "per_task_final.csv", float_format="%.6g")
        write_text(out / "table1.md", table1_markdown(mean, std, metric, undefined, paper))
        if paper is not None:
            write_text(out / PUBLISHED_CSV, paper["table"].to_csv(index=False, float_format="%.10g"))
        else:  # an earlier report of this folder (other data, or before a re-run) must not leave one behind
            (out / PUBLISHED_CSV).unlink(missing_ok=True)
    except OSError as e:
        raise PclsimError(f"{out}: cannot write the report: {first_line(e)}") from None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # means over all-NaN cells (tasks without masks)
        figs = list(fig_heatmaps(d, out))
        figs.append(fig_curves(d, out))
        figs.append(fig_robustness(d, out))
        figs.append(fig_position(d, out))
        mem = fig_memory(d, out)
        if mem:
            figs.append(mem)
        gal, bad, total = fig_gallery(d, out)
    if gal:
        figs.append(gal)
    note = f"Gallery files that could not be read and were skipped: {', '.join(bad)}." if bad else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        order_html, _ = order_section(d, out)  # "Does the order matter?" with its own figures
    order_html += deployed_section(d, out) + protocol_section(root)
    index = out / "index.html"
    write_text(index, page(d, mean, std, per_task, figs, note, order_html, undefined, paper))
    return index


def report_command(results_dir: str, metric: str = "image_f1") -> None:
    """CLI hook: build the report and print the index.html path."""
    print(build_report(results_dir, metric=metric))
