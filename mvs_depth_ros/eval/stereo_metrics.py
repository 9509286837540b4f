"""Stereo metrics: end-point error, bad-N, KITTI D1, depth abs_rel, coverage, temporal EPE.

Conventions: disparities are (H, W) float arrays in pixels with NaN (or inf) where invalid, in the GT
as well as in predictions. The evaluation domain of a frame is where the GT is finite (optionally
intersected with a ``mask``, e.g. Middlebury's non-occluded mask); ``coverage`` is the fraction of the
domain where the prediction is finite, and the error metrics are computed on those covered pixels (the
convention of :mod:`mvs_depth_ros.eval.metrics`). Percentages are in [0, 100].
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .metrics import depth_metrics


def _domain(gt: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    dom = np.isfinite(gt)
    if mask is not None:
        if mask.shape != gt.shape:
            raise ValueError(f"mask {mask.shape} and ground truth {gt.shape} differ in shape")
        dom &= mask.astype(bool)
    return dom


def _check(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be equal 2-D shapes")


def disparity_metrics(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """EPE (px), bad-1/2/3 (% of covered pixels with error above 1/2/3 px), D1 (% with error > 3 px
    *and* > 5 % of the GT), coverage (fraction of the domain) and ``n_pixels`` (covered count).

    Error metrics are NaN when nothing is covered.
    """
    _check(pred, gt)
    dom = _domain(gt, mask)
    n_dom = int(dom.sum())
    if n_dom == 0:
        raise ValueError("no valid ground-truth pixel to evaluate")
    cov = dom & np.isfinite(pred)
    n = int(cov.sum())
    out = {"coverage": n / n_dom, "n_pixels": float(n)}
    if n == 0:
        return dict(out, epe=np.nan, bad1=np.nan, bad2=np.nan, bad3=np.nan, d1=np.nan)
    g = gt[cov].astype(np.float64)
    err = np.abs(pred[cov].astype(np.float64) - g)
    out.update(epe=float(err.mean()),
               bad1=100.0 * float(np.mean(err > 1.0)),
               bad2=100.0 * float(np.mean(err > 2.0)),
               bad3=100.0 * float(np.mean(err > 3.0)),
               d1=100.0 * float(np.mean((err > 3.0) & (err > 0.05 * np.abs(g)))))
    return out


def depth_abs_rel(pred_depth: np.ndarray, gt_depth: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean ``|pred - gt| / gt`` over pixels where both depths are valid (and ``mask``), NaN when none."""
    _check(pred_depth, gt_depth)
    gt = np.where(_domain(gt_depth, mask), gt_depth, np.nan)
    m = depth_metrics(pred_depth, gt, min_gt=1e-6)
    if m is None:
        raise ValueError("no valid ground-truth depth to evaluate")
    return float(m["abs_rel"])


def coverage_at_confidence(pred: np.ndarray, confidence: np.ndarray, gt: np.ndarray, threshold: float,
                           mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Keep predictions with ``confidence >= threshold``: their coverage of the domain and their EPE/bad-2.

    A useful confidence lowers the EPE as the threshold rises (at the cost of coverage).
    """
    if confidence.shape != pred.shape:
        raise ValueError(f"confidence {confidence.shape} and prediction {pred.shape} differ in shape")
    kept = np.where(confidence >= threshold, pred, np.nan)
    m = disparity_metrics(kept, gt, mask)
    return {"threshold": float(threshold), "coverage": m["coverage"], "epe": m["epe"], "bad2": m["bad2"]}


def temporal_epe(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                 masks: Optional[Sequence[Optional[np.ndarray]]] = None) -> float:
    """TEPE: mean over consecutive pairs of the mean ``|(p_t - p_{t-1}) - (g_t - g_{t-1})|`` (px).

    Per pixel location (no motion compensation: it measures flicker against the true change). A pixel
    counts in a pair when the prediction and the GT are finite in both frames (and ``masks[t]`` and
    ``masks[t-1]`` hold). Pairs with no such pixel are skipped; NaN when no pair is left.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"{len(masks)} masks for {len(preds)} frames")
    per_pair = []
    for t in range(1, len(preds)):
        p0, p1, g0, g1 = preds[t - 1], preds[t], gts[t - 1], gts[t]
        for a in (p0, p1, g1):
            _check(a, g0)
        ok = np.isfinite(p0) & np.isfinite(p1) & np.isfinite(g0) & np.isfinite(g1)
        if masks is not None:
            for m in (masks[t - 1], masks[t]):
                if m is not None:
                    ok &= m.astype(bool)
        if ok.any():
            err = np.abs((p1[ok].astype(np.float64) - p0[ok]) - (g1[ok].astype(np.float64) - g0[ok]))
            per_pair.append(float(err.mean()))
    return float(np.mean(per_pair)) if per_pair else float("nan")


__all__ = ["coverage_at_confidence", "depth_abs_rel", "disparity_metrics", "temporal_epe"]
