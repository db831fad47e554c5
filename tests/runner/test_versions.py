"""Issue 26: results that know their version. Every Parquet part records the versions that wrote it; a
resume by another pclsim / torch / timm refuses unless --accept-versions; --fresh starts over."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pclsim.errors import PclsimError
from pclsim.results import provenance
from pclsim.results.tables import write_table
from pclsim.runner.sweep import prepare_output, results_record
from pclsim.study.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def _finished_group(out: Path, group: str) -> None:
    """A group's steps and matrices parts as the results writer publishes them (matrices last)."""
    steps = pd.DataFrame({"run_id": ["r"], "step": [0], "train_task": ["A"], "bank_vectors": [30], "bank_mb": [0.1],
                          "seconds": [1.0]})
    mat = pd.DataFrame({"run_id": ["r"], "strategy": ["patchcore_cl"], "memory_size": [30], "seed": [0],
                        "order": ["A > B"], "step": [0], "train_task": ["A"], "eval_task": ["A"],
                        "metric": ["image_auroc"], "value": [0.5]})
    write_table(steps, out, "steps", f"part-{group}")
    write_table(mat, out, "matrices", f"part-{group}")


def test_parts_record_the_versions_that_wrote_them(tmp_path):
    _finished_group(tmp_path, "g1")
    v = provenance.part_versions(tmp_path / "matrices.parquet" / "part-g1.parquet")
    assert v == provenance.versions() and v["pclsim"] == __import__("pclsim").__version__
    assert set(v) >= {"pclsim", "torch", "timm"}
    assert provenance.part_versions(tmp_path / "steps.parquet" / "part-g1.parquet") == v
    # the rows are unchanged by the metadata
    assert pd.read_parquet(tmp_path / "matrices.parquet").value.tolist() == [0.5]


def test_resume_by_another_version_refuses_unless_accepted(tmp_path, monkeypatch):
    sc = load_scenario(ROOT / "scenarios" / "smoke.yaml")
    out = tmp_path / "out"
    prepare_output(sc, out, fresh=False)
    assert results_record(out)["versions"] == provenance.versions()
    old = {**provenance.versions(), "pclsim": "0.2.0"}
    monkeypatch.setattr(provenance, "versions", lambda: old)
    _finished_group(out, "g1")  # computed by "0.2.0"
    monkeypatch.undo()
    with pytest.raises(PclsimError, match=r"scenario.yaml: 1 finished trial\(s\) here were computed by pclsim 0.2.0.*"
                                          r"use --fresh .* --accept-versions"):
        prepare_output(sc, out, fresh=False)
    assert (out / "matrices.parquet" / "part-g1.parquet").exists()  # nothing lost
    _finished_group(out, "g2")  # g2 by today's code; g1 stays 0.2.0
    # today's pclsim with another torch: g1 and g2 both differ, the message names the versions of the most
    monkeypatch.setattr(provenance, "versions", lambda: {**old, "pclsim": __import__("pclsim").__version__,
                                                        "torch": "1.0"})
    with pytest.raises(PclsimError, match=r"2 finished trial\(s\) here were computed by .* this is pclsim .*torch 1.0"):
        prepare_output(sc, out, fresh=False)
    monkeypatch.undo()
    # accepted: a warning names both, each part keeps its versions
    prepare_output(sc, out, fresh=False, accept_versions=True)
    found = provenance.folder_versions(out, ["g1", "g2"])
    assert sorted(map(len, found.values())) == [1, 1] and any("pclsim 0.2.0" in k for k in found)
    # --fresh starts over: no check, nothing of the old version left
    prepare_output(sc, out, fresh=True)
    assert not (out / "matrices.parquet").exists()


def test_a_folder_from_before_part_versions_falls_back_on_its_record(tmp_path):
    """0.3.0 parts hold no versions: the record's pclsim_version speaks for them."""
    import pyarrow.parquet as pq

    sc = load_scenario(ROOT / "scenarios" / "smoke.yaml")
    out = tmp_path / "out"
    prepare_output(sc, out, fresh=False)
    _finished_group(out, "g1")
    p = out / "matrices.parquet" / "part-g1.parquet"
    t = pq.read_table(p)
    pq.write_table(t.replace_schema_metadata({}), p)
    rec = yaml.safe_load((out / "scenario.yaml").read_text())
    rec["pclsim_version"] = "0.1.0"
    (out / "scenario.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    with pytest.raises(PclsimError, match="computed by pclsim 0.1.0, this is pclsim"):
        prepare_output(sc, out, fresh=False)


def test_pretrained_weights_and_library_versions_enter_the_keys(monkeypatch):
    """The data fingerprint names the checkpoint `pretrained` resolves to; the feature key the torch and timm
    versions (a new torch recomputes the features instead of reusing another release's)."""
    from pclsim.core.features import FeatureExtractor
    from pclsim.data import load_stream
    from pclsim.study.preflight import data_fingerprint

    sc = load_scenario(ROOT / "scenarios" / "smoke.yaml")
    stream = load_stream(sc["dataset"], sc["dataset"]["root"])

    def fp(backbone, weights):
        return data_fingerprint({**sc, "model": {"backbone": backbone, "weights": weights}}, stream)

    assert fp("wide_resnet50_2.tv_in1k", "pretrained") != fp("wide_resnet50_2.racm_in1k", "pretrained")
    assert fp("wide_resnet50_2.tv_in1k", "none") == fp("wide_resnet50_2.racm_in1k", "none")
    assert fp("efficientnet_lite0", "bundled") != fp("efficientnet_lite0", "none")
    ex = FeatureExtractor("efficientnet_lite0", weights="none", image_size=32, device="cpu")
    key = ex.cache_key()
    assert ex.cache_key() == key
    import pclsim._version

    now = provenance.versions()
    monkeypatch.setattr(pclsim._version, "versions", lambda: {**now, "torch": "0.0"})
    assert ex.cache_key() != key
