"""Issue 28: results every reader opens and combines.

Two real sweeps that differ where types used to follow the data (mask-less tasks with `maskless_pixels:
paper` vs `skip`; one seed vs two), read with pyarrow datasets, pandas, polars and duckdb through the one
documented layout (`<table>.parquet/*.parquet`), each folder and both concatenated: the contract's Arrow
types in every table, the same rows and values in every reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pclsim.results.schema import TABLES

duckdb = pytest.importorskip("duckdb")
pl = pytest.importorskip("polars")

ROOT = Path(__file__).resolve().parents[2]
BODY = """
dataset: {{kind: synthetic, tasks: [Brain_AD, Chest_AD], image_size: 64, synthetic: {{train: 6, test: 8, seed: 0}}}}
strategies: [patchcore_cl, joint]
memory_sizes: [30]
seeds: {seeds}
evaluation: {{maskless_pixels: {maskless}}}
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("readers")
    out = []
    for name, seeds, maskless in (("skip1", "[0]", "skip"), ("paper2", "[0, 1]", "paper")):
        sc = base / f"{name}.yaml"
        sc.write_text(f"name: {name}\n" + BODY.format(seeds=seeds, maskless=maskless))
        env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT), PCLSIM_CACHE_DIR=str(base / "cache"))
        r = subprocess.run([sys.executable, "-m", "pclsim.cli", "sweep", str(sc), "--out", str(base / name), "--quiet"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out.append(base / name)
    return out


def test_every_table_is_a_folder_of_parts_with_the_contracts_types(folders):
    for folder in folders:
        for t in TABLES.values():
            path = folder / t.file
            if t.name in ("categories", "design"):  # multi-category steps; adaptive order designs
                assert not path.exists()              # (tests/runner/test_adaptive_sweep.py checks design)
                continue
            assert path.is_dir() and sorted(path.glob("*.parquet")), path
            schema = ds.dataset(path, format="parquet").schema
            want = t.schema_of(schema.names)
            assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in want], path
    tasks = [pd.read_parquet(f / "tasks.parquet").set_index("task") for f in folders]
    assert tasks[0].loc["Chest_AD", "maskless_all_ones"].tolist() == []            # skip: no image given all-1 masks
    assert len(tasks[1].loc["Chest_AD", "maskless_all_ones"]) > 0                  # paper: the all-1 images listed


@pytest.mark.parametrize("name", ["matrices", "steps", "summary", "statistics", "routing", "routed", "tasks"])
def test_every_reader_opens_and_combines_the_folders(folders, name):
    file = TABLES[name].file
    globs = [f"{f / file}/*.parquet" for f in folders]
    frames = [pd.read_parquet(f / file) for f in folders]
    n = sum(len(f) for f in frames)
    # pyarrow: one dataset over both folders (the schemas are equal, so no unification is needed)
    combined = pa.concat_tables([ds.dataset(f / file, format="parquet").to_table() for f in folders])
    assert combined.num_rows == n
    # polars and duckdb through the documented glob, each folder and both at once
    by_polars = pl.concat([pl.read_parquet(g) for g in globs])
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet({globs!r})").df()
    assert by_polars.height == n and len(by_duckdb) == n
    numeric = [c.name for c in TABLES[name].columns + TABLES[name].extra
               if c.name in frames[0].columns and pa.types.is_floating(c.type)]
    for c in numeric:  # the same values in every reader (sums of the finite cells)
        want = float(np.nansum(pd.concat(frames)[c].to_numpy(float)))
        assert float(np.nansum(by_polars[c].to_numpy().astype(float))) == pytest.approx(want)
        assert float(np.nansum(by_duckdb[c].to_numpy(float))) == pytest.approx(want)
    texts = [c.name for c in TABLES[name].columns if c.name in frames[0].columns and pa.types.is_string(c.type)]
    for c in texts:
        assert sorted(map(str, by_polars[c].drop_nulls().to_list())) == sorted(
            map(str, pd.concat(frames)[c].dropna().tolist()))
