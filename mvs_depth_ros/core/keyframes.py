"""DeepVideoMVS' online keyframe buffer and measurement-frame selection.

The behaviour is DeepVideoMVS' ``KeyframeBuffer`` (test settings: buffer of 30 keyframes, a new keyframe
when the pose distance to the last one reaches 0.1, measurement frames chosen by a penalty around an
optimal translation of 0.15 with a x5 penalty for baselines that are too small, tracking declared lost
after 30 consecutive frames without a pose). It reproduces the official keyframe index files of the
HoloLens sample line for line (see ``test/test_keyframes.py``).
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional

import numpy as np

from .frame import Frame, is_valid_pose
from .geometry import pose_distance


@dataclass(frozen=True)
class KeyframeConfig:
    buffer_size: int = 30
    keyframe_pose_distance: float = 0.1
    optimal_t_measure: float = 0.15
    optimal_R_measure: float = 0.0
    small_baseline_penalty: float = 5.0
    tracking_lost_frames: int = 30

    def __post_init__(self) -> None:
        if self.buffer_size < 2:
            raise ValueError(f"buffer_size must be >= 2, got {self.buffer_size}")
        if self.keyframe_pose_distance < 0:
            raise ValueError(f"keyframe_pose_distance must be >= 0, got {self.keyframe_pose_distance}")
        if self.tracking_lost_frames < 0:
            raise ValueError(f"tracking_lost_frames must be >= 0, got {self.tracking_lost_frames}")


class KeyframeStatus(enum.IntEnum):
    """Outcome of offering a frame to the buffer (the numbers are DeepVideoMVS' return codes)."""

    FIRST = 0          # pose available, buffer was empty: stored, nothing to predict yet
    KEYFRAME = 1       # pose available, moved enough: stored, predict depth for it
    TOO_CLOSE = 2      # pose available, not enough motion since the last keyframe
    TRACKING_LOST = 3  # no pose for too long: buffer cleared, recurrent state must be reset
    STILL_LOST = 4     # still no pose, buffer already empty
    NO_POSE = 5        # no pose for this frame, not (yet) long enough to call tracking lost


class KeyframeBuffer:
    """Keeps the last ``buffer_size`` keyframes and picks measurement frames for the newest one."""

    def __init__(self, config: KeyframeConfig = KeyframeConfig()):
        self.config = config
        self._buffer: Deque[Frame] = deque(maxlen=config.buffer_size)
        self._lost_counter = 0

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def keyframes(self) -> List[Frame]:
        return list(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()
        self._lost_counter = 0

    def penalty(self, t_measure: float, R_measure: float) -> float:
        c = self.config
        r_pen = abs(R_measure - c.optimal_R_measure) ** 2
        t_diff = t_measure - c.optimal_t_measure
        t_pen = (c.small_baseline_penalty if t_diff < 0.0 else 1.0) * t_diff ** 2
        return r_pen + t_pen

    def offer(self, frame: Frame) -> KeyframeStatus:
        """Offer a frame; stores it when it becomes a keyframe."""
        if is_valid_pose(frame.T_world_cam):
            self._lost_counter = 0
            if not self._buffer:
                self._buffer.append(frame)
                return KeyframeStatus.FIRST
            combined, _, _ = pose_distance(frame.T_world_cam, self._buffer[-1].T_world_cam)
            if combined >= self.config.keyframe_pose_distance:
                self._buffer.append(frame)
                return KeyframeStatus.KEYFRAME
            return KeyframeStatus.TOO_CLOSE
        self._lost_counter += 1
        if self._lost_counter > self.config.tracking_lost_frames:
            if self._buffer:
                self._buffer.clear()
                return KeyframeStatus.TRACKING_LOST
            return KeyframeStatus.STILL_LOST
        return KeyframeStatus.NO_POSE

    def measurement_frames(self, n: int) -> List[Frame]:
        """The ``n`` buffered keyframes with the lowest penalty w.r.t. the newest keyframe.

        Returned in ascending penalty order (ties keep buffer order). Fewer than ``n`` while the buffer
        is short; empty when it holds a single frame.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(self._buffer) < 2:
            return []
        ref = self._buffer[-1]
        candidates = list(self._buffer)[:-1]
        penalties = np.array([
            self.penalty(t, r)
            for _, r, t in (pose_distance(ref.T_world_cam, f.T_world_cam) for f in candidates)
        ])
        order = np.argsort(penalties, kind="stable")[: min(n, len(candidates))]
        return [candidates[i] for i in order]
