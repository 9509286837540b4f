"""Transforms at a stamp: ``tf2_ros`` when importable, else this module's own buffer.

The PyPI ROS 2 wheels have no ``tf2_ros``. :class:`TfBuffer` covers what the nodes need: per-edge
time-sorted transforms with a cache duration, chaining through the frame tree, interpolation between
stamps (slerp on the rotation, lerp on the translation), and clear errors for unknown frames, frames
in different trees, extrapolation, and gaps between samples larger than a tolerance. Static transforms
(``/tf_static``, transient local) hold at every time. :class:`TfListener` fills it from ``/tf`` and
``/tf_static``; :func:`make_tf_lookup` returns a ``lookup(target, source, stamp_ns, timeout_s)`` backed
by either implementation with the same exceptions.

Matrices are ``T_parent_child`` (maps points in the child frame into the parent frame). ``lookup(target,
source, t)`` returns ``T_target_source``. Stamps are int nanoseconds; stamp 0 means "latest common".
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import transforms3d.quaternions as tq

from ..core.geometry import slerp


class TransformError(LookupError):
    """Base class: why a transform is not available (the message says which frames and stamps)."""


class UnknownFrameError(TransformError):
    pass


class ConnectivityError(TransformError):
    pass


class ExtrapolationError(TransformError):
    pass


class GapError(TransformError):
    """The two samples around the stamp are farther apart than the buffer's ``max_gap``."""


def _to_matrix(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = tq.quat2mat(q)
    T[:3, 3] = t
    return T


def _fmt(ns: int) -> str:
    return f"{ns / 1e9:.6f}s"


@dataclass
class _Edge:
    parent: str
    static: bool = False
    stamps: List[int] = field(default_factory=list)
    quats: List[np.ndarray] = field(default_factory=list)
    trans: List[np.ndarray] = field(default_factory=list)

    def insert(self, stamp: int, q: np.ndarray, t: np.ndarray, cache_ns: int) -> None:
        if self.static:
            self.stamps, self.quats, self.trans = [stamp], [q], [t]
            return
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            self.quats[i], self.trans[i] = q, t
        else:
            self.stamps.insert(i, stamp)
            self.quats.insert(i, q)
            self.trans.insert(i, t)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if cut > 0:
            del self.stamps[:cut], self.quats[:cut], self.trans[:cut]

    def at(self, stamp: int, max_gap_ns: int, child: str) -> np.ndarray:
        if self.static or stamp == 0:
            return _to_matrix(self.quats[-1], self.trans[-1])
        s = self.stamps
        i = bisect.bisect_left(s, stamp)
        if i < len(s) and s[i] == stamp:
            return _to_matrix(self.quats[i], self.trans[i])
        if i == 0 or i == len(s):
            where = "before the oldest" if i == 0 else "after the newest"
            raise ExtrapolationError(
                f"{self.parent} -> {child}: lookup at {_fmt(stamp)} is {where} sample "
                f"(have {_fmt(s[0])} .. {_fmt(s[-1])}, {len(s)} samples)")
        t0, t1 = s[i - 1], s[i]
        if t1 - t0 > max_gap_ns:
            raise GapError(f"{self.parent} -> {child}: samples around {_fmt(stamp)} are {(t1 - t0) / 1e9:.3f}s apart "
                           f"({_fmt(t0)} .. {_fmt(t1)}), more than the {max_gap_ns / 1e9:.3f}s tolerance")
        a = (stamp - t0) / (t1 - t0)
        q = slerp(self.quats[i - 1], self.quats[i], a)
        t = (1.0 - a) * self.trans[i - 1] + a * self.trans[i]
        return _to_matrix(q, t)

    def latest(self) -> int:
        return 0 if self.static else self.stamps[-1]

    def oldest(self) -> int:
        return 0 if self.static else self.stamps[0]


class TfBuffer:
    """A tf tree with time: see the module docstring. Thread safe."""

    def __init__(self, cache_time_s: float = 10.0, max_gap_s: float = 0.5):
        if cache_time_s <= 0 or max_gap_s <= 0:
            raise ValueError(f"cache_time_s and max_gap_s must be > 0, got {cache_time_s}, {max_gap_s}")
        self.cache_ns = int(cache_time_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._edges: Dict[str, _Edge] = {}  # child -> edge to its parent
        self._cv = threading.Condition()

    # ------------------------------------------------------------------------------------ filling
    def set_transform(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool = False) -> None:
        """Store ``T_parent_child`` at ``stamp_ns``. Raises ValueError for a non-finite / non-rigid T,
        an empty or identical frame name. A child moved to another parent replaces its history."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform frames parent={parent!r} child={child!r}")
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"{parent} -> {child}: transform is not a finite 4x4 matrix")
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise ValueError(f"{parent} -> {child}: rotation is not orthonormal")
        q = tq.mat2quat(R)
        with self._cv:
            e = self._edges.get(child)
            if e is None or e.parent != parent or e.static != static:
                e = self._edges[child] = _Edge(parent=parent, static=static)
            e.insert(int(stamp_ns), q, T[:3, 3].copy(), self.cache_ns)
            self._cv.notify_all()

    def clear(self) -> None:
        """Forget non-static transforms (time jumped backwards: bag loop, simulation reset)."""
        with self._cv:
            self._edges = {c: e for c, e in self._edges.items() if e.static}

    # ------------------------------------------------------------------------------------ queries
    def frames(self) -> List[str]:
        with self._cv:
            return sorted(set(self._edges) | {e.parent for e in self._edges.values()})

    def _chain(self, frame: str) -> List[str]:
        chain = [frame]
        seen = {frame}
        while chain[-1] in self._edges:
            p = self._edges[chain[-1]].parent
            if p in seen:
                raise ConnectivityError(f"tf loop through {p!r}")
            chain.append(p)
            seen.add(p)
        return chain

    def _lookup_locked(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        target, source = target.lstrip("/"), source.lstrip("/")
        known = set(self._edges) | {e.parent for e in self._edges.values()}
        for f in (target, source):
            if f not in known:
                raise UnknownFrameError(f"frame {f!r} does not exist in the tf tree "
                                        f"(known: {', '.join(sorted(known)) or 'none'})")
        if target == source:
            return np.eye(4)
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise ConnectivityError(f"{target!r} and {source!r} are not connected "
                                    f"(roots {up_t[-1]!r} and {up_s[-1]!r})")
        stamp = int(stamp_ns)
        if stamp == 0:  # latest time all edges on the path share
            edges = [self._edges[f] for f in up_s[: up_s.index(common)] + up_t[: up_t.index(common)]]
            stamp = min((e.latest() for e in edges if not e.static), default=0)
        T_common_source = np.eye(4)
        for f in up_s[: up_s.index(common)]:
            T_common_source = self._edges[f].at(stamp, self.max_gap_ns, f) @ T_common_source
        T_common_target = np.eye(4)
        for f in up_t[: up_t.index(common)]:
            T_common_target = self._edges[f].at(stamp, self.max_gap_ns, f) @ T_common_target
        return np.linalg.inv(T_common_target) @ T_common_source

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``; waits up to ``timeout_s`` for data to arrive.

        Raises UnknownFrameError, ConnectivityError, ExtrapolationError or GapError. Waiting only helps
        while the data may still come (unknown frames, stamps after the newest sample); a stamp older
        than the cache or inside a gap fails at once.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while True:
                try:
                    return self._lookup_locked(target, source, stamp_ns)
                except (GapError, ConnectivityError):
                    raise
                except ExtrapolationError as exc:
                    if "before the oldest" in str(exc):
                        raise
                    err = exc
                except UnknownFrameError as exc:
                    err = exc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise err
                self._cv.wait(left)

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        try:
            with self._cv:
                self._lookup_locked(target, source, stamp_ns)
            return True
        except TransformError:
            return False


# ---------------------------------------------------------------------------------------------------
# ROS side
# ---------------------------------------------------------------------------------------------------

class TfListener:
    """Fills a :class:`TfBuffer` from ``/tf`` and the transient-local ``/tf_static``.

    Transforms that cannot be stored (NaN, zero quaternion, bad frame names) are counted in
    ``self.rejected`` and reported through ``on_error(text)`` (the node rate-limits its log).
    """

    def __init__(self, node, buffer: TfBuffer, on_error: Optional[Callable[[str], None]] = None,
                 callback_group=None):
        from . import conversions as C
        from .interfaces import tf_message_type
        from .qos import tf_qos, tf_static_qos

        TFMessage = tf_message_type()
        if TFMessage is None:
            raise RuntimeError("tf2_msgs/TFMessage is not available: install ROS 2 tf2_msgs or run "
                               "tools/install_ros.sh (or use pose_source:=pose|odometry)")
        self._C = C
        self.buffer = buffer
        self.rejected = 0
        self.received = 0
        self._on_error = on_error
        self._subs = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._cb(m, False), tf_qos(),
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._cb(m, True), tf_static_qos(),
                                     callback_group=callback_group),
        ]

    def _cb(self, msg, static: bool) -> None:
        for ts in msg.transforms:
            self.received += 1
            try:
                T = self._C.transform_to_matrix(ts.transform)
                self.buffer.set_transform(ts.header.frame_id, ts.child_frame_id,
                                          self._C.stamp_to_ns(ts.header.stamp), T, static=static)
            except ValueError as exc:
                self.rejected += 1
                if self._on_error:
                    self._on_error(f"{'/tf_static' if static else '/tf'}: transform "
                                   f"{ts.header.frame_id!r} -> {ts.child_frame_id!r} rejected: {exc}")


class Tf2RosLookup:
    """The same ``lookup`` over the real ``tf2_ros`` Buffer + TransformListener (ROS 2 distributions)."""

    def __init__(self, node, cache_time_s: float):
        import tf2_ros
        from rclpy.duration import Duration

        self._tf2 = tf2_ros
        self._Duration = Duration
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s), node=node)
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)
        self.rejected = 0

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        from rclpy.time import Time

        from . import conversions as C
        try:
            ts = self.buffer.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)),
                                              timeout=self._Duration(seconds=timeout_s))
        except self._tf2.ExtrapolationException as exc:
            raise ExtrapolationError(str(exc)) from exc
        except self._tf2.ConnectivityException as exc:
            raise ConnectivityError(str(exc)) from exc
        except self._tf2.LookupException as exc:
            raise UnknownFrameError(str(exc)) from exc
        except self._tf2.TransformException as exc:
            raise TransformError(str(exc)) from exc
        return C.transform_to_matrix(ts.transform)

    def clear(self) -> None:
        self.buffer.clear()


class BuiltinLookup:
    """:class:`TfBuffer` + :class:`TfListener` behind the ``lookup`` interface."""

    def __init__(self, node, cache_time_s: float, max_gap_s: float, on_error=None, callback_group=None):
        self.buffer = TfBuffer(cache_time_s, max_gap_s)
        self.listener = TfListener(node, self.buffer, on_error, callback_group)

    @property
    def rejected(self) -> int:
        return self.listener.rejected

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        return self.buffer.lookup(target, source, stamp_ns, timeout_s)

    def clear(self) -> None:
        self.buffer.clear()


def make_tf_lookup(node, backend: str = "auto", cache_time_s: float = 10.0, max_gap_s: float = 0.5,
                   on_error=None, callback_group=None) -> Tuple[object, str]:
    """``(lookup object, backend name)``. ``backend``: ``auto`` (tf2_ros when importable), ``tf2_ros``
    or ``builtin``. The gap tolerance applies to the builtin buffer (tf2_ros interpolates any gap)."""
    if backend not in ("auto", "tf2_ros", "builtin"):
        raise ValueError(f"tf backend must be auto, tf2_ros or builtin, got {backend!r}")
    if backend in ("auto", "tf2_ros"):
        try:
            return Tf2RosLookup(node, cache_time_s), "tf2_ros"
        except ImportError:
            if backend == "tf2_ros":
                raise
    return BuiltinLookup(node, cache_time_s, max_gap_s, on_error, callback_group), "builtin"
