"""Issue 20: Table 1 beside the seed paper's published Table 1 on the paper's scenario (BMAD's six tasks,
M = 10000 / 30000): table1_published.csv per cell (published, measured, difference), the published values
under the cells of index.html and table1.md, and nothing of it on data that are not BMAD."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from browser import chromium_or_skip, screenshot_command
from fabricated_results import fabricate_results
from pclsim.data.bmad import BMAD_TASKS, SYNTHETIC_MARKER
from pclsim.report import build_report
from pclsim.report.published import (PAPER_COLUMNS, PUBLISHED, comparison, is_paper_scenario, published_value,
                                     synthetic_data)

PAPER_ORDER = list(BMAD_TASKS)  # Brain, Liver, RESC, Chest, Histopathology, OCT2017: the paper's stream
MEMORY = (1000, 10000, 30000)   # 1000: a memory size the paper did not run
LABEL = {"multi_model": "Multi-Model", "joint": "Joint", "finetune": "Fine-Tuning", "patchcore_cl": "CL"}
METRIC_ROWS = ["image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_pr", "pixel_aupro"]
# the cells the paper publishes and pclsim's Table 1 measures (Arch. Mem has no Table 1 row; PatchCoreCL-10k's
# gap is against the paper's Joint at 30000, not pclsim's joint at 10000)
MATCHED = ([(r, s, 30000) for s in ("multi_model", "joint", "finetune", "patchcore_cl")
            for r in METRIC_ROWS + ["bank_mb"]]
           + [(r, "patchcore_cl", 10000) for r in METRIC_ROWS + ["bank_mb", "avg_forgetting_pct"]]
           + [(r, s, 30000) for s in ("finetune", "patchcore_cl") for r in ("relative_gap", "avg_forgetting_pct")])


def _col(strategy, m):
    return f"{LABEL[strategy]} M={m}"


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    fabricate_results(root, tasks=BMAD_TASKS, orders=[PAPER_ORDER], memory_sizes=MEMORY, dataset_kind="bmad",
                      name="paper_table1")
    return root, build_report(root)


# ----------------------------------------------------------------------------- the typed table

def test_the_mapping_agrees_with_every_number_the_papers_text_quotes():
    """Section 6 and 7 of the paper name these numbers per strategy: the columns must carry them."""
    assert published_value("bank_mb", "multi_model", 30000)[1] == 1105.8          # "(1105.8 MB)"
    assert published_value("relative_gap", "patchcore_cl", 10000)[1] == 0.02      # "a relative gap of only 0.02"
    assert published_value("avg_forgetting_pct", "patchcore_cl", 10000)[1] == 0.80  # "(0.80% against the 0.73%
    assert published_value("avg_forgetting_pct", "patchcore_cl", 30000)[1] == 0.73  # of the PatchCoreCL-30K)"
    # "one-third of the memory required by Joint-Train"
    assert published_value("bank_mb", "patchcore_cl", 10000)[1] == pytest.approx(
        published_value("bank_mb", "joint", 30000)[1] / 3, abs=0.01)
    # "a GAP of 0.02 on the F1 score and only 0.01 on the F1 pixel-level" (10k against Joint-Train)
    for row, gap in (("image_f1", 0.02), ("pixel_f1", 0.01)):
        assert published_value(row, "joint", 30000)[1] - published_value(row, "patchcore_cl", 10000)[1] == \
            pytest.approx(gap)
    # the published gaps are Joint-Train's image F1 minus the method's (the evidence for "on image F1")
    for s, m in (("finetune", 30000), ("patchcore_cl", 10000), ("patchcore_cl", 30000)):
        assert published_value("image_f1", "joint", 30000)[1] - published_value("image_f1", s, m)[1] == \
            pytest.approx(published_value("relative_gap", s, m)[1])
    # Fine-Tuning is the worst column and forgets most; Multi-Model the best
    for row in METRIC_ROWS:
        vals = {(s, m): published_value(row, s, m)[1] for _, s, m in PAPER_COLUMNS}
        assert min(vals, key=vals.get) == ("finetune", 30000), row
        assert max(vals, key=vals.get) == ("multi_model", 30000), row
    # bank MB = vectors x 1536 x 4 bytes: 30000 vectors for Joint and Fine-Tuning, six such banks for Multi-Model
    assert published_value("bank_mb", "joint", 30000)[1] == round(30000 * 1536 * 4 / 1e6, 1)
    assert published_value("bank_mb", "multi_model", 30000)[1] == pytest.approx(6 * 184.3)
    # no published value where the paper printed "-", ran no such column, or has no such row
    assert published_value("relative_gap", "joint", 30000) is None
    assert published_value("avg_forgetting_pct", "multi_model", 30000) is None
    assert published_value("image_f1", "patchcore_cl", 1000) is None
    assert published_value("image_f1", "joint", 10000) is None
    assert published_value("pixel_ap", "joint", 30000) is None
    assert all(len(v) == len(PAPER_COLUMNS) for v in PUBLISHED.values())


def test_only_the_six_bmad_tasks_read_as_bmad_are_the_papers_scenario():
    six = list(BMAD_TASKS)
    assert is_paper_scenario({"dataset": {"kind": "bmad", "tasks": six[::-1]}})
    assert not is_paper_scenario({"dataset": {"kind": "synthetic", "tasks": six}})
    assert not is_paper_scenario({"dataset": {"kind": "folder", "tasks": six}})
    assert not is_paper_scenario({"dataset": {"kind": "bmad", "tasks": six[:5]}})
    assert not is_paper_scenario({"dataset": {"kind": "bmad", "tasks": six[:5] + ["Brain_AD_lowdose"]}})
    assert not is_paper_scenario({})


def test_gap_and_forgetting_are_compared_only_on_image_f1():
    rows = list(PUBLISHED) + ["pixel_ap"]
    combos = [("finetune", 30000), ("patchcore_cl", 30000)]
    mean = pd.DataFrame(0.5, index=rows, columns=[_col(s, m) for s, m in combos])
    on_f1 = comparison(mean, combos, "image_f1", 6)
    on_auroc = comparison(mean, combos, "image_auroc", 6)
    assert {"relative_gap", "avg_forgetting_pct"} <= set(on_f1["metric"])
    assert not {"relative_gap", "avg_forgetting_pct"} & set(on_auroc["metric"])
    assert "arch_mb" not in set(on_f1["metric"]) and "pixel_ap" not in set(on_f1["metric"])
    # forgetting is compared in the paper's form: the cell (divided by T-1) times (T-1)/9
    f = on_f1[(on_f1.metric == "avg_forgetting_pct") & (on_f1.strategy == "finetune")].iloc[0]
    assert f.measured == pytest.approx(0.5 * 5 / 9) and f.difference == pytest.approx(0.5 * 5 / 9 - 52.32)


# ----------------------------------------------------------------------------- the report on the paper's scenario

def test_published_csv_has_published_measured_and_difference_per_matched_cell(paper_study):
    root, index = paper_study
    out = index.parent
    t1 = pd.read_csv(out / "table1.csv", index_col=0)
    pub = pd.read_csv(out / "table1_published.csv")
    assert list(pub.columns[:8]) == ["metric", "paper_row", "strategy", "memory_size", "column", "published",
                                     "measured", "difference"]
    assert {"unit"} <= set(pub.columns)
    got = set(zip(pub.metric, pub.strategy, pub.memory_size))
    assert got == set(MATCHED)
    for r in pub.itertuples():
        cell = t1.loc[r.metric, _col(r.strategy, r.memory_size)]
        assert np.isfinite(cell), (r.metric, r.strategy, r.memory_size)
        # forgetting: the paper divided by 9 whatever T; pclsim's cell by T - 1 = 5
        want = cell * 5 / 9 if r.metric == "avg_forgetting_pct" else cell
        assert r.measured == pytest.approx(want, rel=1e-5)
        # table1.csv holds 6 significant digits
        assert r.difference == pytest.approx(want - r.published, abs=1e-5 * max(1.0, abs(want)))
        assert r.difference == pytest.approx(r.measured - r.published, abs=1e-9)
        assert r.column == _col(r.strategy, r.memory_size)
    # the published values are the paper's (a few typed here from its Table 1 independently)
    p = pub.set_index(["metric", "strategy", "memory_size"])["published"]
    assert p[("image_auroc", "multi_model", 30000)] == 0.99
    assert p[("pixel_auroc", "finetune", 30000)] == 0.31
    assert p[("bank_mb", "patchcore_cl", 10000)] == 61.43
    assert p[("avg_forgetting_pct", "finetune", 30000)] == 52.32
    assert p[("pixel_aupro", "patchcore_cl", 30000)] == 0.77
    units = pub.set_index("metric")["unit"]
    assert units["bank_mb"].iloc[0] == "MB" and units["avg_forgetting_pct"].iloc[0] == "%"
    # bank MB is the same unit: pclsim's 30000 vectors x 1536 x 4 bytes = 184.32 MB beside the paper's 184.3
    assert t1.loc["bank_mb", "Joint M=30000"] == pytest.approx(184.32, abs=0.005)


def test_unmatched_memory_sizes_get_no_published_value(paper_study):
    _, index = paper_study
    pub = pd.read_csv(index.parent / "table1_published.csv")
    assert 1000 not in set(pub.memory_size)
    assert not ((pub.memory_size == 10000) & (pub.strategy != "patchcore_cl")).any()
    md = (index.parent / "table1.md").read_text().splitlines()
    head = [h.strip() for h in md[0].strip().strip("|").split("|")]
    paper_cols = [h for h in head if "(paper, real BMAD: " in h]
    assert [h.split(" (")[0] for h in paper_cols] == [_col(s, m) for _, s, m in PAPER_COLUMNS]
    n = 0
    for line in md[2:2 + 9]:
        for h, c in zip(head, [c.strip() for c in line.strip().strip("|").split("|")]):
            if "(paper " in c:
                n += 1
                assert h in paper_cols, (h, c)
    assert n == len(MATCHED)


class _Cells(HTMLParser):
    """The Table 1 <table>'s header and cells as text, its brown second lines apart."""

    def __init__(self):
        super().__init__()
        self.tables, self._in_paper, self._depth = [], False, 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self.tables[-1][-1].append(["", ""])
        elif tag == "span" and ("class", "paper") in attrs:
            self._in_paper = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_paper = False

    def handle_data(self, data):
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1][1 if self._in_paper else 0] += data


def _table1_html(index: Path) -> list:
    p = _Cells()
    p.feed(index.read_text())
    tables = [[[[part.strip() for part in c] for c in tr] for tr in t] for t in p.tables]
    return next(t for t in tables if t and t[0] and "Multi-Model" in "".join(c[0] for c in t[0]))


def test_page_shows_the_published_value_and_difference_under_each_matched_cell(paper_study):
    root, index = paper_study
    text = index.read_text()
    assert "published (seed paper, Table 1, real BMAD)" in text
    assert 'href="table1_published.csv"' in text and (index.parent / "table1_published.csv").is_file()
    assert "SYNTHETIC" not in text  # no data.json marker, no data folder with one
    pub = pd.read_csv(index.parent / "table1_published.csv").set_index(["metric", "column"])
    rows = _table1_html(index)
    head = [c[0] for c in rows[0]]
    assert [c[1] for c in rows[0]][head.index("CL M=10000")] == "paper, real BMAD: PatchCoreCL-10k"
    assert [c[1] for c in rows[0]][head.index("Joint M=10000")] == ""
    labels = {"image AUROC": "image_auroc", "bank MB": "bank_mb", "avg forgetting % (image_f1)": "avg_forgetting_pct"}
    seen = 0
    for tr in rows[1:]:
        metric = labels.get(tr[0][0])
        for h, (measured, paper) in zip(head[1:], tr[1:]):
            if metric is None:
                continue
            if (metric, h) in pub.index:
                r = pub.loc[(metric, h)]
                nd = 2 if metric in ("bank_mb", "avg_forgetting_pct") else 3
                assert paper.startswith("paper "), (metric, h, paper)
                assert paper.endswith(f"Δ {r.difference:+.{nd}f}".replace("-", "−")), (metric, h, paper)
                assert paper.startswith(f"paper {published_value(metric, r.strategy, r.memory_size)[0]}")
                seen += 1
            else:
                assert paper == "", (metric, h, paper)
    assert seen == 5 + 5 + 3  # image AUROC and bank MB in every paper column, forgetting in three


# ----------------------------------------------------------------------------- not the paper's data

def test_no_published_column_or_csv_off_bmad_and_a_stale_csv_goes(tmp_path):
    root = tmp_path / "results"
    fabricate_results(root, tasks=BMAD_TASKS, orders=[PAPER_ORDER], memory_sizes=(10000, 30000),
                      strategies=("patchcore_cl", "joint"), dataset_kind="bmad", routing=False)
    index = build_report(root)
    assert (index.parent / "table1_published.csv").is_file()
    sc = yaml.safe_load((root / "scenario.yaml").read_text())
    sc["dataset"]["kind"] = "synthetic"  # the same numbers, but not read from BMAD
    (root / "scenario.yaml").write_text(yaml.safe_dump(sc, sort_keys=False))
    index = build_report(root)
    assert not (index.parent / "table1_published.csv").exists()
    text, md = index.read_text(), (index.parent / "table1.md").read_text()
    for t in (text, md):
        assert "seed paper" not in t and "(paper " not in t and "real BMAD" not in t and "table1_published" not in t
    assert 'class="paper"' not in text
    assert len(md.strip().splitlines()) == 2 + 9  # the table alone


def test_synthetic_bmad_layout_data_are_said_to_be_synthetic(tmp_path):
    from typer.testing import CliRunner

    from pclsim.cli import app

    data = tmp_path / "synth"
    r = CliRunner().invoke(app, ["data", "synth", str(data), "--tasks", "Brain_AD,Chest_AD", "--train", "2",
                                 "--test", "2", "--size", "32"])
    assert r.exit_code == 0, r.output
    assert json.loads((data / SYNTHETIC_MARKER).read_text())["synthetic"] is True
    sc = {"dataset": {"kind": "bmad", "root": str(data), "tasks": list(BMAD_TASKS)}}
    assert synthetic_data(tmp_path / "results", sc)
    assert not synthetic_data(tmp_path / "results", {"dataset": {"kind": "bmad", "root": str(tmp_path)}})

    from pclsim.runner.sweep import _data_record  # the sweep keeps the fact in data.json

    assert _data_record([], str(data)).get("synthetic") is True
    assert "synthetic" not in _data_record([], str(tmp_path))

    root = tmp_path / "results"
    fabricate_results(root, tasks=BMAD_TASKS, orders=[PAPER_ORDER], memory_sizes=(30000,),
                      strategies=("patchcore_cl",), dataset_kind="bmad", routing=False)
    (root / "data.json").write_text(json.dumps({"tasks": {}, "synthetic": True}))
    assert synthetic_data(root, {})
    index = build_report(root)
    text, md = index.read_text(), (index.parent / "table1.md").read_text()
    for t in (text, md):
        assert "SYNTHETIC stream in the BMAD layout" in t and "published (seed paper, Table 1, real BMAD)" in t
    assert (index.parent / "table1_published.csv").is_file()  # the column stays, said to compare unlike data


# ----------------------------------------------------------------------------- browser

def _brown(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the published lines' colour (#8a4b00 and its anti-aliased shades on white)."""
    r, g, b = (rgb[..., k].astype(np.int16) for k in range(3))
    return (r - b > 60) & (r - g > 25) & (g - b > 15) & (r > 100)


@pytest.mark.slow
def test_published_column_renders_in_headless_chromium(paper_study, tmp_path):
    chromium = chromium_or_skip()
    root, index = paper_study
    other = tmp_path / "other"
    fabricate_results(other, tasks=BMAD_TASKS, orders=[PAPER_ORDER], memory_sizes=(10000, 30000),
                      strategies=("patchcore_cl", "joint"), routing=False)  # dataset.kind synthetic
    shots = {}
    for name, idx in (("paper", index), ("other", build_report(other))):
        shot = tmp_path / f"{name}.png"
        subprocess.run(screenshot_command(chromium, tmp_path / "ud", shot, "1200,1600", idx.as_uri()),
                       capture_output=True, timeout=180, check=False)
        assert shot.is_file(), "chromium wrote no screenshot"
        with Image.open(shot) as im:
            shots[name] = np.asarray(im.convert("RGB"))
    paper, other = shots["paper"], shots["other"]
    assert (paper.mean(-1) < 100).mean(1).__gt__(0.01).sum() > 150      # text and table lines
    # the brown second lines of the cells and column headers (the captions' brown left border is at x < 40)
    brown = _brown(paper)[:, 40:]
    assert brown.sum() > 1500, brown.sum()
    assert (brown.mean(1) > 0.002).sum() > 60, (brown.mean(1) > 0.002).sum()   # a line under every table row
    assert _brown(other).sum() < 50, _brown(other).sum()               # none without the paper's scenario
