"""Stereo: the estimator interface, disparity <-> depth, and the pipeline that carries temporal state.

A stereo estimator takes one rectified :class:`~mvs_depth_ros.core.frame.StereoFrame` and the state its
previous call returned, and gives a :class:`StereoResult`: left disparity (pixels, float32, NaN invalid),
depth (metres along the optical axis, float32, NaN invalid), confidence in [0, 1] and the state to carry.
As for the video estimators, state is a value passed in and out, so a node can reset it (a jump in the
pose source, a bag loop) or keep several streams apart.

Depth follows the rectified-stereo relation ``Z = fx * B / (d + doffs)``; ``doffs`` (the difference of
the two principal points' x, in pixels) is 0 for an ordinary rectified pair and non-zero for Middlebury.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from .frame import DepthResult, StereoFrame

log = logging.getLogger(__name__)


def disparity_to_depth(disparity: np.ndarray, fx: float, baseline: float, doffs: float = 0.0) -> np.ndarray:
    """Depth (H, W) float32 metres ``fx * baseline / (d + doffs)``; NaN where ``d + doffs <= 0`` or NaN.

    ``baseline`` in metres, ``fx`` and ``disparity`` in pixels.
    """
    if not (fx > 0 and baseline > 0):
        raise ValueError(f"need fx > 0 and baseline > 0, got {fx}, {baseline}")
    d = np.asarray(disparity, dtype=np.float32) + np.float32(doffs)
    out = np.full(d.shape, np.nan, np.float32)
    ok = np.isfinite(d) & (d > 0)
    out[ok] = np.float32(fx * baseline) / d[ok]
    return out


def depth_to_disparity(depth: np.ndarray, fx: float, baseline: float, doffs: float = 0.0) -> np.ndarray:
    """Disparity (H, W) float32 pixels ``fx * baseline / Z - doffs``; NaN where depth is not finite and > 0."""
    if not (fx > 0 and baseline > 0):
        raise ValueError(f"need fx > 0 and baseline > 0, got {fx}, {baseline}")
    z = np.asarray(depth, dtype=np.float32)
    out = np.full(z.shape, np.nan, np.float32)
    ok = np.isfinite(z) & (z > 0)
    out[ok] = np.float32(fx * baseline) / z[ok] - np.float32(doffs)
    return out


def frame_doffs(frame: StereoFrame) -> float:
    """The pair's ``doffs`` (pixels)."""
    return float(frame.doffs)


@dataclass
class StereoResult:
    """What every stereo estimator returns (all images (H, W), aligned with the left image).

    ``disparity``: float32 pixels, NaN invalid. ``depth``: float32 metres, NaN invalid.
    ``confidence``: float32 in [0, 1] (0 where invalid). ``K``: intrinsics of the left image.
    ``baseline``: metres. ``state``: what to pass to the next call. ``info``: diagnostics only.
    """

    disparity: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    K: np.ndarray
    baseline: float
    state: Any = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("disparity", "depth", "confidence"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2:
                raise ValueError(f"StereoResult.{name} must be a 2-D float32 array, got "
                                 f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
        if not (self.disparity.shape == self.depth.shape == self.confidence.shape):
            raise ValueError(f"disparity {self.disparity.shape}, depth {self.depth.shape} and confidence "
                             f"{self.confidence.shape} differ in shape")

    def as_depth_result(self) -> DepthResult:
        """The depth view of this result (what depth consumers such as the ROS depth publisher take)."""
        return DepthResult(depth=self.depth, confidence=self.confidence, K=self.K, state=self.state,
                           info=dict(self.info, baseline=self.baseline))

    def filtered_disparity(self, min_confidence: float) -> np.ndarray:
        """Disparity with pixels below ``min_confidence`` set to NaN (a new array)."""
        out = self.disparity.copy()
        out[~(self.confidence >= min_confidence)] = np.nan
        return out


class StereoEstimator(abc.ABC):
    """Base class of stereo backends: subclasses implement :meth:`estimate`."""

    #: registry name, e.g. ``"sgbm"``
    name: str = "stereo"
    #: True when results depend on the state carried from the previous frame
    recurrent: bool = False

    def initial_state(self) -> Any:
        """State for the first frame of a stream (``None`` for stateless estimators)."""
        return None

    @abc.abstractmethod
    def estimate(self, frame: StereoFrame, state: Any = None) -> StereoResult:
        """Disparity and depth of ``frame``'s left image."""

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class StereoPipelineConfig:
    """``max_gap_s``: reset the temporal state when consecutive stamps are further apart than this
    (or go backwards: a bag loop); 0 disables the check."""

    max_gap_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_gap_s < 0:
            raise ValueError(f"max_gap_s must be >= 0, got {self.max_gap_s}")


@dataclass
class StereoCounters:
    frames: int = 0
    resets: int = 0


class StereoPipeline:
    """Runs a stereo estimator over a stream of pairs, carrying (and resetting) its state."""

    def __init__(self, estimator: StereoEstimator, config: StereoPipelineConfig = StereoPipelineConfig()):
        self.estimator = estimator
        self.config = config
        self.state: Any = estimator.initial_state()
        self.counters = StereoCounters()
        self._last_stamp: Optional[int] = None

    def reset(self) -> None:
        """Forget the temporal state (a jump in the pose source, a new scene)."""
        self.state = self.estimator.initial_state()
        self._last_stamp = None
        self.counters.resets += 1

    def _stamp_breaks_stream(self, stamp: int) -> bool:
        if self._last_stamp is None or self.config.max_gap_s <= 0:
            return False
        dt = (stamp - self._last_stamp) * 1e-9
        return dt < 0 or dt > self.config.max_gap_s

    def process(self, frame: StereoFrame) -> StereoResult:
        """Estimate one pair; resets first when the stamp jumps backwards or by more than ``max_gap_s``."""
        reset = self._stamp_breaks_stream(int(frame.stamp))
        if reset:
            log.info("stereo stream break at %s (stamp %d after %d): resetting state",
                     frame.name, frame.stamp, self._last_stamp)
            self.reset()
        t0 = time.perf_counter()
        result = self.estimator.estimate(frame, self.state)
        result.info.setdefault("compute_ms", 1000.0 * (time.perf_counter() - t0))
        result.info["pipeline_reset"] = reset
        self.state = result.state
        self._last_stamp = int(frame.stamp)
        self.counters.frames += 1
        return result
