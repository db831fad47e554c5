"""Words for the order statistics: one sentence per strategy and memory size ("Does the order matter?").

Reads the rows of `statistics.parquet` (pclsim.analysis.statistics.statistics_table) and states the test, the
order's share of the variance, the position slopes and the best and worst orders in words, for the
sweep's console table, the report and the README figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["order_sentence"]


# ----------------------------------------------------------------------------- words

def _fmt_p(p: float) -> str:
    """'= 0.12', '< 0.001' or '= n/a': what follows 'p ' in a sentence."""
    if not np.isfinite(p):
        return "= n/a"
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


def _pick(stats_df: pd.DataFrame, statistic: str, quantity: str, task=None) -> pd.Series | None:
    s = stats_df[(stats_df["statistic"] == statistic) & (stats_df["quantity"] == quantity)]
    s = s[s["task"].isna()] if task is None else s[s["task"] == task]
    return None if s.empty else s.iloc[0]


def _slope_words(s: pd.DataFrame, quantity: str, verb: str, unit: str, scale: float, words) -> list[str]:
    """The pooled position slope of a per-task quantity in words (empty when there is none)."""
    slope, ptest = _pick(s, "position_slope", quantity), _pick(s, "position_test", quantity)
    if slope is None or not np.isfinite(slope["value"]):
        return []
    if slope["note"].startswith("constant") or (ptest is not None and ptest["note"].startswith("constant")):
        return [f"a task's {quantity.replace('_', ' ')} does not depend on when it arrived"]
    v = scale * slope["value"]  # final value: points of the metric (0.01 of AUROC, F1, ...)
    extra = (f", permutation p {_fmt_p(ptest['p_value'])}" if ptest is not None
             and np.isfinite(ptest["p_value"]) else "")
    return [f"tasks arriving one step later {verb} {abs(v):.2f} {unit} {words[0] if v >= 0 else words[1]} "
            f"(95 % CI {scale * slope['ci_low']:.2f} to {scale * slope['ci_high']:.2f}{extra})"]


def order_sentence(stats_df: pd.DataFrame, strategy: str, memory_size: int, metric: str,
                   label: str | None = None) -> str:
    """One sentence: does the order matter for this strategy and memory size (from statistics rows)."""
    s = stats_df[(stats_df["strategy"] == strategy) & (stats_df["memory_size"] == memory_size)
                 & (stats_df["metric"] == metric)]
    name = label or f"{strategy}, M={memory_size}"
    m = metric.replace("_", " ")
    share, test = _pick(s, "order_share", "final_mean"), _pick(s, "order_test", "final_mean")
    parts = []
    if test is None:
        return f"{name}: no {m} values."
    if test["note"].startswith("one order"):
        parts.append(f"{name}: a single order, so the order's effect cannot be measured")
    elif test["note"].startswith("constant"):
        parts.append(f"{name}: the final mean {m} is the same for every order (p = 1)")
    elif "kruskal" in test["method"]:
        sh = share["value"] if share is not None else np.nan
        parts.append(f"{name}: order explains {100 * sh:.0f} % of the variance of final mean {m} "
                     f"(Kruskal-Wallis p {_fmt_p(test['p_value'])}, epsilon² = {test['effect_size']:.2f})")
    elif np.isfinite(test["p_value"]):
        parts.append(f"{name}: with one seed, the tasks' arrival steps explain {100 * test['value']:.0f} % of the "
                     f"variation of final mean {m} over orders (permutation p {_fmt_p(test['p_value'])})")
    else:
        parts.append(f"{name}: {test['note']}")
    forget = _pick(s, "order_test", "avg_forgetting_pct")
    if forget is not None and np.isfinite(forget["p_value"]) and not test["note"].startswith("one order"):
        fshare = _pick(s, "order_share", "avg_forgetting_pct")
        what = (f"{100 * fshare['value']:.0f} % of the variance of average forgetting, p "
                if fshare is not None and np.isfinite(fshare["value"]) else "average forgetting: p ")
        parts.append(what + _fmt_p(forget["p_value"]))
    parts += _slope_words(s, "final_value", "end", "points", 100.0, ("higher", "lower"))
    parts += _slope_words(s, "forgetting_pct", "forget", "%", 1.0, ("more", "less"))
    for q, what, fmt in (("final_mean", "", "{:.3f}"), ("avg_forgetting_pct", " by forgetting", "{:.2f} %")):
        best, worst, gap = (_pick(s, k, q) for k in ("best_order", "worst_order", "best_worst_gap"))
        if best is None or best["note"]:
            continue  # all orders tie: by final mean under rebalance truncate; then say it by forgetting
        g = fmt.format(gap["value"]) + (f" = {gap['effect_size']:.1f} seed std" if np.isfinite(gap["effect_size"])
                                        else "")
        parts.append(f"best order{what} {best['order']} ({fmt.format(best['value'])}), worst {worst['order']} "
                     f"({fmt.format(worst['value'])}), gap {g}")
        break
    return "; ".join(parts) + "."
