"""Small, vectorised geometry helpers shared by the core, the models and the ROS layer.

Warping of tensors lives with the models (kornia / ``grid_sample``); this module is numpy-first and
cheap: pose distances, back-projection, inverse-depth plane sets.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import transforms3d.quaternions as tq


def pose_distance(T_ref: np.ndarray, T_meas: np.ndarray) -> Tuple[float, float, float]:
    """DeepVideoMVS' pose distance between two camera-to-world poses.

    Returns ``(combined, R_measure, t_measure)`` where ``R_measure = sqrt(2 (1 - min(3, trace(R)) / 3))``
    of the relative rotation, ``t_measure`` the norm of the relative translation (metres) and
    ``combined = sqrt(R_measure^2 + t_measure^2)``.
    """
    rel = np.linalg.inv(T_ref) @ T_meas
    trace = float(np.trace(rel[:3, :3]))
    r = float(np.sqrt(max(0.0, 2.0 * (1.0 - min(3.0, trace) / 3.0))))
    t = float(np.linalg.norm(rel[:3, 3]))
    return float(np.sqrt(r * r + t * t)), r, t


def inverse_depth_planes(min_depth: float, max_depth: float, n: int) -> np.ndarray:
    """``n`` depths uniform in inverse depth, from ``max_depth`` (index 0) to ``min_depth`` (index n-1).

    Same order as DeepVideoMVS' ``depth_hypotheses``: ``1 / (1/max + i (1/min - 1/max) / (n-1))``.
    """
    if not (0 < min_depth < max_depth) or n < 2:
        raise ValueError(f"need 0 < min_depth < max_depth and n >= 2, got {min_depth}, {max_depth}, {n}")
    i = np.arange(n, dtype=np.float64)
    return 1.0 / (1.0 / max_depth + i * (1.0 / min_depth - 1.0 / max_depth) / (n - 1))


def pixel_grid(height: int, width: int) -> np.ndarray:
    """Homogeneous pixel centres ``(3, H*W)`` in row-major order (u = column, v = row)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u.ravel(), v.ravel(), np.ones(height * width)], axis=0)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Points ``(H, W, 3)`` float32 in the camera optical frame; NaN depth gives NaN points."""
    h, w = depth.shape
    out = np.empty((h, w, 3), dtype=np.float32)
    backproject_into(depth, K, out)
    return out


def normalized_pixel_coordinates(K: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """``x/z`` per column (W,) and ``y/z`` per row (H,), float32, of a pinhole camera without skew."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = (np.arange(width, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
    v = (np.arange(height, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
    return u, v


def backproject_into(depth: np.ndarray, K: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`backproject` written into the first three channels of ``out`` (H, W, >=3) float32, which may be
    a strided view (e.g. the x, y, z fields of an interleaved point buffer): no temporary (H, W, 3) array."""
    h, w = depth.shape
    u, v = normalized_pixel_coordinates(K, h, w)
    z = depth.astype(np.float32, copy=False)
    np.multiply(z, u[None, :], out=out[..., 0])
    np.multiply(z, v[:, None], out=out[..., 1])
    out[..., 2] = z
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to ``(..., 3)`` points."""
    return points @ T[:3, :3].T + T[:3, 3]


def relative_pose(T_world_a: np.ndarray, T_world_b: np.ndarray) -> np.ndarray:
    """``T_a_b``: maps points in camera b to camera a."""
    return np.linalg.inv(T_world_a) @ T_world_b


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (w, x, y, z), shortest arc, ``a`` in [0, 1]."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly parallel: normalised lerp is exact to ~1e-7
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(min(1.0, d))
    return (np.sin((1.0 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)


def interpolate_pose(Ta: np.ndarray, Tb: np.ndarray, a: float) -> np.ndarray:
    """Rigid transform a fraction ``a`` of the way from ``Ta`` to ``Tb`` (slerp rotation, lerp translation)."""
    T = np.eye(4)
    T[:3, :3] = tq.quat2mat(slerp(tq.mat2quat(Ta[:3, :3]), tq.mat2quat(Tb[:3, :3]), a))
    T[:3, 3] = (1.0 - a) * Ta[:3, 3] + a * Tb[:3, 3]
    return T
