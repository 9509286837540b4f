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
from typing import Callable, List, Optional, Sequence, Tuple

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


# ---------------------------------------------------------------------------------------------------
# stamp synchronisation of several topics (message_filters' policies)
# ---------------------------------------------------------------------------------------------------

class StampSync:
    """Sets of one message per input with matching stamps (no rclpy; ``message_filters``' policies).

    ``add(i, stamp_ns, msg)`` returns the set ``(stamp of input 0, msg_0, ..., msg_n-1)`` as soon as every
    other input holds a message of the same stamp -- or with ``approximate`` the nearest one within
    ``tolerance_s`` of it -- else None. When a set is made, every older unmatched message of any input can
    no longer be matched and is dropped; an input holding more than ``queue_size`` unmatched messages drops
    its oldest; a repeated stamp replaces the earlier message (dropped). ``dropped[i]`` counts them.
    """

    def __init__(self, n: int, approximate: bool = False, tolerance_s: float = 0.0, queue_size: int = 5):
        if n < 2 or queue_size < 1 or tolerance_s < 0:
            raise ValueError(f"need n >= 2, queue_size >= 1 and tolerance_s >= 0, got {n}, {queue_size}, "
                             f"{tolerance_s}")
        self.approximate = bool(approximate)
        self.tolerance_ns = int(round(tolerance_s * 1e9)) if approximate else 0
        self.queue_size = int(queue_size)
        self._q: List[List[Tuple[int, object]]] = [[] for _ in range(n)]
        self.dropped: List[int] = [0] * n
        self.matched = 0
        self._lock = threading.Lock()

    def clear(self) -> int:
        with self._lock:
            n = sum(len(q) for q in self._q)
            for q in self._q:
                q.clear()
            return n

    def pending(self) -> Tuple[int, ...]:
        return tuple(len(q) for q in self._q)

    def _nearest(self, q: List[Tuple[int, object]], stamp: int) -> Optional[int]:
        if not q:
            return None
        stamps = [s for s, _ in q]
        k = bisect.bisect_left(stamps, stamp)
        best = min((j for j in (k - 1, k) if 0 <= j < len(q)), key=lambda j: abs(stamps[j] - stamp))
        return best if abs(stamps[best] - stamp) <= self.tolerance_ns else None

    def add(self, i: int, stamp_ns: int, msg: object) -> Optional[tuple]:
        if not 0 <= i < len(self._q):
            raise ValueError(f"input index must be in [0, {len(self._q)}), got {i}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            found = {j: self._nearest(q, stamp_ns) for j, q in enumerate(self._q) if j != i}
            if any(k is None for k in found.values()):
                mine = self._q[i]
                stamps = [s for s, _ in mine]
                k = bisect.bisect_left(stamps, stamp_ns)
                if k < len(mine) and mine[k][0] == stamp_ns:
                    mine[k] = (stamp_ns, msg)
                    self.dropped[i] += 1
                else:
                    mine.insert(k, (stamp_ns, msg))
                while len(mine) > self.queue_size:
                    mine.pop(0)
                    self.dropped[i] += 1
                return None
            members = {j: self._q[j].pop(k) for j, k in found.items()}
            members[i] = (stamp_ns, msg)
            for j, q in enumerate(self._q):   # older than the set: can never be matched now
                n_old = bisect.bisect_left([s for s, _ in q], members[j][0])
                del q[:n_old]
                self.dropped[j] += n_old
            self.matched += 1
            return (members[0][0],) + tuple(members[j][1] for j in range(len(self._q)))


class PairSynchronizer:
    """Two-input :class:`StampSync` (side 0 = left, 1 = right): ``add`` returns ``(pair or None, dropped)``."""

    def __init__(self, approximate: bool = False, tolerance_s: float = 0.0, queue_size: int = 5):
        self._sync = StampSync(2, approximate, tolerance_s, queue_size)
        self.approximate = self._sync.approximate

    def clear(self) -> int:
        return self._sync.clear()

    def pending(self) -> Tuple[int, int]:
        return self._sync.pending()  # type: ignore[return-value]

    def add(self, side: int, stamp_ns: int, msg: object):
        before = sum(self._sync.dropped)
        pair = self._sync.add(side, stamp_ns, msg)
        return pair, sum(self._sync.dropped) - before


def message_filters_available() -> Tuple[bool, str]:
    try:
        import message_filters  # noqa: F401
    except ImportError as exc:
        return False, f"message_filters is not importable ({exc})"
    return True, ""


class TopicSync:
    """Subscribes ``inputs`` (``[(msg_type, topic), ...]``) and calls ``callback(*msgs)`` with sets of
    messages of matching stamps: ``message_filters`` (``TimeSynchronizer`` / ``ApproximateTimeSynchronizer``)
    when importable and ``backend`` is ``auto`` or ``message_filters``, else :class:`StampSync`.

    ``received[i]`` counts input messages, ``matched`` the sets made, ``unmatched(i)`` the messages of input
    ``i`` dropped without a set (for message_filters: received - matched - still queued).
    """

    def __init__(self, node, inputs: Sequence[Tuple[type, str]], qos, callback: Callable[..., None], *,
                 approximate: bool = False, tolerance_s: float = 0.0, queue_size: int = 5,
                 backend: str = "auto", callback_group=None):
        if backend not in ("auto", "message_filters", "builtin"):
            raise ValueError(f"sync backend must be auto, message_filters or builtin, got {backend!r}")
        n = len(inputs)
        self.received = [0] * n
        self._callback = callback
        self._lock = threading.Lock()
        ok, why = message_filters_available() if backend != "builtin" else (False, "builtin requested")
        if backend == "message_filters" and not ok:
            raise ImportError(why)
        self._mf = None
        if ok:
            import message_filters as mf
            self.backend = "message_filters"
            self._subs = [mf.Subscriber(node, t, topic, qos_profile=qos, callback_group=callback_group)
                          for t, topic in inputs]
            for i, s in enumerate(self._subs):
                s.registerCallback(self._count, i)
            self._mf = (mf.ApproximateTimeSynchronizer(self._subs, queue_size, tolerance_s) if approximate
                        else mf.TimeSynchronizer(self._subs, queue_size))
            self._matched = 0
            self._last_set = -1   # stamp of the newest set: older queued messages can no longer match
            self._mf.registerCallback(self._on_set)
            self.topics = [s.sub.topic_name for s in self._subs]
        else:
            self.backend = "builtin"
            self._sync = StampSync(n, approximate, tolerance_s, queue_size)
            self._subs = [node.create_subscription(t, topic, lambda m, i=i: self._add(i, m), qos,
                                                   callback_group=callback_group)
                          for i, (t, topic) in enumerate(inputs)]
            self.topics = [s.topic_name for s in self._subs]

    def _count(self, msg, i: int) -> None:
        with self._lock:
            self.received[i] += 1

    def _on_set(self, *msgs) -> None:
        from .conversions import stamp_to_ns
        self._matched += 1
        self._last_set = max(self._last_set, stamp_to_ns(msgs[0].header.stamp))
        self._callback(*msgs)

    def _add(self, i: int, msg) -> None:
        from .conversions import stamp_to_ns
        self._count(msg, i)
        got = self._sync.add(i, stamp_to_ns(msg.header.stamp), msg)
        if got is not None:
            self._callback(*got[1:])

    @property
    def matched(self) -> int:
        return self._matched if self._mf is not None else self._sync.matched

    def queued(self, i: int) -> int:
        """Messages of input ``i`` still waiting for a set (message_filters: newer than the newest set)."""
        if self._mf is None:
            return self._sync.pending()[i]
        return sum(1 for s in list(self._mf.queues[i]) if s > self._last_set)

    def unmatched(self, i: int) -> int:
        if self._mf is None:
            return self._sync.dropped[i]
        return max(0, self.received[i] - self._matched - self.queued(i))

    def clear(self) -> None:
        if self._mf is not None:
            with self._mf.lock:
                for q in self._mf.queues:
                    q.clear()
        else:
            self._sync.clear()
