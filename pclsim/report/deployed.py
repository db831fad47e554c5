"""The report's "Deployed thresholds" and "Protocol" sections (issue 24).

Deployed thresholds: for each (strategy, memory size) and each label-free threshold policy of the scenario
(pclsim.core.thresholds), the final mean image F1 at the fitted thresholds next to the oracle F1-max, the
gap, the false-positive rate reached and the mean threshold drift, over the runs in summary.parquet
(also written as thresholds.csv). Protocol: protocol.json (pclsim.results.protocol_card) as a table.
"""

from __future__ import annotations

import json

import pandas as pd

from ..core.thresholds import split_metric_name
from .page import escape, html_table
from .tables import format_cell

__all__ = ["deployed_table", "deployed_section", "protocol_section"]


def deployed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, memory_size, policy): oracle_f1, deployed_f1, gap (oracle - deployed), fpr,
    threshold_drift: means over runs of the final means in summary.parquet. Empty without threshold metrics."""
    policies = sorted({split_metric_name(m)[1].label for m in summary["metric"].unique() if split_metric_name(m)})
    if not policies:
        return pd.DataFrame()
    final = summary.groupby(["strategy", "memory_size", "metric"], observed=True)["final_mean"].mean()
    rows = []
    for (strategy, m) in sorted({(s, int(k)) for s, k, _ in final.index}):
        oracle = final.get((strategy, m, "image_f1"), float("nan"))
        for p in policies:
            dep = final.get((strategy, m, f"image_f1@{p}"), float("nan"))
            rows.append({"strategy": strategy, "memory_size": m, "policy": p, "oracle_f1": oracle,
                         "deployed_f1": dep, "gap": oracle - dep,
                         "fpr": final.get((strategy, m, f"image_fpr@{p}"), float("nan")),
                         "threshold_drift": final.get((strategy, m, f"threshold_drift@{p}"), float("nan"))})
    return pd.DataFrame(rows)


def deployed_section(d, out) -> str:
    """HTML of the "Deployed thresholds" section ("" when the scenario fitted none); writes thresholds.csv."""
    tab = deployed_table(d.summary)
    if tab.empty:
        return ""
    tab.to_csv(out / "thresholds.csv", index=False, float_format="%.6g")
    shown = tab.set_index(tab["strategy"] + ", M=" + tab["memory_size"].astype(str) + ", " + tab["policy"])
    shown = shown[["oracle_f1", "deployed_f1", "gap", "fpr", "threshold_drift"]]
    refit = (d.scenario.get("evaluation") or {}).get("threshold_refit", True)
    return "\n".join([
        "<h2>Deployed thresholds</h2>",
        "<p class=\"note\">Image F1 at thresholds fitted WITHOUT test labels, per memory bank, on normal training "
        "images held out of every bank (<code>dataset.calibration</code>), against the oracle F1-max of Table 1, "
        "whose threshold is chosen on the test labels. Final means over tasks, then over runs. "
        f"Thresholds {'refitted whenever a bank changes' if refit else 'kept from the step each bank appeared'}; "
        "drift: relative change of a task's threshold since its own step (a re-reduced bank scores higher). "
        "Also in <a href=\"thresholds.csv\">thresholds.csv</a>.</p>",
        html_table(shown, lambda r, c: r if c is None else format_cell("", shown.loc[r, c])),
    ])


def _protocol_rows(card: dict) -> list[tuple[str, str]]:
    rows = [("image score", card.get("image_score", "")), ("distance", card.get("distance", "")),
            ("reweighting", f"{card['reweighting']['name']}: {card['reweighting']['rule']}" if "reweighting" in card
             else ""),
            ("anomaly map", card.get("anomaly_map", "")),
            ("resize", f"{card['resize']['mode']}: {card['resize']['rule']}" if "resize" in card else ""),
            ("masks", card.get("masks", ""))]
    for name, m in (card.get("metrics") or {}).items():
        if "@" not in name:
            rows.append((name, m["definition"] + (" [threshold chosen on TEST labels]"
                                                  if m.get("threshold_from_test_labels") else "")))
    th = card.get("thresholds") or {}
    if th.get("policies"):
        cal = th.get("calibration", {})
        rows.append(("thresholds", f"{', '.join(p['label'] for p in th['policies'])}; {th.get('decision', '')}; "
                                   f"fitted per {th.get('fitted_per', '')}; calibration share {cal.get('share')} "
                                   f"(seed {cal.get('seed')}); refit {th.get('refit')}"))
    tl = card.get("test_labels") or {}
    rows.append(("test labels choose", ", ".join(tl.get("used_by", [])) or "nothing"))
    rows.append(("test labels never read by", ", ".join(tl.get("never_read_by", []))))
    return rows


def protocol_section(root) -> str:
    """HTML of the "Protocol" section from root/protocol.json ("" for a folder without one: pclsim < 0.4)."""
    path = root / "protocol.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _protocol_rows(card))
    return ("<h2>Protocol</h2><p class=\"note\">The conventions behind every number of this folder, and what was "
            "chosen with test labels (<a href=\"../protocol.json\">protocol.json</a>).</p>"
            f'<table class="meta"><tbody>{body}</tbody></table>')
