"""Camera poses from a pose topic, matched to image stamps (``pose_source: pose | odometry``).

:class:`PoseBuffer` keeps the last poses (``geometry_msgs/PoseStamped`` or ``nav_msgs/Odometry``) sorted
by stamp and returns the one nearest an image stamp when it is within ``tolerance``; a lookup may wait
for a pose that has not arrived yet. The pose is taken as the camera optical frame's pose in the world
frame (camera-to-world, OpenCV axes).
"""
from __future__ import annotations

import bisect
import threading
import time
from typing import List, Optional, Tuple

import numpy as np


class SyncError(LookupError):
    """No pose within tolerance of the requested stamp; the message says what the buffer holds."""


class PoseBuffer:
    """Thread-safe, stamp-sorted ``(stamp_ns, T_world_cam)`` store with nearest-stamp matching."""

    def __init__(self, tolerance_s: float = 0.02, max_size: int = 1000):
        if tolerance_s < 0 or max_size < 1:
            raise ValueError(f"need tolerance_s >= 0 and max_size >= 1, got {tolerance_s}, {max_size}")
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.max_size = int(max_size)
        self._stamps: List[int] = []
        self._poses: List[np.ndarray] = []
        self._cv = threading.Condition()

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, T: np.ndarray) -> None:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError("pose is not a finite 4x4 matrix")
        with self._cv:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._poses[i] = T
            else:
                self._stamps.insert(i, int(stamp_ns))
                self._poses.insert(i, T)
            if len(self._stamps) > self.max_size:
                del self._stamps[0], self._poses[0]
            self._cv.notify_all()

    def clear(self) -> None:
        with self._cv:
            self._stamps.clear()
            self._poses.clear()

    def _match(self, stamp_ns: int) -> Tuple[Optional[np.ndarray], str, bool]:
        """(pose or None, reason, may_still_arrive)."""
        s = self._stamps
        if not s:
            return None, "no pose received yet", True
        i = bisect.bisect_left(s, stamp_ns)
        best = min((j for j in (i - 1, i) if 0 <= j < len(s)), key=lambda j: abs(s[j] - stamp_ns))
        d = abs(s[best] - stamp_ns)
        if d <= self.tolerance_ns:
            return self._poses[best], "", False
        later = stamp_ns > s[-1]
        return None, (f"nearest pose is {d / 1e9:.3f}s from the image stamp {stamp_ns / 1e9:.6f}s "
                      f"(tolerance {self.tolerance_ns / 1e9:.3f}s; poses {s[0] / 1e9:.6f}s .. {s[-1] / 1e9:.6f}s)"), later

    def lookup(self, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """The pose nearest ``stamp_ns`` within tolerance, waiting up to ``timeout_s`` for a later pose."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while True:
                T, why, may_arrive = self._match(int(stamp_ns))
                if T is not None:
                    # a later pose might still be nearer: only wait while none after the stamp exists
                    return T.copy()
                left = deadline - time.monotonic()
                if not may_arrive or left <= 0:
                    raise SyncError(why)
                self._cv.wait(left)


def pose_message_to_matrix(msg) -> Tuple[int, str, np.ndarray]:
    """``(stamp_ns, frame_id, T)`` from a PoseStamped or Odometry (its pose part). ConversionError on NaN."""
    from . import conversions as C
    pose = msg.pose.pose if hasattr(msg, "child_frame_id") else msg.pose
    return C.stamp_to_ns(msg.header.stamp), msg.header.frame_id, C.pose_to_matrix(pose)
