"""Temporal stage for any stereo estimator: confidence-weighted recursive filtering of disparity.

Per frame:

1. the base estimator gives a measurement ``d_m`` with confidence ``c_m``;
2. the previous filtered disparity and its accumulated weight are carried into the current left camera:
   forward-splatted through the camera motion when both poses are known (``T_world_cam``; nearest pixel,
   z-buffered, one-pixel holes filled), unchanged when they are not (a static rig);
3. per pixel, with the prediction's weight decayed to ``w_p = decay * w_prev``:
   - both valid and consistent (``|d_m - d_p| <= max(outlier_px, outlier_rel * d_m)``):
     ``d = (w_p d_p + c_m d_m) / (w_p + c_m)``, ``w = min(w_p + c_m, max_weight)``;
   - both valid but inconsistent (something moved, an occlusion edge): the measurement restarts the pixel;
   - only the prediction: kept with weight ``fill_decay * w_p`` (``fill_missing``) until it drops below
     ``min_weight``;
   - only the measurement: taken as is;
4. the whole state is dropped (a reset) when the camera moved more than ``reset_translation`` metres or
   ``reset_rotation_deg`` degrees since the previous frame, when the image size or intrinsics change, or
   when more than ``reset_outlier_fraction`` of the overlapping pixels are inconsistent.

``max_weight`` bounds the memory (about ``max_weight`` frames), hence the lag after a change. The output
confidence is ``min(1, w)``: one fully confident measurement, or several weaker ones that agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import cv2
import numpy as np

from ...core.frame import StereoFrame, is_valid_pose
from ...core.geometry import relative_pose
from ...core.stereo import StereoEstimator, StereoResult, disparity_to_depth, frame_doffs


@dataclass(frozen=True)
class TemporalConfig:
    decay: float = 0.95
    max_weight: float = 8.0
    outlier_px: float = 1.0
    outlier_rel: float = 0.05
    fill_missing: bool = False
    fill_decay: float = 0.5
    min_weight: float = 0.1
    use_poses: bool = True
    reset_translation: float = 0.5
    reset_rotation_deg: float = 20.0
    reset_outlier_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.decay <= 1 or not 0 <= self.fill_decay <= 1:
            raise ValueError(f"decay must be in (0, 1] and fill_decay in [0, 1], got {self.decay}, {self.fill_decay}")
        if self.max_weight <= 0 or self.min_weight < 0:
            raise ValueError(f"need max_weight > 0 and min_weight >= 0, got {self.max_weight}, {self.min_weight}")
        if self.outlier_px < 0 or self.outlier_rel < 0:
            raise ValueError(f"outlier thresholds must be >= 0, got {self.outlier_px}, {self.outlier_rel}")
        if self.reset_translation <= 0 or self.reset_rotation_deg <= 0 or not 0 < self.reset_outlier_fraction <= 1:
            raise ValueError("reset thresholds must be > 0 (outlier fraction in (0, 1])")


@dataclass
class TemporalState:
    """What the temporal stage carries: the filtered left disparity, its weights and the camera it lives in."""

    disparity: np.ndarray             # (H, W) float32, NaN invalid
    weight: np.ndarray                # (H, W) float32 >= 0
    K: np.ndarray                     # (3, 3)
    baseline: float
    doffs: float
    T_world_cam: Optional[np.ndarray]  # (4, 4) or None
    base_state: Any = None


def forward_warp_disparity(disparity: np.ndarray, weight: np.ndarray, K: np.ndarray, baseline: float,
                           T_cur_prev: np.ndarray, doffs: float = 0.0, fill_holes: bool = True,
                           subpixel: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Carry a left disparity map (and a per-pixel weight) from the previous camera into the current one.

    Args:
        disparity: (H, W) float32 previous disparity, NaN invalid. weight: (H, W) float32.
        K: (3, 3) left intrinsics (same for both frames). baseline: metres.
        T_cur_prev: (4, 4) maps points of the previous left camera into the current left camera.
    Returns:
        disparity (H, W) float32 in the current camera (NaN where nothing lands), weight (H, W) float32.

    Each valid pixel is back-projected with its depth, moved, projected to the nearest pixel and its
    disparity recomputed from the new depth; the largest disparity (nearest surface) wins where several
    land on one pixel. ``fill_holes`` fills single empty pixels (the cracks of a forward splat) with the
    nearest neighbouring surface. ``subpixel`` then removes the rounding of the splat by sampling the
    previous map bilinearly where each pixel came from (:func:`_resample_subpixel`).
    """
    h, w = disparity.shape
    fxb = K[0, 0] * baseline
    M, k = _pixel_transfer(K, T_cur_prev)
    v, u = np.nonzero(np.isfinite(disparity) & (disparity + doffs > 0))
    s = (disparity[v, u] + np.float32(doffs)) / np.float32(fxb)          # inverse depth
    un, vn, sn = _transfer(u.astype(np.float32), v.astype(np.float32), s, M, k)
    out_d = np.full((h, w), np.nan, np.float32)
    out_w = np.zeros((h, w), np.float32)
    with np.errstate(invalid="ignore"):
        ok = (sn > 0) & (un > -0.5) & (un < w - 0.5) & (vn > -0.5) & (vn < h - 0.5)
    ui = np.rint(un[ok]).astype(np.int64)
    vi = np.rint(vn[ok]).astype(np.int64)
    dn = sn[ok] * np.float32(fxb) - np.float32(doffs)
    wv = weight[v[ok], u[ok]]
    lin = vi * w + ui
    order = np.lexsort((-dn, lin))                 # by pixel, then nearest (largest disparity) first
    first = np.unique(lin[order], return_index=True)[1]
    keep = order[first]
    out_d.ravel()[lin[keep]] = dn[keep]
    out_w.ravel()[lin[keep]] = wv[keep]
    if fill_holes:
        out_d, out_w = _fill_single_holes(out_d, out_w)
    if subpixel:
        out_d = _resample_subpixel(out_d, disparity, K, baseline, T_cur_prev, doffs)
    return out_d, out_w


def _pixel_transfer(K: np.ndarray, T_cur_prev: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``M = K R K^-1`` (3, 3) and ``k = K t`` (3,) of ``T_cur_prev = [R | t]`` (float32).

    A previous pixel ``(u, v)`` with inverse depth ``s`` maps to ``(a / c, b / c)`` with inverse depth
    ``s / c`` where ``(a, b, c) = M (u, v, 1) + k s`` (:func:`_transfer`)."""
    R, t = T_cur_prev[:3, :3], T_cur_prev[:3, 3]
    return (K @ R @ np.linalg.inv(K)).astype(np.float32), (K @ t).astype(np.float32)


def _transfer(u: np.ndarray, v: np.ndarray, s: np.ndarray, M: np.ndarray, k: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels ``(u, v)`` with inverse depth ``s`` (arrays of one shape) seen from the other camera."""
    a = M[0, 0] * u + M[0, 1] * v + M[0, 2] + k[0] * s
    b = M[1, 0] * u + M[1, 1] * v + M[1, 2] + k[1] * s
    c = M[2, 0] * u + M[2, 1] * v + M[2, 2] + k[2] * s
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / c, b / c, s / c


def _resample_subpixel(splat: np.ndarray, prev: np.ndarray, K: np.ndarray, baseline: float,
                       T_cur_prev: np.ndarray, doffs: float, tol_px: float = 0.5) -> np.ndarray:
    """Remove the rounding of a nearest-pixel splat: each current pixel, placed in 3-D with its splatted
    disparity, is projected into the previous camera, the previous disparity is sampled there bilinearly
    and moved back into the current camera. Where the bilinear sample mixes surfaces (it disagrees with
    the splat by more than ``tol_px``) or is missing, the splatted value stays."""
    h, w = splat.shape
    fxb, off = np.float32(K[0, 0] * baseline), np.float32(doffs)
    M_back, k_back = _pixel_transfer(K, np.linalg.inv(T_cur_prev))
    M, k = _pixel_transfer(K, T_cur_prev)
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    up, vp, _ = _transfer(u, v, (splat + off) / fxb, M_back, k_back)
    d_prev = cv2.remap(prev, np.nan_to_num(up, nan=-1e4), np.nan_to_num(vp, nan=-1e4), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    _, _, s_cur = _transfer(up, vp, (d_prev + off) / fxb, M, k)
    d_cur = s_cur * fxb - off
    with np.errstate(invalid="ignore"):
        good = np.isfinite(d_cur) & (np.abs(d_cur - splat) <= tol_px)
    return np.where(good, d_cur, splat).astype(np.float32)


def _fill_single_holes(disp: np.ndarray, weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Fill empty pixels that have >= 5 filled 8-neighbours with the neighbours' largest disparity."""
    empty = ~np.isfinite(disp)
    if not empty.any():
        return disp, weight
    filled = (~empty).astype(np.float32)
    n_nb = cv2.filter2D(filled, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT)
    kernel = np.ones((3, 3), np.uint8)
    d_max = cv2.dilate(np.where(empty, -np.inf, disp).astype(np.float32), kernel)
    w_max = cv2.dilate(weight, kernel)
    hole = empty & (n_nb >= 5) & np.isfinite(d_max)
    disp = disp.copy()
    weight = weight.copy()
    disp[hole] = d_max[hole]
    weight[hole] = w_max[hole]
    return disp, weight


def fuse(pred_d: np.ndarray, pred_w: np.ndarray, meas_d: np.ndarray, meas_c: np.ndarray,
         config: TemporalConfig) -> Tuple[np.ndarray, np.ndarray, float]:
    """One recursive-filter step (see the module docstring).

    ``pred_w`` is the already-decayed prediction weight. Returns the fused disparity (H, W) float32 (NaN
    invalid), its weight (H, W) float32 and the fraction of overlapping pixels that were inconsistent.
    """
    c = config
    has_p = np.isfinite(pred_d) & (pred_w > 0)
    has_m = np.isfinite(meas_d)
    both = has_p & has_m
    tol = np.maximum(c.outlier_px, c.outlier_rel * np.nan_to_num(meas_d))
    agree = both & (np.abs(np.nan_to_num(meas_d) - np.nan_to_num(pred_d)) <= tol)
    cm = np.where(has_m, meas_c, 0.0).astype(np.float32)
    wp = np.where(agree, pred_w, 0.0).astype(np.float32)
    total = wp + cm
    with np.errstate(invalid="ignore", divide="ignore"):
        fused = (wp * np.nan_to_num(pred_d) + cm * np.nan_to_num(meas_d)) / total
    out_d = np.where(has_m, np.where(total > 0, fused, meas_d), np.nan).astype(np.float32)
    out_w = np.where(has_m, np.minimum(total, c.max_weight), 0.0).astype(np.float32)
    if c.fill_missing:
        carry = has_p & ~has_m & (pred_w * c.fill_decay >= c.min_weight)
        out_d[carry] = pred_d[carry]
        out_w[carry] = pred_w[carry] * c.fill_decay
    n_both = int(both.sum())
    outlier_fraction = float((both & ~agree).sum() / n_both) if n_both else 0.0
    return out_d, out_w, outlier_fraction


def _rotation_deg(T: np.ndarray) -> float:
    cos = (np.trace(T[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


class TemporalStereo(StereoEstimator):
    """Wraps a per-frame stereo estimator with the recursive temporal filter (see the module docstring)."""

    recurrent = True

    def __init__(self, base: StereoEstimator, config: TemporalConfig = TemporalConfig()):
        self.base = base
        self.config = config
        self.name = f"{base.name}+temporal"

    def describe(self) -> str:
        c = self.config
        return f"{self.base.describe()} + temporal filter (max_weight {c.max_weight:g}, decay {c.decay:g})"

    def initial_state(self) -> Optional[TemporalState]:
        return None

    def _prediction(self, frame: StereoFrame, state: Optional[TemporalState]
                    ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
        """Previous estimate in the current camera, or ``(None, None, why)`` when it must be dropped."""
        c = self.config
        if state is None:
            return None, None, "no state"
        if (state.disparity.shape != frame.left.shape[:2] or not np.allclose(state.K, frame.K)
                or abs(state.baseline - frame.baseline) > 1e-9 or state.doffs != frame_doffs(frame)):
            return None, None, "camera changed"
        wp = state.weight * np.float32(c.decay)
        if c.use_poses and is_valid_pose(state.T_world_cam) and is_valid_pose(frame.T_world_cam):
            T_cur_prev = relative_pose(frame.T_world_cam, state.T_world_cam)
            if (np.linalg.norm(T_cur_prev[:3, 3]) > c.reset_translation
                    or _rotation_deg(T_cur_prev) > c.reset_rotation_deg):
                return None, None, "large motion"
            d, w = forward_warp_disparity(state.disparity, wp, frame.K, frame.baseline, T_cur_prev,
                                          state.doffs)
            return d, w, "warped"
        return state.disparity, wp, "static"

    def estimate(self, frame: StereoFrame, state: Optional[TemporalState] = None) -> StereoResult:
        base_state = state.base_state if state is not None else self.base.initial_state()
        meas = self.base.estimate(frame, base_state)
        pred_d, pred_w, how = self._prediction(frame, state)
        reset = pred_d is None
        if reset:
            d, w, outliers = meas.disparity, meas.confidence.copy(), 0.0
        else:
            d, w, outliers = fuse(pred_d, pred_w, meas.disparity, meas.confidence, self.config)
            if outliers > self.config.reset_outlier_fraction:
                d, w, reset, how = meas.disparity, meas.confidence.copy(), True, "scene changed"
        doffs = frame_doffs(frame)
        new_state = TemporalState(disparity=d, weight=w, K=frame.K.copy(), baseline=frame.baseline, doffs=doffs,
                                  T_world_cam=None if frame.T_world_cam is None else np.array(frame.T_world_cam),
                                  base_state=meas.state)
        info = dict(meas.info, temporal=how, temporal_reset=reset, outlier_fraction=outliers)
        conf = np.clip(w, 0.0, 1.0).astype(np.float32)
        conf[~np.isfinite(d)] = 0.0
        return StereoResult(disparity=d, depth=disparity_to_depth(d, frame.K[0, 0], frame.baseline, doffs),
                            confidence=conf, K=frame.K, baseline=frame.baseline, state=new_state, info=info)


__all__ = ["TemporalConfig", "TemporalState", "TemporalStereo", "forward_warp_disparity", "fuse"]
