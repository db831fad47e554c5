"""Fabricate a small but realistic sweep results folder (interface.md schema) for the report tests.

Values follow the shapes the paper reports: multi_model high and stable, patchcore_cl close to it
with a small loss that grows as the per-task budget shrinks, joint somewhat lower on old tasks,
finetune near chance on every task but the newest. Unseen tasks sit near chance for everyone.
Everything is vectorised so the 720-order benchmark case builds in seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pclsim.results.schema import MATRIX_SCHEMA, ROUTED, ROUTING, SUMMARY

# the 0.1.0 summary columns (a sweep also writes the optional ones; the report must cope without them)
SUMMARY_SCHEMA = pa.schema([SUMMARY.schema.field(c) for c in SUMMARY.required])

STRATEGIES = ("patchcore_cl", "finetune", "joint", "multi_model")
IMAGE_METRICS = ("image_auroc", "image_f1")
PIXEL_METRICS = ("pixel_auroc", "pixel_f1", "pixel_pr", "pixel_aupro")
# (offset from the task's base quality, chance level) per metric
_METRIC_SHAPE = {"image_auroc": (0.0, 0.5), "image_f1": (0.02, 0.667), "pixel_auroc": (0.03, 0.5),
                 "pixel_f1": (-0.3, 0.05), "pixel_pr": (-0.28, 0.03), "pixel_aupro": (-0.15, 0.15)}
DIM = 1536
ARCH_MB = 18.6
NO_MASK_HINTS = ("Chest", "Histopathology", "OCT2017")


def run_id(strategy: str, memory_size: int, seed: int, order: str) -> str:
    return f"{strategy}-M{memory_size}-s{seed}-{hashlib.sha1(order.encode()).hexdigest()[:10]}"


def bank_mb(strategy: str, memory_size: int, n_tasks: int) -> float:
    vectors = {"multi_model": n_tasks * memory_size,
               "patchcore_cl": (memory_size // n_tasks) * n_tasks}.get(strategy, memory_size)
    return vectors * DIM * 4 / 1e6


def _values(strategy, metric, M, base, P, rng):
    """a[o, t, p]: the metric after step t on the task at position p of order o."""
    n_orders, T = P.shape
    b = base[P][:, None, :] + _METRIC_SHAPE.get(metric, (0.0, 0.5))[0]       # (O, 1, T)
    chance = _METRIC_SHAPE.get(metric, (0.0, 0.5))[1]
    t = np.arange(T)[None, :, None]
    p = np.arange(T)[None, None, :]
    seen = p <= t
    age = (t - p) / max(T - 1, 1)                                             # 0 when just trained
    shrink = np.sqrt(100.0 / M)
    unseen = chance + 0.15 * (b - chance)
    if strategy == "multi_model":
        a = np.where(seen, b, unseen)
    elif strategy == "patchcore_cl":
        a = np.where(seen, b - 0.05 * shrink * age - 0.01 * shrink * t / max(T - 1, 1), unseen)
    elif strategy == "joint":
        a = np.where(seen, b - 0.02 - 0.08 * shrink * age, unseen)
    elif strategy == "finetune":
        a = np.where(p == t, b, np.where(seen, chance + 0.12 * (b - chance), unseen))
    else:
        raise ValueError(strategy)
    a = a + rng.normal(0.0, 0.008, size=(n_orders, T, T))
    return np.clip(a, 0.0, 1.0)


TEST_IMAGES = 40  # per task, for the routing counts


def _task_id_values(P, rng):
    """Share of a task's test images routed to its own bank: whole images out of TEST_IMAGES; 1 while
    one bank exists (nothing to choose), 0 for tasks not seen yet (they have no bank)."""
    n_orders, T = P.shape
    t = np.arange(T)[None, :, None]
    p = np.arange(T)[None, None, :]
    a = np.where(p <= t, 0.97 - 0.02 * t / max(T - 1, 1), 0.0)
    a = np.clip(a + np.where(p <= t, rng.normal(0, 0.01, (n_orders, T, T)), 0.0), 0, 1)
    a = np.round(a * TEST_IMAGES) / TEST_IMAGES
    a[:, 0, 0] = 1.0
    return a


def _routing_rows(acc, order_list, rid):
    """routing.parquet rows consistent with task_id_acc `acc` (O, T, T): the wrongly routed images of a
    seen task go to the first other seen task; a task not seen yet goes to the newest bank."""
    rows = []
    for o, order in enumerate(order_list):
        T = len(order)
        for t in range(T):
            for p in range(T):
                own = int(round(acc[o, t, p] * TEST_IMAGES))
                if p <= t and own:
                    rows.append((rid[o], t, order[p], order[p], own))
                if own < TEST_IMAGES:
                    other = next(order[k] for k in range(t + 1) if k != p) if p <= t else order[t]
                    rows.append((rid[o], t, order[p], other, TEST_IMAGES - own))
    return rows


def _summary_rows(a, strategy, M, seed, order_strs, metric, T):
    """Continual metrics of each (T x T) matrix in position space; NaN cells = task without masks."""
    full = ~np.isnan(a).any(axis=(1, 2))
    last = a[:, -1, :]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN last row: no task with masks
        final = np.nanmean(last, axis=1)
        i = np.arange(T - 1)
        diag = a[:, i, i]
        forget = 100.0 / max(T - 1, 1) * ((diag - a[:, -1, i]) / diag).sum(1) if T > 1 else np.zeros(len(a))
        bwt = (a[:, -1, i] - diag).mean(1) if T > 1 else np.zeros(len(a))
        j = np.arange(1, T)
        chance = _METRIC_SHAPE.get(metric, (0.0, 1.0 / T))[1]
        fwt = (a[:, j - 1, j] - chance).mean(1) if T > 1 else np.zeros(len(a))
    return pd.DataFrame({
        "run_id": [run_id(strategy, M, seed, o) for o in order_strs],
        "strategy": strategy, "memory_size": M, "seed": seed, "order": order_strs, "metric": metric,
        "final_mean": final, "avg_forgetting_pct": np.where(full, forget, np.nan),
        "bwt": np.where(full, bwt, np.nan), "fwt": np.where(full, fwt, np.nan),
        "bank_mb": bank_mb(strategy, M, T), "arch_mb": ARCH_MB})


def fabricate_results(root, tasks=("Brain_AD", "Liver_AD", "Chest_AD"), orders="all",
                      strategies=STRATEGIES, memory_sizes=(100, 300), seeds=(0,), masked=None,
                      pixel_metrics=True, task_id=True, gallery: int = 0, matrices_as_folder=False,
                      name="fabricated", legacy_names=False, routing=True, dataset_kind="synthetic") -> dict:
    """Write matrices.parquet, summary.parquet and scenario.yaml (and gallery/*.npz) under `root`.

    orders: "all", an int (that many distinct permutations, seeded) or a list of task lists.
    masked: tasks with pixel masks (default: those BMAD ships masks for). legacy_names: name the run
    column `trial_id`, as 0.1.0 did. routing: also write routing.parquet and routed.parquet for the
    strategies with task_id_acc, consistent with it. dataset_kind: scenario.yaml's dataset.kind (bmad: the
    report compares Table 1 with the seed paper's when the tasks are BMAD's six). Returns a description.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tasks = list(tasks)
    T = len(tasks)
    if masked is None:
        masked = [t for t in tasks if not any(h in t for h in NO_MASK_HINTS)]
    if orders == "all":
        order_list = [list(p) for p in itertools.permutations(tasks)]
        yaml_orders = "all"
    elif isinstance(orders, int):
        perms = [list(p) for p in itertools.permutations(tasks)]
        pick = np.random.default_rng(123).choice(len(perms), size=orders, replace=False)
        order_list = [tasks] + [perms[k] for k in pick if perms[k] != tasks][: orders - 1]
        yaml_orders = order_list
    else:
        order_list = [list(o) for o in orders]
        yaml_orders = order_list
    tix = {t: i for i, t in enumerate(tasks)}
    P = np.array([[tix[t] for t in o] for o in order_list])                   # (O, T) task index
    order_strs = np.array([" > ".join(o) for o in order_list], dtype=object)
    n_orders = len(order_list)
    base = np.linspace(0.80, 0.95, T)[np.random.default_rng(7).permutation(T)]
    metrics = list(IMAGE_METRICS) + (list(PIXEL_METRICS) if pixel_metrics else [])
    has_mask = np.array([t in masked for t in tasks])
    task_arr = np.array(tasks, dtype=object)

    o_idx, t_idx, p_idx = np.meshgrid(np.arange(n_orders), np.arange(T), np.arange(T), indexing="ij")
    o_idx, t_idx, p_idx = o_idx.ravel(), t_idx.ravel(), p_idx.ravel()
    eval_task_idx = P[o_idx, p_idx]
    train_task_idx = P[o_idx, t_idx]
    mat_parts, summ_parts, routing_rows, routed_rows = [], [], [], []
    for seed in seeds:
        for s in strategies:
            for M in memory_sizes:
                rng = np.random.default_rng([seed, M, STRATEGIES.index(s) if s in STRATEGIES else 9])
                mlist = metrics + (["task_id_acc"] if task_id and s == "patchcore_cl" else [])
                for metric in mlist:
                    a = _task_id_values(P, rng) if metric == "task_id_acc" else _values(s, metric, M, base, P, rng)
                    keep = np.ones(a.size, bool)
                    if metric.startswith("pixel"):
                        keep = has_mask[eval_task_idx]
                        a = np.where(has_mask[P][:, None, :], a, np.nan)
                    summ_parts.append(_summary_rows(a, s, M, seed, order_strs, metric, T))
                    tids = np.array([run_id(s, M, seed, o) for o in order_strs], dtype=object)
                    key = (s, M, seed)
                    if routing and metric == "task_id_acc":
                        routing_rows += [key + r for r in _routing_rows(a, order_list, tids)]
                    if routing and task_id and s == "patchcore_cl" and metric in IMAGE_METRICS:
                        for o in range(n_orders):  # the correctly routed images score a little higher
                            for p in range(T):
                                routed_rows.append(key + (tids[o], T - 1, order_list[o][p], "correct", metric,
                                                          min(1.0, a[o, -1, p] + 0.01)))
                                routed_rows.append(key + (tids[o], T - 1, order_list[o][p], "wrong", metric, 0.5))
                    mat_parts.append(pd.DataFrame({
                        "run_id": tids[o_idx[keep]], "strategy": s, "memory_size": M, "seed": seed,
                        "order": order_strs[o_idx[keep]], "step": t_idx[keep],
                        "train_task": task_arr[train_task_idx[keep]], "eval_task": task_arr[eval_task_idx[keep]],
                        "metric": metric, "value": a.ravel()[keep]}))
    mat = pd.concat(mat_parts, ignore_index=True)
    summ = pd.concat(summ_parts, ignore_index=True)
    joint = summ[summ.strategy == "joint"].set_index(["memory_size", "seed", "order", "metric"])["final_mean"]
    idx = pd.MultiIndex.from_frame(summ[["memory_size", "seed", "order", "metric"]])
    summ["relative_gap"] = joint.reindex(idx).to_numpy() - summ["final_mean"].to_numpy()
    summ.loc[summ.strategy == "joint", "relative_gap"] = np.nan
    summ = summ[[f.name for f in SUMMARY_SCHEMA]]

    mat_schema, summ_schema = MATRIX_SCHEMA, SUMMARY_SCHEMA
    if legacy_names:
        mat, summ = mat.rename(columns={"run_id": "trial_id"}), summ.rename(columns={"run_id": "trial_id"})
        mat_schema = pa.schema([f.with_name("trial_id") if f.name == "run_id" else f for f in MATRIX_SCHEMA])
        summ_schema = pa.schema([f.with_name("trial_id") if f.name == "run_id" else f for f in SUMMARY_SCHEMA])
    mat_path = root / "matrices.parquet"
    if matrices_as_folder:
        mat_path.mkdir(exist_ok=True)
        for k, (s, part) in enumerate(mat.groupby("strategy", sort=True)):
            pq.write_table(pa.Table.from_pandas(part, schema=mat_schema, preserve_index=False),
                           mat_path / f"part-{k:03d}.parquet")
    else:
        pq.write_table(pa.Table.from_pandas(mat, schema=mat_schema, preserve_index=False), mat_path)
    pq.write_table(pa.Table.from_pandas(summ, schema=summ_schema, preserve_index=False),
                   root / "summary.parquet")
    rid_col = "trial_id" if legacy_names else "run_id"
    order_of = dict(mat.drop_duplicates(rid_col)[[rid_col, "order"]].itertuples(index=False))
    if routing_rows:
        r = pd.DataFrame(routing_rows, columns=["strategy", "memory_size", "seed", "run_id", "step", "true_task",
                                                "chosen_task", "images"])
        r["order"] = r["run_id"].map(order_of)
        pq.write_table(pa.Table.from_pandas(r[ROUTING.names], schema=ROUTING.schema, preserve_index=False),
                       root / "routing.parquet")
    if routed_rows:
        r = pd.DataFrame(routed_rows, columns=["strategy", "memory_size", "seed", "run_id", "step", "eval_task",
                                               "routed", "metric", "value"])
        r["order"] = r["run_id"].map(order_of)
        pq.write_table(pa.Table.from_pandas(r[ROUTED.names], schema=ROUTED.schema, preserve_index=False),
                       root / "routed.parquet")
    scenario = {
        "name": name,
        "dataset": {"kind": dataset_kind, "root": None, "tasks": tasks, "image_size": 224, "protocol": "clean",
                    "max_train": 2000, "max_test": 2000, "seed": 0,
                    "synthetic": {"train": 100, "test": 40, "seed": 0}},
        "model": {"backbone": "efficientnet_lite0", "weights": "bundled", "layers": None,
                  "reweighting": "paper", "batch_size": 32},
        "orders": yaml_orders, "strategies": list(strategies), "memory_sizes": list(memory_sizes),
        "coreset": {"projection": "jl", "projection_dim": 128, "rebalance": "truncate", "joint": "composable"},
        "evaluation": {"pixel_metrics": bool(pixel_metrics), "gallery": gallery},
        "seeds": list(seeds), "pclsim_version": "0.1.0",
    }
    (root / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    if gallery:
        write_gallery(root / "gallery", tasks, masked, gallery)
    return {"root": root, "tasks": tasks, "orders": order_list, "first_order": order_list[0],
            "metrics": metrics, "matrix_rows": len(mat), "summary_rows": len(summ), "masked": masked}


def write_gallery(folder: Path, tasks, masked, per_task: int, size: int = 64) -> int:
    """npz files as the sweep's --gallery writes them: image, mask, amap, task, score, label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:size, :size]
    n = 0
    for t in tasks:
        for k in range(per_task):
            label = int(k % 3 != 2)
            cy, cx, r = rng.uniform(size * 0.3, size * 0.7, 2).tolist() + [size * rng.uniform(0.08, 0.18)]
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img = (rng.normal(110, 25, (size, size, 1)) + 40 * np.sin(xx / 7.0)[..., None]).repeat(3, 2)
            if label:
                img[blob] += np.array([70, 30, 10])
            image = np.clip(img, 0, 255).astype(np.uint8)
            mask = blob & bool(label) if t in masked else np.zeros((size, size), bool)
            amap = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (2 * r) ** 2)) * (1.0 if label else 0.3)
            amap = (amap + rng.normal(0, 0.05, amap.shape)).astype(np.float32)
            np.savez_compressed(folder / f"{t}_{k}.npz", image=image, mask=mask, amap=amap, task=t,
                                score=float(amap.max()), label=label, strategy="patchcore_cl", memory_size=300)
            n += 1
    return n
