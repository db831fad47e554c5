"""`pclsim show RESULTS_DIR`: a results folder in the terminal: what it holds, the summary per strategy
and memory size (undefined quantities printed as undefined, with their reasons, never as 0), and how
to open its tables with pandas, polars and duckdb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import PclsimError
from ..results.schema import TABLES
from ..results.tables import read_table

__all__ = ["show_text"]

QUANTITIES = ("final_mean", "avg_forgetting_pct", "bwt", "fwt")


def show_text(results_dir, metric: str = "image_f1") -> str:
    """The text `pclsim show` prints for the folder. Raises PclsimError when it holds no summary.parquet
    or no rows for `metric`."""
    root = Path(results_dir)
    summ_path = root / TABLES["summary"].file
    if not root.is_dir():
        raise PclsimError(f"{root}: results folder not found")
    if not summ_path.exists():
        raise PclsimError(f"{summ_path}: not found (not a pclsim results folder, or its sweep did not finish: "
                          "rerun the same sweep command to complete it)")
    try:
        summary = read_table(summ_path)
        sc = yaml.safe_load((root / "scenario.yaml").read_text()) if (root / "scenario.yaml").exists() else {}
    except Exception as e:
        raise PclsimError(f"{root}: cannot read: {e}") from None
    s = summary[summary["metric"] == metric]
    if s.empty:
        raise PclsimError(f"{summ_path}: no rows for metric '{metric}' (available: "
                          f"{', '.join(sorted(summary['metric'].unique()))})")
    lines = [f"{root}: scenario {sc.get('name', '?')} (pclsim {sc.get('pclsim_version', '?')}), "
             f"{summary['run_id'].nunique()} runs, {s['order'].nunique()} orders", ""]
    lines.append("tables: " + ", ".join(t.file for t in TABLES.values() if (root / t.file).exists()))
    lines += ["", f"{metric}: mean over runs (orders x seeds); 'undefined' where no run has the value", ""]
    rows = []
    for (strategy, m), g in s.groupby(["strategy", "memory_size"], sort=False):
        cells = {"strategy": strategy, "M": int(m), "runs": len(g)}
        for q in QUANTITIES:
            v = g[q].to_numpy(float)
            ok = np.isfinite(v)
            if not ok.any():
                cells[q] = "undefined"
            else:
                cells[q] = f"{v[ok].mean():.4f}" + ("" if ok.all() else f" ({ok.sum()} of {len(v)} runs)")
        rows.append(cells)
    lines.append(pd.DataFrame(rows).to_string(index=False))
    if "undefined" in s.columns and s["undefined"].notna().any():
        counts = s["undefined"].dropna().str.split("; ").explode().value_counts()
        lines += ["", "why values are undefined (runs):"] + [f"  {n:5d}  {why}" for why, n in counts.items()]
    lines += ["", "open the tables (each a folder of part files: <table>.parquet/*.parquet):",
              f"  pandas: pd.read_parquet('{root / 'matrices.parquet'}')",
              f"  polars: pl.read_parquet('{root / 'matrices.parquet'}/*.parquet')",
              f"  duckdb: duckdb.sql(\"SELECT * FROM read_parquet('{root / 'matrices.parquet'}/*.parquet')\")"]
    return "\n".join(lines)
