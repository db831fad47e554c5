"""`pclsim report` on a fabricated results folder: files, valid PNGs, self-contained HTML, Table 1 numbers
against independent pandas computations from the matrices, and one-line errors on bad input."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from browser import chromium_or_skip, screenshot_command
from fabricated_results import bank_mb, fabricate_results
from pclsim.errors import PclsimError
from pclsim.report import build_report, report_command

TASKS = ["Brain_AD", "Liver_AD", "Chest_AD"]  # Chest has no masks, as in BMAD
NAMES = {"multi_model": "Multi-Model", "joint": "Joint", "finetune": "Fine-Tuning", "patchcore_cl": "CL"}
PAPER_ORDER = ["multi_model", "joint", "finetune", "patchcore_cl"]
MEMORY = [100, 300]
ROWS = ["image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_pr", "pixel_aupro",
        "bank_mb", "relative_gap", "avg_forgetting_pct"]
FIGURES = ["heatmaps_M100.png", "heatmaps_M300.png", "learning_curves.png", "order_robustness.png",
           "position_effect.png", "memory_vs_accuracy.png", "gallery.png", "order_distribution.png",
           "position_slopes.png", "routing_confusion.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    info = fabricate_results(root, tasks=TASKS, orders="all", memory_sizes=MEMORY, seeds=(0,), gallery=2)
    index = build_report(root)
    return root, index, info


@pytest.fixture(scope="module")
def final_rows(study):
    """Independent: the last step of every run, read straight from matrices.parquet."""
    mat = pd.read_parquet(study[0] / "matrices.parquet")
    mat = mat.astype({c: object for c in ("strategy", "order", "eval_task", "metric", "run_id")})
    n_tasks = mat["order"].str.count(" > ") + 1
    return mat, mat[mat["step"] == n_tasks - 1]


def _label(strategy, m):
    return f"{NAMES[strategy]} M={m}"


# ----------------------------------------------------------------------------- files and html

def test_every_figure_is_a_real_png(study):
    root, index, _ = study
    out = index.parent
    assert index == root / "report" / "index.html"
    for name in FIGURES:
        p = out / name
        assert p.is_file(), name
        assert p.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG"
            assert im.width >= 200 and im.height >= 200, (name, im.size)
            grey = np.asarray(im.convert("L"), dtype=np.float64)
        assert grey.std() > 15, (name, grey.std())
        assert (grey < 200).mean() > 0.02, name  # real ink, not a blank canvas with a title


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.imgs, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append(v)
                if tag == "img":
                    self.imgs.append(v)


def test_html_is_self_contained_and_references_existing_files(study):
    root, index, info = study
    text = index.read_text(encoding="utf-8")
    p = _Refs()
    p.feed(text)
    assert "script" not in p.tags and "<script" not in text.lower()
    assert "link" not in p.tags and "url(" not in text and "@import" not in text
    assert "http://" not in text and "https://" not in text
    assert p.refs, "no references parsed"
    for ref in p.refs:
        assert "/" not in ref and ":" not in ref, ref  # plain relative file names
        assert (index.parent / ref).is_file(), ref
    # every figure appears on the page, and the tables it links to exist
    assert sorted(p.imgs) == sorted(FIGURES)
    for name in ("table1.csv", "table1_std.csv", "table1.md", "per_task_final.csv"):
        assert name in p.refs
    # the page states the metric, the study's size and the forgetting definition
    assert "image_f1" in text
    assert f"<b>{len(info['orders'])}</b> task order(s)" in text
    n_runs = pd.read_parquet(root / "summary.parquet")["run_id"].nunique()
    assert f"<b>{n_runs}</b> runs" in text
    assert "Average forgetting" in text and "a[i][i]" in text
    assert "first: Brain_AD &gt; Liver_AD &gt; Chest_AD" in text


# ----------------------------------------------------------------------------- numbers

def test_table1_layout_and_means_match_the_matrices(study, final_rows):
    root, index, _ = study
    mat, fin = final_rows
    t1 = pd.read_csv(index.parent / "table1.csv", index_col=0)
    assert list(t1.index) == ROWS
    assert list(t1.columns) == [_label(s, m) for s in PAPER_ORDER for m in MEMORY]

    # final mean of each run = mean over the tasks present at the last step (pixel: tasks with masks)
    per_run = fin.groupby(["run_id", "strategy", "memory_size", "metric"])["value"].mean().reset_index()
    want = per_run.groupby(["strategy", "memory_size", "metric"])["value"].mean()
    for metric in ROWS[:6]:
        for s in PAPER_ORDER:
            for m in MEMORY:
                assert t1.loc[metric, _label(s, m)] == pytest.approx(want[(s, m, metric)], rel=1e-5), (metric, s, m)
    # pixel means exclude the unmasked task: check that really happened
    assert not fin[(fin.eval_task == "Chest_AD") & fin.metric.str.startswith("pixel")].shape[0]
    # bank memory: the strategies' vector counts times 1536 x 4 bytes
    for s in PAPER_ORDER:
        for m in MEMORY:
            assert t1.loc["bank_mb", _label(s, m)] == pytest.approx(bank_mb(s, m, len(TASKS)), rel=1e-5)


def test_table1_gap_and_forgetting_match_the_matrices(study, final_rows):
    root, index, _ = study
    mat, fin = final_rows
    t1 = pd.read_csv(index.parent / "table1.csv", index_col=0)
    f1 = mat[mat.metric == "image_f1"].copy()
    f1["pos"] = [o.split(" > ").index(t) for o, t in zip(f1["order"], f1["eval_task"])]
    T = len(TASKS)
    diag = f1[f1.step == f1.pos].set_index(["run_id", "pos"])["value"]
    last = f1[f1.step == T - 1].set_index(["run_id", "pos"])["value"]
    rel = ((diag - last.reindex(diag.index)) / diag).reset_index()
    rel = rel[rel.pos < T - 1]
    forget = 100 * rel.groupby("run_id")["value"].mean()
    keys = f1.drop_duplicates("run_id").set_index("run_id")[["strategy", "memory_size", "order"]]
    forget = keys.join(forget.rename("f")).groupby(["strategy", "memory_size"])["f"].mean()
    fm = f1[f1.step == T - 1].groupby("run_id")["value"].mean().rename("fm")
    fm = keys.join(fm)
    joint = fm[fm.strategy == "joint"].set_index(["memory_size", "order"])["fm"]
    fm["gap"] = joint.reindex(pd.MultiIndex.from_frame(fm[["memory_size", "order"]])).to_numpy() - fm["fm"]
    gap = fm.groupby(["strategy", "memory_size"])["gap"].mean()
    for s in PAPER_ORDER:
        for m in MEMORY:
            col = _label(s, m)
            assert t1.loc["avg_forgetting_pct", col] == pytest.approx(forget[(s, m)], rel=1e-5, abs=1e-9)
            if s == "joint":
                assert np.isnan(t1.loc["relative_gap", col])
            else:
                assert t1.loc["relative_gap", col] == pytest.approx(gap[(s, m)], rel=1e-5, abs=1e-9)
    # fine-tuning forgets, PatchCoreCL far less: the fabricated study has the paper's shape
    assert t1.loc["avg_forgetting_pct", "Fine-Tuning M=300"] > 5 * t1.loc["avg_forgetting_pct", "CL M=300"]


def test_std_table_and_markdown(study):
    root, index, _ = study
    out = index.parent
    summ = pd.read_parquet(root / "summary.parquet").astype({"strategy": object, "metric": object})
    std = pd.read_csv(out / "table1_std.csv", index_col=0)
    want = summ.groupby(["strategy", "memory_size", "metric"])["final_mean"].std(ddof=1)
    assert std.loc["image_f1", "CL M=100"] == pytest.approx(want[("patchcore_cl", 100, "image_f1")], rel=1e-5)
    assert std.loc["pixel_aupro", "Joint M=300"] == pytest.approx(want[("joint", 300, "pixel_aupro")], rel=1e-5)
    md = (out / "table1.md").read_text()
    lines = md.strip().splitlines()
    assert lines[0].count("|") == 2 + len(PAPER_ORDER) * len(MEMORY)
    assert len(lines) == 2 + len(ROWS)
    mean = pd.read_csv(out / "table1.csv", index_col=0)
    assert f"{mean.loc['image_f1', 'CL M=300']:.3f} ± " in lines[2 + ROWS.index("image_f1")]
    assert "| relative gap (image_f1) |" in md and "–" in lines[2 + ROWS.index("relative_gap")]


def test_per_task_table(study, final_rows):
    root, index, _ = study
    _, fin = final_rows
    pt = pd.read_csv(index.parent / "per_task_final.csv", index_col=0)
    assert list(pt.index) == TASKS
    want = fin[fin.metric == "image_f1"].groupby(["eval_task", "strategy", "memory_size"])["value"].mean()
    for t in TASKS:
        for s in PAPER_ORDER:
            for m in MEMORY:
                assert pt.loc[t, _label(s, m)] == pytest.approx(want[(t, s, m)], rel=1e-5)


# ----------------------------------------------------------------------------- does the order matter?

def _section(text: str) -> str:
    i = text.index('<h2 id="order">Does the order matter?</h2>')
    return text[i: text.index("<h2>Figures</h2>")]


def test_order_section_states_one_sentence_per_strategy(study):
    root, index, _ = study
    sec = _section(index.read_text(encoding="utf-8"))
    items = [li for li in sec.split("<li>")[1:]]
    assert len(items) == len(PAPER_ORDER) * len(MEMORY)
    for s in PAPER_ORDER:
        for m in MEMORY:
            assert sum(li.startswith(_label(s, m) + ":") for li in items) == 1
    # one seed: the share cannot be separated, the test goes through the order's structure
    assert "With one seed" in sec and "permutation" in sec
    assert "best order" in sec and "points" in sec
    for name in ("order_distribution.png", "position_slopes.png", "routing_confusion.png", "order_statistics.csv"):
        assert name in sec


def test_order_statistics_csv_against_scipy_and_ols(study):
    """The report's numbers against independent computations from the Parquet files."""
    root, index, _ = study
    st = pd.read_csv(index.parent / "order_statistics.csv")
    summ = pd.read_parquet(root / "summary.parquet").astype({"strategy": object, "metric": object, "order": object})
    mat = pd.read_parquet(root / "matrices.parquet").astype({c: object for c in ("strategy", "order", "eval_task",
                                                                                "metric")})
    cl = summ[(summ.strategy == "patchcore_cl") & (summ.memory_size == 300) & (summ.metric == "image_f1")]
    row = st[(st.strategy == "patchcore_cl") & (st.memory_size == 300) & (st.quantity == "final_mean")]
    mean = row[row.statistic == "mean"].iloc[0]
    assert mean.value == pytest.approx(cl.final_mean.mean())
    # the runs sorted by (order, seed), BCa, 4999 resamples, seed 0
    units = cl.sort_values(["order", "seed"]).final_mean.to_numpy()
    ci = stats.bootstrap((units,), np.mean, n_resamples=4999, rng=np.random.default_rng(0))
    assert (mean.ci_low, mean.ci_high) == (pytest.approx(ci.confidence_interval.low, rel=1e-5),
                                           pytest.approx(ci.confidence_interval.high, rel=1e-5))
    best = row[row.statistic == "best_order"].iloc[0]
    assert best.order == cl.set_index("order").final_mean.idxmax()
    # pooled position slope: OLS of a task's final value on its arrival step with one intercept per task
    f = mat[(mat.strategy == "patchcore_cl") & (mat.memory_size == 300) & (mat.metric == "image_f1") & (mat.step == 2)]
    pos = np.array([o.split(" > ").index(t) for o, t in zip(f.order, f.eval_task)], float)
    X = np.column_stack([pos] + [(f.eval_task == t).to_numpy(float) for t in TASKS])
    beta = np.linalg.lstsq(X, f.value.to_numpy(), rcond=None)[0]
    sl = st[(st.strategy == "patchcore_cl") & (st.memory_size == 300) & (st.quantity == "final_value")
            & (st.statistic == "position_slope") & st.task.isna()].iloc[0]
    assert sl.value == pytest.approx(beta[0], rel=1e-5)
    for t in TASKS:  # per task: scipy.stats.linregress
        r = st[(st.strategy == "patchcore_cl") & (st.memory_size == 300) & (st.quantity == "final_value")
               & (st.statistic == "position_slope") & (st.task == t)].iloc[0]
        lr = stats.linregress(pos[f.eval_task == t], f.value[f.eval_task == t])
        assert r.value == pytest.approx(lr.slope, rel=1e-5) and r.p_value == pytest.approx(lr.pvalue, rel=1e-5)


def test_routing_confusion_adds_up_and_its_diagonal_is_task_id_acc(study, final_rows):
    root, index, _ = study
    mat, fin = final_rows
    conf = pd.read_csv(index.parent / "routing_final.csv")
    assert set(conf.strategy) == {"patchcore_cl"}
    shares = conf.groupby(["memory_size", "true_task"]).share.sum()
    assert np.allclose(shares, 1.0)
    raw = pd.read_parquet(root / "routing.parquet")
    per_run = raw.groupby(["run_id", "step", "true_task"]).images.sum()
    assert (per_run == 40).all()  # every test image of the task, at every step
    acc = fin[fin.metric == "task_id_acc"].groupby(["memory_size", "eval_task"]).value.mean()
    diag = conf[conf.true_task == conf.chosen_task].set_index(["memory_size", "true_task"]).share
    for (m, t), v in acc.items():
        assert diag[(m, t)] == pytest.approx(v)
    text = index.read_text()
    assert "correctly and wrongly routed" in text


def test_statistics_parquet_is_used_when_present(tmp_path):
    """A sweep's statistics.parquet is what the report shows (here with one value changed)."""
    from pclsim.results.tables import STATISTICS_SCHEMA
    from pclsim.analysis.statistics import statistics_table

    fabricate_results(tmp_path, tasks=TASKS, orders="all", strategies=("patchcore_cl", "joint"), memory_sizes=(200,),
                      seeds=(0, 1), pixel_metrics=False)
    summ = pd.read_parquet(tmp_path / "summary.parquet")
    mat = pd.read_parquet(tmp_path / "matrices.parquet")
    st = statistics_table(summ, mat)
    sel = (st.strategy == "joint") & (st.statistic == "order_share") & (st.quantity == "final_mean") \
        & (st.metric == "image_f1")
    st.loc[sel, "value"] = 0.4242
    pq.write_table(pa.Table.from_pandas(st, schema=STATISTICS_SCHEMA, preserve_index=False),
                   tmp_path / "statistics.parquet")
    sec = _section(build_report(tmp_path).read_text())
    assert "Joint M=200: order explains 42 % of the variance" in sec and "Statistics: statistics.parquet" in sec
    assert "Kruskal-Wallis p = " in sec  # two seeds
    assert "No routing.parquet" not in sec


def test_without_routing_the_section_says_so(tmp_path):
    fabricate_results(tmp_path, tasks=TASKS, orders=[TASKS], strategies=("patchcore_cl",), memory_sizes=(200,),
                      pixel_metrics=False, routing=False)
    sec = _section(build_report(tmp_path).read_text())
    assert "No routing.parquet" in sec and "a single order" in sec
    assert not (tmp_path / "report" / "routing_confusion.png").exists()


def test_a_registered_metric_reaches_table1(tmp_path):
    """One register_metric call: the new metric is a Table 1 row with its label, nothing else edited."""
    from pclsim.core.metric_registry import Metric, register_metric, unregister_metric

    fabricate_results(tmp_path, tasks=TASKS, orders=2, strategies=("patchcore_cl", "joint"), memory_sizes=(200,))
    summ = pd.read_parquet(tmp_path / "summary.parquet")
    iou = summ[summ.metric == "pixel_f1"].assign(metric="pixel_iou", final_mean=lambda f: f.final_mean / 2)
    pd.concat([summ, iou]).to_parquet(tmp_path / "summary.parquet", index=False)
    register_metric(Metric("pixel_iou", "pixel", "pixel IoU", lambda p, n_tasks: p / (2 - p), table1=True))
    try:
        index = build_report(tmp_path)
    finally:
        unregister_metric("pixel_iou")
    t1 = pd.read_csv(index.parent / "table1.csv", index_col=0)
    assert list(t1.index) == ROWS[:6] + ["pixel_iou"] + ROWS[6:]
    assert t1.loc["pixel_iou", "CL M=200"] == pytest.approx(t1.loc["pixel_f1", "CL M=200"] / 2)
    assert "| pixel IoU |" in (index.parent / "table1.md").read_text()
    assert "<th>pixel IoU</th>" in index.read_text()


# ----------------------------------------------------------------------------- variants

def test_single_order_folder_parquet_explicit_first_order(tmp_path, capsys):
    """A hand-listed order list (first order not alphabetical), matrices as a folder of parts,
    one strategy pair, a broken gallery file: the report still builds and says what it skipped."""
    order = ["Chest_AD", "Brain_AD", "Liver_AD"]
    fabricate_results(tmp_path, tasks=TASKS, orders=[order, TASKS], strategies=("patchcore_cl", "joint"),
                      memory_sizes=(200,), gallery=1, matrices_as_folder=True, pixel_metrics=False)
    (tmp_path / "gallery" / "broken.npz").write_bytes(b"not an npz")
    # a half-written part from an interrupted writer is hidden by its name and must be ignored
    (tmp_path / "matrices.parquet" / ".tmp-x.parquet").write_bytes(b"garbage")
    report_command(str(tmp_path))
    printed = capsys.readouterr().out.strip()
    index = tmp_path / "report" / "index.html"
    assert printed == str(index)
    text = index.read_text()
    assert "first: Chest_AD &gt; Brain_AD &gt; Liver_AD" in text
    assert "broken.npz" in text
    assert (tmp_path / "report" / "gallery.png").is_file()
    assert sorted(p.name for p in (tmp_path / "report").glob("heatmaps_*.png")) == ["heatmaps_M200.png"]
    t1 = pd.read_csv(tmp_path / "report" / "table1.csv", index_col=0)
    assert list(t1.columns) == ["Joint M=200", "CL M=200"]
    assert t1.loc[["pixel_auroc", "pixel_aupro"]].isna().all().all()  # no pixel metrics in this sweep
    assert np.isfinite(t1.loc["image_f1"]).all()


def test_a_0_1_0_folder_with_trial_id_reads_the_same(tmp_path):
    """0.1.0 named the run column trial_id: such a folder gives the same tables as a run_id one."""
    new, old = tmp_path / "new", tmp_path / "old"
    fabricate_results(new, tasks=TASKS, orders=3, memory_sizes=(200,), pixel_metrics=False)
    fabricate_results(old, tasks=TASKS, orders=3, memory_sizes=(200,), pixel_metrics=False, legacy_names=True)
    assert "trial_id" in pq.read_schema(old / "summary.parquet").names
    assert "trial_id" in pq.read_schema(old / "matrices.parquet").names
    a, b = build_report(new), build_report(old)
    for name in ("table1.csv", "per_task_final.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(a.parent / name, index_col=0),
                                      pd.read_csv(b.parent / name, index_col=0))
    n_runs = pd.read_parquet(old / "summary.parquet")["trial_id"].nunique()
    assert f"<b>{n_runs}</b> runs" in b.read_text()


def test_other_metric_and_out_dir(study, tmp_path):
    root, _, _ = study
    before = {p.name: p.stat().st_mtime_ns for p in (root / "report").iterdir()}
    # a pixel metric: the unmasked task has no values, which every figure must survive
    index = build_report(root, metric="pixel_aupro", out_dir=tmp_path / "elsewhere")
    assert {p.name: p.stat().st_mtime_ns for p in (root / "report").iterdir()} == before  # default folder untouched
    assert index == tmp_path / "elsewhere" / "index.html"
    text = index.read_text()
    assert "relative gap (pixel_aupro)" in text
    per_task = pd.read_csv(index.parent / "per_task_final.csv", index_col=0)
    assert per_task.loc["Chest_AD"].isna().all() and per_task.loc["Brain_AD"].notna().all()
    assert (tmp_path / "elsewhere" / "gallery.png").is_file()
    assert (tmp_path / "elsewhere" / "heatmaps_M300.png").is_file()


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def copy_of(study, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(study[0], dst, ignore=shutil.ignore_patterns("report", "gallery"))
    return dst


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(PclsimError, match="nope"):
        build_report(missing)


@pytest.mark.parametrize("name", ["matrices.parquet", "summary.parquet"])
def test_missing_parquet(copy_of, name):
    (copy_of / name).unlink()
    with pytest.raises(PclsimError) as e:
        build_report(copy_of)
    assert name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,column", [("summary.parquet", "bwt"), ("matrices.parquet", "eval_task")])
def test_missing_column(copy_of, name, column):
    table = pq.read_table(copy_of / name)
    pq.write_table(table.drop_columns([column]), copy_of / name)
    with pytest.raises(PclsimError) as e:
        build_report(copy_of)
    assert name in str(e.value) and column in str(e.value)


def test_corrupt_parquet(copy_of):
    (copy_of / "summary.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PclsimError, match="summary.parquet"):
        build_report(copy_of)


@pytest.mark.parametrize("name", ["statistics.parquet", "routing.parquet"])
def test_corrupt_order_tables_name_the_file(copy_of, name):
    (copy_of / name).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PclsimError) as e:
        build_report(copy_of)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_unknown_metric_names_the_available_ones(copy_of):
    with pytest.raises(PclsimError) as e:
        build_report(copy_of, metric="image_f2")
    assert "image_f2" in str(e.value) and "image_f1" in str(e.value) and "matrices.parquet" in str(e.value)


def test_unwritable_output(copy_of):
    blocker = copy_of / "file"
    blocker.write_text("x")
    with pytest.raises(PclsimError, match="file"):
        build_report(copy_of, out_dir=blocker / "report")


def test_cli_report_exit_codes(copy_of):
    from typer.testing import CliRunner

    from pclsim.cli import app

    ok = CliRunner().invoke(app, ["report", str(copy_of)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip().endswith(str(copy_of / "report" / "index.html"))
    (copy_of / "summary.parquet").unlink()
    bad = CliRunner().invoke(app, ["report", str(copy_of)])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: ") and "summary.parquet" in bad.output
    assert "Traceback" not in bad.output


# ----------------------------------------------------------------------------- browser

@pytest.mark.slow
def test_renders_in_headless_chromium(study, tmp_path):
    chromium = chromium_or_skip()
    _, index, _ = study
    shot = tmp_path / "shot.png"
    cmd = screenshot_command(chromium, tmp_path / "ud", shot, "1200,5000", index.as_uri())
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    assert grey.shape == (5000, 1200)
    assert grey.std() > 20
    assert (grey < 128).mean() > 0.01      # text and table borders
    # the figures were loaded: the order section's figures and the first heatmap show up below the tables
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 40
    assert coloured.mean() > 0.01
    # the section "Does the order matter?" (the page's #order anchor): its sentences, table and figures
    sec = tmp_path / "order.png"
    cmd[cmd.index(f"--screenshot={shot}")] = f"--screenshot={sec}"
    cmd[-1] = index.as_uri() + "#order"
    cmd[cmd.index("--window-size=1200,5000")] = "--window-size=1200,4000"
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    assert sec.is_file(), "chromium wrote no screenshot of the order section"
    with Image.open(sec) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    grey = rgb.mean(-1)
    rows_with_text = (grey < 100).mean(1) > 0.01
    assert rows_with_text.sum() > 150                       # heading, sentences and table lines
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).sum() > 4000   # the section's figures are drawn (coloured marks)
    assert not np.array_equal(rgb[:2000], np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)[:2000])
