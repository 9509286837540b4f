"""Reconstruction metrics against a reference cloud, as in the standard MVS benchmarks.

* **accuracy**: distance from each reconstructed point to its nearest reference point (how close what we
  built is to the truth) — mean and median; **precision** at ``threshold``: the fraction of reconstructed
  points within ``threshold`` of the reference;
* **completeness**: distance from each reference point to its nearest reconstructed point (how much of
  the truth we covered) — mean and median; **recall** at ``threshold``: the fraction of reference points
  within ``threshold`` of the reconstruction;
* **F-score** = 2 P R / (P + R) (Tanks and Temples, ETH3D; DTU reports accuracy / completeness).

Both clouds may first be down-sampled to a common voxel grid (``voxel``) so that the point density of
either side does not weight the averages. Nearest neighbours use open3d's KD-tree
(``PointCloud.compute_point_cloud_distance``).
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np

ArrayOrCloud = Union[np.ndarray, "object"]


def _as_cloud(points: ArrayOrCloud):
    import open3d as o3d
    if isinstance(points, o3d.geometry.PointCloud):
        return points
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(pts)
    return pcd


def nearest_distances(source: ArrayOrCloud, target: ArrayOrCloud) -> np.ndarray:
    """For every point of ``source``, the distance to its nearest point in ``target`` (inf when empty)."""
    s, t = _as_cloud(source), _as_cloud(target)
    if len(s.points) == 0:
        return np.zeros(0)
    if len(t.points) == 0:
        return np.full(len(s.points), np.inf)
    return np.asarray(s.compute_point_cloud_distance(t))


def reconstruction_metrics(pred: ArrayOrCloud, gt: ArrayOrCloud, threshold: float = 0.05,
                           voxel: Optional[float] = None) -> Dict[str, float]:
    """Accuracy / completeness (mean, median, metres), precision / recall / F-score at ``threshold`` (m).

    ``pred`` and ``gt`` are (N, 3) arrays or open3d point clouds in the same frame and unit.
    ``voxel`` > 0 down-samples both to that grid first. Empty inputs give precision / recall 0 and
    infinite distances (never an exception).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    p, g = _as_cloud(pred), _as_cloud(gt)
    if voxel:
        p = p.voxel_down_sample(voxel) if len(p.points) else p
        g = g.voxel_down_sample(voxel) if len(g.points) else g
    d_acc = nearest_distances(p, g)     # pred -> gt
    d_comp = nearest_distances(g, p)    # gt -> pred
    precision = float(np.mean(d_acc < threshold)) if d_acc.size else 0.0
    recall = float(np.mean(d_comp < threshold)) if d_comp.size else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    def _stat(d, f):
        return float(f(d)) if d.size else float("inf")
    return {
        "threshold": float(threshold),
        "accuracy_mean": _stat(d_acc, np.mean),
        "accuracy_median": _stat(d_acc, np.median),
        "completeness_mean": _stat(d_comp, np.mean),
        "completeness_median": _stat(d_comp, np.median),
        "precision": precision,
        "recall": recall,
        "fscore": float(fscore),
        "n_pred": int(len(p.points)),
        "n_gt": int(len(g.points)),
    }


def format_metrics(rows: Dict[str, Dict[str, float]]) -> str:
    """A small text table: one row per named result."""
    w = max([24] + [len(n) for n in rows])
    head = f"{'':{w}s} {'acc mean':>9s} {'acc med':>8s} {'comp mean':>9s} {'comp med':>8s} {'prec':>6s} " \
           f"{'recall':>6s} {'F':>6s} {'points':>8s}"
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:{w}s} {m['accuracy_mean']:9.4f} {m['accuracy_median']:8.4f} {m['completeness_mean']:9.4f} "
                     f"{m['completeness_median']:8.4f} {m['precision']:6.3f} {m['recall']:6.3f} {m['fscore']:6.3f} "
                     f"{m['n_pred']:8d}")
    return "\n".join(lines)
