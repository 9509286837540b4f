"""Depth metrics (DeepVideoMVS' set plus rmse_log, median abs_rel and coverage).

Per frame: pixels where the ground truth is valid (finite, >= ``min_gt``, <= ``max_gt``) are the
evaluation domain. ``coverage`` is the fraction of that domain where the prediction is finite; the
error metrics are computed on the covered pixels. Aggregates are the mean over frames, as in
DeepVideoMVS. The offline CLI and the ROS evaluator node call the same functions, so their numbers
agree exactly.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

METRIC_KEYS = ("abs", "abs_rel", "abs_inv", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3",
               "median_abs_rel", "coverage")


def depth_metrics(pred: np.ndarray, gt: np.ndarray, min_gt: float = 0.5, max_gt: float = math.inf,
                  clip: Optional[Sequence[float]] = None) -> Optional[Dict[str, float]]:
    """Metrics of one depth map against ground truth (both (H, W), metres, NaN/0 = invalid in GT).

    ``clip=(lo, hi)`` clips the prediction to the estimator's depth range first (as the reference
    evaluations do). Returns None when the frame has no valid ground truth.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    gt = gt.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        domain = np.isfinite(gt) & (gt >= min_gt) & (gt <= max_gt)
    n_domain = int(domain.sum())
    if n_domain == 0:
        return None
    p = pred.astype(np.float64, copy=False)
    if clip is not None:
        p = np.clip(p, clip[0], clip[1])
    with np.errstate(invalid="ignore"):
        covered = domain & np.isfinite(p) & (p > 0)
    n = int(covered.sum())
    out: Dict[str, float] = {"coverage": n / n_domain, "n_pixels": float(n)}
    if n == 0:
        for k in METRIC_KEYS:
            out.setdefault(k, float("nan"))
        return out
    g, q = gt[covered], p[covered]
    diff = q - g
    rel = np.abs(diff) / g
    ratio = np.maximum(g / q, q / g)
    out.update(
        abs=float(np.mean(np.abs(diff))),
        abs_rel=float(np.mean(rel)),
        abs_inv=float(np.mean(np.abs(1.0 / g - 1.0 / q))),
        sq_rel=float(np.mean(diff * diff / g)),
        rmse=float(np.sqrt(np.mean(diff * diff))),
        rmse_log=float(np.sqrt(np.mean((np.log(q) - np.log(g)) ** 2))),
        a1=float(np.mean(ratio < 1.25)),
        a2=float(np.mean(ratio < 1.25 ** 2)),
        a3=float(np.mean(ratio < 1.25 ** 3)),
        median_abs_rel=float(np.median(rel)),
    )
    return out


def aggregate(per_frame: Iterable[Optional[Mapping[str, float]]]) -> Dict[str, float]:
    """Mean over frames of every metric (frames without valid GT, i.e. None, are skipped).

    Error metrics skip frames where nothing was covered (their value is NaN); coverage counts them.
    ``frames`` is the number of frames evaluated.
    """
    rows = [r for r in per_frame if r is not None]
    out: Dict[str, float] = {"frames": float(len(rows))}
    for k in METRIC_KEYS:
        vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if vals.size else float("nan")
    return out


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def write_metrics_json(path: os.PathLike | str, summary: Mapping, per_frame: List[Mapping]) -> None:
    """The ``metrics.json`` contract: ``{"summary": {...}, "per_frame": [{"name": ..., ...}, ...]}``.

    ``summary`` holds the aggregates (e.g. ``dense`` and ``filtered`` dicts of :func:`aggregate`) and the
    settings; non-finite numbers are written as null.
    """
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_json_safe({"summary": dict(summary), "per_frame": list(per_frame)}), fh, indent=2)
        fh.write("\n")


def format_table(rows: Mapping[str, Mapping[str, float]],
                 keys: Sequence[str] = ("abs_rel", "abs", "rmse", "a1", "a2", "a3", "coverage")) -> str:
    """A small aligned text table: one row per named aggregate."""
    name_w = max(8, *(len(n) for n in rows))
    head = " ".join([f"{'':<{name_w}}"] + [f"{k:>9}" for k in keys])
    lines = [head]
    for name, agg in rows.items():
        cells = []
        for k in keys:
            v = agg.get(k, float("nan"))
            cells.append(f"{v:>9.4f}" if v is not None and np.isfinite(v) else f"{'-':>9}")
        lines.append(" ".join([f"{name:<{name_w}}"] + cells))
    return "\n".join(lines)
