"""Classical stereo: OpenCV semi-global block matching with a left-right check and a confidence map.

* disparity: ``cv2.StereoSGBM`` (sub-pixel, 1/16 px, parabola fit on the aggregated cost);
* left-right consistency: the right image's disparity comes from the same matcher run on the
  horizontally flipped pair (``flip(right)`` as the left image, ``flip(left)`` as the right one);
  a left pixel whose match disagrees by more than ``lr_max_diff`` pixels is invalid (occlusions,
  mismatches);
* confidence in [0, 1]: the product of
  - *uniqueness*: SGBM is re-run with stricter ``uniquenessRatio`` levels; a pixel that still survives
    a ratio ``r`` has its best aggregated cost at least ``r`` % below the second best. The score is the
    fraction of levels survived, ``(1 + passed) / (1 + len(levels))``;
  - *left-right agreement*: ``1 - |d_L - d_R| / (lr_max_diff + 1)`` (1 for a perfect round trip;
    0.5 where the match falls in the right image's border band that the matcher cannot fill);
* invalid pixels are NaN in disparity and depth and 0 in confidence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from ...core.frame import StereoFrame
from ...core.stereo import StereoEstimator, StereoResult, disparity_to_depth, frame_doffs

log = logging.getLogger(__name__)

_MODES = {
    "sgbm": cv2.STEREO_SGBM_MODE_SGBM,
    "hh": cv2.STEREO_SGBM_MODE_HH,
    "sgbm_3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    "hh4": cv2.STEREO_SGBM_MODE_HH4,
}


@dataclass(frozen=True)
class SGBMConfig:
    """``cv2.StereoSGBM`` parameters plus the post-processing of this backend.

    ``p1``/``p2``: SGM smoothness penalties; 0 means OpenCV's recommended ``8 * channels * block_size**2``
    and ``32 * channels * block_size**2``. ``uniqueness_ratio``: OpenCV's own filter (per cent, applied
    to the output). ``uniqueness_levels``: stricter ratios measured for the confidence (each costs one
    more SGBM run; empty to skip). ``lr_check``/``lr_max_diff``: left-right consistency (pixels).
    """

    min_disparity: int = 0
    num_disparities: int = 64
    block_size: int = 5
    p1: int = 0
    p2: int = 0
    disp12_max_diff: int = -1
    pre_filter_cap: int = 63
    uniqueness_ratio: int = 5
    uniqueness_levels: Tuple[int, ...] = (10, 25)
    speckle_window_size: int = 100
    speckle_range: int = 2
    mode: str = "sgbm"
    lr_check: bool = True
    lr_max_diff: float = 1.0
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.num_disparities <= 0 or self.num_disparities % 16:
            raise ValueError(f"num_disparities must be a positive multiple of 16, got {self.num_disparities}")
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f"block_size must be odd and >= 1, got {self.block_size}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        if self.p1 < 0 or self.p2 < 0 or (self.p1 and self.p2 and self.p2 <= self.p1):
            raise ValueError(f"need 0 <= p1 < p2 (0 = default), got p1={self.p1}, p2={self.p2}")
        if not 0 <= self.uniqueness_ratio <= 100 or any(not 0 < r <= 100 for r in self.uniqueness_levels):
            raise ValueError(f"uniqueness ratios are per cent in [0, 100], got {self.uniqueness_ratio}, "
                             f"{self.uniqueness_levels}")
        if self.lr_max_diff < 0:
            raise ValueError(f"lr_max_diff must be >= 0, got {self.lr_max_diff}")
        object.__setattr__(self, "uniqueness_levels", tuple(sorted(int(r) for r in self.uniqueness_levels)))

    def matcher(self, channels: int, uniqueness_ratio: int) -> "cv2.StereoSGBM":
        bs2 = self.block_size ** 2
        return cv2.StereoSGBM_create(
            minDisparity=self.min_disparity, numDisparities=self.num_disparities, blockSize=self.block_size,
            P1=self.p1 or 8 * channels * bs2, P2=self.p2 or 32 * channels * bs2,
            disp12MaxDiff=self.disp12_max_diff, preFilterCap=self.pre_filter_cap,
            uniquenessRatio=uniqueness_ratio, speckleWindowSize=self.speckle_window_size,
            speckleRange=self.speckle_range, mode=_MODES[self.mode])


def _to_float_disparity(raw: np.ndarray, min_disparity: int) -> np.ndarray:
    """OpenCV's fixed-point (x16) int16 disparity to float32 pixels, NaN where invalid."""
    d = raw.astype(np.float32) / 16.0
    d[raw < min_disparity * 16] = np.nan
    return d


def left_right_difference(disp_left: np.ndarray, disp_right: np.ndarray) -> np.ndarray:
    """``|d_L(u) - d_R(u - d_L(u))|`` (H, W) float32, nearest-pixel lookup; NaN where either is missing.

    ``disp_right`` is the right image's disparity (its pixel ``u_r`` matches left ``u_r + d_R``).
    """
    if disp_left.shape != disp_right.shape:
        raise ValueError(f"left {disp_left.shape} and right {disp_right.shape} disparities differ in shape")
    h, w = disp_left.shape
    u_r = np.arange(w, dtype=np.float32)[None, :] - disp_left
    ok = np.isfinite(u_r)
    idx = np.clip(np.rint(np.where(ok, u_r, -1)), -1, w).astype(np.int64)
    inside = ok & (idx >= 0) & (idx < w)
    dr = np.take_along_axis(disp_right, np.clip(idx, 0, w - 1), axis=1)
    out = np.abs(disp_left - dr)
    out[~inside] = np.nan
    return out


class SGBMStereo(StereoEstimator):
    """OpenCV SGBM with left-right check, uniqueness-based confidence and NaN for invalid pixels."""

    name = "sgbm"
    recurrent = False

    def __init__(self, config: SGBMConfig = SGBMConfig()):
        self.config = config

    def describe(self) -> str:
        c = self.config
        return (f"sgbm ({c.mode}, {c.num_disparities} disparities from {c.min_disparity}, block {c.block_size}, "
                f"lr_check={c.lr_check}, uniqueness levels {list(c.uniqueness_levels)})")

    def _prepare(self, img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if self.config.grayscale else img

    def compute(self, left: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
        """Disparity (H, W) float32 (NaN invalid) and confidence (H, W) float32 of ``left``.

        ``left``/``right``: rectified (H, W, 3) uint8 RGB images.
        """
        c = self.config
        L, R = self._prepare(left), self._prepare(right)
        ch = 1 if L.ndim == 2 else L.shape[2]
        disp = _to_float_disparity(c.matcher(ch, c.uniqueness_ratio).compute(L, R), c.min_disparity)
        valid = np.isfinite(disp)
        n_raw = int(valid.sum())

        unique_score = np.ones_like(disp)
        if c.uniqueness_levels:
            passed = np.zeros(disp.shape, np.float32)
            for r in c.uniqueness_levels:
                passed += np.isfinite(_to_float_disparity(c.matcher(ch, r).compute(L, R), c.min_disparity))
            unique_score = (1.0 + passed) / (1.0 + len(c.uniqueness_levels))

        lr_score = np.ones_like(disp)
        if c.lr_check:
            flipped = c.matcher(ch, c.uniqueness_ratio).compute(np.ascontiguousarray(R[:, ::-1]),
                                                                np.ascontiguousarray(L[:, ::-1]))
            disp_right = _to_float_disparity(flipped, c.min_disparity)[:, ::-1]
            diff = left_right_difference(disp, disp_right)
            # The matcher leaves the right image's last min+num disparities columns empty (its search
            # range leaves the left image there): matches landing there cannot be verified, so they are
            # kept with half the score instead of being thrown away.
            u_r = np.rint(np.arange(disp.shape[1], dtype=np.float32)[None, :] - disp)
            unverifiable = np.isfinite(u_r) & (u_r >= disp.shape[1] - (c.min_disparity + c.num_disparities))
            valid &= unverifiable | (diff <= c.lr_max_diff)
            lr_score = np.where(unverifiable, 0.5, 1.0 - np.nan_to_num(diff, nan=0.0) / (c.lr_max_diff + 1.0))

        disp[~valid] = np.nan
        conf = np.where(valid, unique_score * lr_score, 0.0).astype(np.float32)
        info = {"valid_raw": n_raw / disp.size, "valid": float(valid.mean())}
        return disp, np.clip(conf, 0.0, 1.0), info

    def estimate(self, frame: StereoFrame, state: Any = None) -> StereoResult:
        disp, conf, info = self.compute(frame.left, frame.right)
        depth = disparity_to_depth(disp, frame.K[0, 0], frame.baseline, frame_doffs(frame))
        return StereoResult(disparity=disp, depth=depth, confidence=conf, K=frame.K, baseline=frame.baseline,
                            state=None, info=info)


def build(checkpoint: Optional[str] = None, device: str = "auto", **options: Any) -> StereoEstimator:
    """The classical backend: ``build(num_disparities=32, temporal=True, ...)``.

    Same calling convention as the registry's builders. ``checkpoint`` must be None (nothing to load);
    ``device`` is validated but OpenCV's SGBM always runs on the CPU. Options are :class:`SGBMConfig`
    fields; ``temporal`` (bool, default False) wraps it in the temporal stage, whose
    :class:`~mvs_depth_ros.models.stereo.temporal.TemporalConfig` fields are passed as
    ``temporal_<field>`` (e.g. ``temporal_max_weight=4``). Unknown options are a clear error.
    """
    from ..base import resolve_device
    from .temporal import TemporalConfig, TemporalStereo

    if checkpoint:
        raise ValueError(f"the classical SGBM backend has no weights; got checkpoint={checkpoint!r}")
    if resolve_device(device).type != "cpu":
        log.info("sgbm: device=%s requested; OpenCV StereoSGBM runs on the CPU", device)

    temporal = bool(options.pop("temporal", False))
    t_opts = {k[len("temporal_"):]: options.pop(k) for k in list(options) if k.startswith("temporal_")}
    sgbm_fields = set(SGBMConfig.__dataclass_fields__)
    unknown = set(options) - sgbm_fields
    if unknown:
        raise ValueError(f"unknown SGBM option(s) {sorted(unknown)}; known: {sorted(sgbm_fields)} "
                         f"plus temporal and temporal_<{'|'.join(TemporalConfig.__dataclass_fields__)}>")
    if "uniqueness_levels" in options:
        options["uniqueness_levels"] = tuple(options["uniqueness_levels"])
    base = SGBMStereo(SGBMConfig(**options))
    if not temporal:
        if t_opts:
            raise ValueError(f"temporal_* options {sorted(t_opts)} given without temporal=True")
        return base
    unknown = set(t_opts) - set(TemporalConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown temporal option(s) {sorted(unknown)}; known: "
                         f"{sorted(TemporalConfig.__dataclass_fields__)}")
    return TemporalStereo(base, TemporalConfig(**t_opts))


__all__ = ["SGBMConfig", "SGBMStereo", "build", "left_right_difference"]
