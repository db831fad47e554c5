"""The report's HTML: one self-contained page (no scripts, no external links: it opens offline and
from a copied folder) with relative links to the figures and tables beside it.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_bytes
from .reading import ReportData
from .style import row_label
from .tables import format_cell, table1_cell

__all__ = ["CSS", "escape", "html_table", "figure_tag", "page", "write_text"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right;white-space:nowrap}th{background:#eef2f7}
td:first-child,th:first-child{text-align:left}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444;margin-top:.3em}.meta td{text-align:left}.note{font-size:.9em;color:#333}
code{background:#f3f3f3;padding:0 .2em}.wide{overflow-x:auto}.meta td{white-space:normal}
.paper{display:block;font-size:.82em;color:#8a4b00}.pubnote{border-left:3px solid #c98a2b;padding-left:.6em}
"""


def escape(s) -> str:
    """HTML-escaped text of `s` (quotes too: safe inside attributes)."""
    return html.escape(str(s), quote=True)


def html_table(frame: pd.DataFrame, cell, sub=None) -> str:
    """An HTML table of `frame`'s shape: cell(row, None) is a row's header, cell(row, column) a cell's text.
    sub(row, column), where given, is a second line under a cell's text (sub(None, column) under a column's
    header), in the style `.paper`; '' for none."""
    def line2(r, c):
        t = sub(r, c) if sub is not None else ""
        return f'<span class="paper">{escape(t)}</span>' if t else ""

    head = "<tr><th></th>" + "".join(f"<th>{escape(c)}{line2(None, c)}</th>" for c in frame.columns) + "</tr>"
    body = []
    for r in frame.index:
        body.append("<tr><th>" + escape(cell(r, None)) + "</th>"
                    + "".join(f"<td>{escape(cell(r, c))}{line2(r, c)}</td>" for c in frame.columns) + "</tr>")
    return ('<div class="wide"><table>\n<thead>' + head + "</thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table></div>")


def page(d: ReportData, mean, std, per_task, figs, gallery_note: str, order_html: str = "",
         undefined: dict | None = None, paper: dict | None = None) -> str:
    """index.html's text: the study's facts, Table 1 (mean, std: frames of tables.table1; undefined:
    tables.undefined_cells; paper: published.paper_comparison's dict, the published figures beside the
    cells, or None), the per-task table, the order section's HTML, the figures ((file name, caption)
    pairs) and the notes."""
    undefined = undefined or {}
    sc = d.scenario
    ds = sc.get("dataset") or {}
    model = sc.get("model") or {}
    meta = [("results folder", str(d.root)), ("scenario", sc.get("name", "(scenario.yaml not found)")),
            ("pclsim version", sc.get("pclsim_version", "?")),
            ("data set", f"{ds.get('kind', '?')}, protocol {ds.get('protocol', '?')}, resize {ds.get('resize', 'crop')}"),
            ("pixel metrics", f"mask-less tasks: {(sc.get('evaluation') or {}).get('maskless_pixels', 'skip')}"),
            ("backbone", f"{model.get('backbone', '?')} (reweighting {model.get('reweighting', '?')})"),
            ("metric of the figures", d.metric),
            ("tasks", ", ".join(d.tasks)),
            ("orders", f"{d.n_orders} (first: {' > '.join(d.first_order)})"),
            ("strategies", ", ".join(d.strategies)),
            ("memory sizes", ", ".join(map(str, d.memory_sizes))),
            ("seeds", str(d.n_seeds)), ("runs", str(d.n_runs))]
    if sc.get("coreset"):
        meta.append(("coreset", ", ".join(f"{k}: {v}" for k, v in sc["coreset"].items())))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pclsim report: {escape(sc.get('name', d.root.name))}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>pclsim report: {escape(sc.get('name', d.root.name))}</h1>",
        f"<p>Metric shown in the figures: <b>{escape(d.metric)}</b>. Study: <b>{d.n_orders}</b> task order(s), "
        f"<b>{d.n_runs}</b> runs, {len(d.strategies)} strategies, {len(d.memory_sizes)} memory size(s), "
        f"{d.n_seeds} seed(s).</p>",
        '<table class="meta"><tbody>' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in meta)
        + "</tbody></table>",
        "<h2 id=\"table1\">Table 1" + (" with the seed paper's published values" if paper else "") + "</h2>",
        "<p class=\"note\">The layout of the paper's Table 1. Metric rows: final mean over tasks (after the whole "
        "stream) of each metric, then the mean over orders and seeds"
        + (" &plusmn; the standard deviation over runs" if (d.n_runs > len(d.combos)) else "")
        + f". Bank MB: decimal MB of float32 vectors stored after the last task. Relative gap and average "
        f"forgetting are computed on <b>{escape(d.metric)}</b>. Pixel metrics are averaged over the tasks that "
        "have masks; &ldquo;&ndash;&rdquo; marks a value that does not exist (e.g. the gap of joint to itself). "
        "Also written as <a href=\"table1.csv\">table1.csv</a> (means), <a href=\"table1_std.csv\">table1_std.csv"
        "</a> and <a href=\"table1.md\">table1.md</a>.</p>",
        _paper_caption(paper, "legend"),
        html_table(mean, lambda r, c: row_label(r, d.metric) if c is None else table1_cell(r, c, mean, std,
                                                                                       undefined),
                   _paper_lines(paper)),
        _paper_caption(paper),
        ("<p class=\"note\">Undefined (no run has the value; summary.parquet's <code>undefined</code> column "
         "gives each run's reason): " + "; ".join(f"{escape(row_label(r, d.metric))}, {escape(c)}: {escape(why)}"
                                                 for (r, c), why in undefined.items()) + ".</p>") if undefined else "",
        f"<h2>Final {escape(d.metric)} per task</h2>",
        "<p class=\"note\">Each task's value after the whole stream, mean over orders and seeds. "
        "Also in <a href=\"per_task_final.csv\">per_task_final.csv</a>.</p>",
        html_table(per_task, lambda r, c: r if c is None else format_cell("", per_task.loc[r, c])),
        order_html,
        "<h2>Figures</h2>",
    ]
    parts += [figure_tag(name, cap) for name, cap in figs]
    if gallery_note:
        parts.append(f'<p class="note">{escape(gallery_note)}</p>')
    parts += [
        "<h2>Notes</h2>",
        "<p class=\"note\">Average forgetting (percent) of a run with T tasks and accuracy matrix a[t][j] "
        "(row: after training step t; column: the task trained at step j): 100/(T&minus;1) &middot; "
        "&sum;<sub>i&lt;T&minus;1</sub> (a[i][i] &minus; a[T&minus;1][i]) / a[i][i], i.e. the relative drop of each "
        "task from just after it was learned to the end of the stream. The authors' script divided by 9 "
        "whatever T; that paper-compatible value is in the summary's <code>avg_forgetting_paper_pct</code> "
        "column where the sweep wrote it. Relative gap: final mean of joint minus final mean of the method, "
        "same seed, order and memory size.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _paper_lines(paper: dict | None):
    """html_table's `sub` for Table 1: the paper's column names and its values beside the measured cells."""
    if not paper:
        return None
    return lambda r, c: f"paper, real BMAD: {paper['columns'][c]}" if r is None and c in paper["columns"] else \
        paper["cells"].get((r, c), "")


def _paper_caption(paper: dict | None, key: str = "caption") -> str:
    """The paragraphs of paper[key] ("legend": before Table 1; "caption": after it, with the CSV's link)."""
    if not paper:
        return ""
    lines = "".join(f"<p class=\"note pubnote\">{escape(s)}</p>" for s in paper[key])
    if key == "legend":
        return lines
    return (lines + '<p class="note pubnote">Per cell (published, measured, difference, unit): '
            '<a href="table1_published.csv">table1_published.csv</a>.</p>')


def figure_tag(name: str, caption: str) -> str:
    """<figure> of the image file `name` with `caption` as its alternative text and caption."""
    return (f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
            "</figcaption></figure>")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically, readable by all (results.atomic_write_bytes: the page is meant to be shared)."""
    atomic_write_bytes(text.encode("utf-8"), path, mode=0o644)
