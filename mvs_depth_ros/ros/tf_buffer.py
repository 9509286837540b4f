"""Transforms at a stamp: ``tf2_ros`` when importable, else this module's own buffer.

The PyPI ROS 2 wheels have no ``tf2_ros``. :class:`TfBuffer` covers what the nodes need: time-sorted
transforms per child frame with a cache duration, chaining through the frame tree, interpolation between
stamps (slerp on the rotation, lerp on the translation), and clear errors for unknown frames, frames
in different trees, extrapolation, and gaps between samples larger than a tolerance. Static transforms
(``/tf_static``, transient local) hold at every time. :class:`TfListener` fills it from ``/tf`` and
``/tf_static``; :func:`make_tf_lookup` returns a ``lookup(target, source, stamp_ns, timeout_s)`` backed
by either implementation with the same exceptions.

No single message can poison the builtin buffer (drivers with a wrong clock, a mis-launched publisher):

* **future stamps are rejected**: a transform stamped more than ``max_future_s`` after the reference time
  (the newest image stamp the node looked up, or the node's clock -- ``/clock`` under sim time --
  whichever is later) raises :class:`FutureStampError` (the listener counts it). The cache is pruned
  relative to the newest image stamp, never relative to the newest transform, so an accepted outlier
  cannot delete good samples either; samples more than ``max_future_s`` after a new image stamp are
  dropped.
* **a child has one parent at a time, taken from its samples**: every sample stores its parent (as in
  tf2's time cache), and a lookup at stamp ``t`` follows the parent of the samples around ``t``. A
  re-parented frame follows its newest parent from that stamp on; a stray message (a reversed edge that
  would close a loop, a wrong parent) only matters within ``max_gap_s`` of its own stamp.
* **stale edges age out by time**: a dynamic edge with no sample within ``max_gap_s`` of the stamp does
  not exist at that stamp (a static edge of the same child, if any, takes over), so loops and
  disconnections heal as soon as good data flows; the error says why when nothing connects.

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


class FutureStampError(ValueError):
    """A transform stamped too far after the reference time (rejected, never stored)."""


def _to_matrix(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = tq.quat2mat(q)
    T[:3, 3] = t
    return T


def _fmt(ns: int) -> str:
    return f"{ns / 1e9:.6f}s"


@dataclass
class _Static:
    parent: str
    T: np.ndarray


@dataclass
class _Timeline:
    """The dynamic samples of one child frame, sorted by stamp, each with its own parent."""
    stamps: List[int] = field(default_factory=list)
    parents: List[str] = field(default_factory=list)
    quats: List[np.ndarray] = field(default_factory=list)
    trans: List[np.ndarray] = field(default_factory=list)
    parent_count: Dict[str, int] = field(default_factory=dict)   # samples per parent (the frames it names)

    def _count(self, parents, d: int) -> None:
        for p in parents:
            n = self.parent_count.get(p, 0) + d
            if n:
                self.parent_count[p] = n
            else:
                del self.parent_count[p]

    def insert(self, stamp: int, parent: str, q: np.ndarray, t: np.ndarray) -> None:
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            self._count((self.parents[i],), -1)
            self.parents[i], self.quats[i], self.trans[i] = parent, q, t
        else:
            self.stamps.insert(i, stamp)
            self.parents.insert(i, parent)
            self.quats.insert(i, q)
            self.trans.insert(i, t)
        self._count((parent,), 1)

    def prune(self, lo: Optional[int] = None, hi: Optional[int] = None, max_samples: int = 0) -> None:
        """Drop samples before ``lo``, after ``hi``, and the oldest beyond ``max_samples``."""
        if hi is not None:
            j = bisect.bisect_right(self.stamps, hi)
            if j < len(self.stamps):
                self._count(self.parents[j:], -1)
                del self.stamps[j:], self.parents[j:], self.quats[j:], self.trans[j:]
        cut = bisect.bisect_left(self.stamps, lo) if lo is not None else 0
        if max_samples:
            cut = max(cut, len(self.stamps) - max_samples)
        if cut > 0:
            self._count(self.parents[:cut], -1)
            del self.stamps[:cut], self.parents[:cut], self.quats[:cut], self.trans[:cut]

    def edge_at(self, stamp: int, max_gap: int, child: str):
        """``(parent, T or TransformError)`` at ``stamp``, or ``(None, why)`` when the child has no dynamic
        parent there (no sample within ``max_gap``; ``why`` is the error to report if nothing connects)."""
        s = self.stamps
        i = bisect.bisect_left(s, stamp)
        if i < len(s) and s[i] == stamp:
            return self.parents[i], _to_matrix(self.quats[i], self.trans[i])
        prev = i - 1 if i > 0 else None
        nxt = i if i < len(s) else None
        near_prev = prev is not None and stamp - s[prev] <= max_gap
        near_next = nxt is not None and s[nxt] - stamp <= max_gap
        if near_prev and near_next:
            t0, t1 = s[prev], s[nxt]
            if self.parents[prev] != self.parents[nxt]:
                p = self.parents[prev] if stamp - t0 <= t1 - stamp else self.parents[nxt]
                return p, TransformError(f"{child}: its parent changed from {self.parents[prev]!r} at {_fmt(t0)} "
                                         f"to {self.parents[nxt]!r} at {_fmt(t1)}, around the lookup at {_fmt(stamp)}")
            if t1 - t0 > max_gap:
                return self.parents[prev], GapError(
                    f"{self.parents[prev]} -> {child}: samples around {_fmt(stamp)} are {(t1 - t0) / 1e9:.3f}s "
                    f"apart ({_fmt(t0)} .. {_fmt(t1)}), more than the {max_gap / 1e9:.3f}s tolerance")
            a = (stamp - t0) / (t1 - t0)
            q = slerp(self.quats[prev], self.quats[nxt], a)
            return self.parents[prev], _to_matrix(q, (1.0 - a) * self.trans[prev] + a * self.trans[nxt])
        if near_prev or near_next:
            j = prev if near_prev else nxt
            return self.parents[j], self._why(stamp, max_gap, child, self.parents[j])
        return None, self._why(stamp, max_gap, child, self.parents[-1] if s else "?")

    def _why(self, stamp: int, max_gap: int, child: str, parent: str) -> TransformError:
        s = self.stamps
        have = f"(have {_fmt(s[0])} .. {_fmt(s[-1])}, {len(s)} samples)" if s else "(no samples)"
        if not s or stamp > s[-1]:
            return ExtrapolationError(f"{parent} -> {child}: lookup at {_fmt(stamp)} is after the newest sample {have}")
        if stamp < s[0]:
            return ExtrapolationError(f"{parent} -> {child}: lookup at {_fmt(stamp)} is before the oldest sample {have}")
        i = bisect.bisect_left(s, stamp)
        return GapError(f"{parent} -> {child}: samples around {_fmt(stamp)} are {(s[i] - s[i - 1]) / 1e9:.3f}s apart "
                        f"({_fmt(s[i - 1])} .. {_fmt(s[i])}), more than the {max_gap / 1e9:.3f}s tolerance")


class TfBuffer:
    """A tf tree with time: see the module docstring. Thread safe.

    ``clock`` returns the current time in ns (the node passes its ROS clock, which follows ``/clock`` under
    sim time); 0 means "unknown" (sim time before the first ``/clock``). ``max_samples`` bounds the samples
    kept per child frame while no image stamp advances the cache window (a stalled camera with TF flowing).
    """

    def __init__(self, cache_time_s: float = 10.0, max_gap_s: float = 0.5, max_future_s: float = 5.0,
                 clock: Optional[Callable[[], int]] = time.time_ns, max_samples: int = 20000):
        if cache_time_s <= 0 or max_gap_s <= 0 or max_future_s <= 0:
            raise ValueError(f"cache_time_s, max_gap_s and max_future_s must be > 0, got "
                             f"{cache_time_s}, {max_gap_s}, {max_future_s}")
        self.cache_ns = int(cache_time_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.max_future_ns = int(max_future_s * 1e9)
        self.max_samples = int(max_samples)
        self._clock = clock
        self._ref: Optional[int] = None        # newest image stamp (the cache window follows it)
        self._dynamic: Dict[str, _Timeline] = {}
        self._static: Dict[str, _Static] = {}
        self._cv = threading.Condition()

    # ------------------------------------------------------------------------------------ time
    def _now(self) -> int:
        return int(self._clock()) if self._clock is not None else 0

    def future_limit(self) -> Optional[int]:
        """The latest stamp accepted now (None: no reference time known yet, everything is accepted)."""
        ref = max(self._ref or 0, self._now())
        return ref + self.max_future_ns if ref > 0 else None

    def note_reference(self, stamp_ns: int) -> bool:
        """An image stamp the node works at: the cache window follows it. Ignored (False) when it is itself
        beyond the future bound of the clock, or not newer than the last one."""
        stamp = int(stamp_ns)
        now = self._now()
        if stamp <= 0 or (now > 0 and stamp > now + self.max_future_ns):
            return False
        with self._cv:
            if self._ref is not None and stamp <= self._ref:
                return False
            self._ref = stamp
            for tl in self._dynamic.values():
                tl.prune(stamp - self.cache_ns, stamp + self.max_future_ns)
            self._drop_empty()
        return True

    def _drop_empty(self) -> None:
        for c in [c for c, tl in self._dynamic.items() if not tl.stamps]:
            del self._dynamic[c]

    # ------------------------------------------------------------------------------------ filling
    def set_transform(self, parent: str, child: str, stamp_ns: int, T: np.ndarray, static: bool = False) -> None:
        """Store ``T_parent_child`` at ``stamp_ns``. Raises ValueError for a non-finite / non-rigid T, an empty
        or identical frame name, and :class:`FutureStampError` (a ValueError) for a dynamic transform stamped
        beyond the future bound. A new static transform of a child replaces the old one."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform frames parent={parent!r} child={child!r}")
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"{parent} -> {child}: transform is not a finite 4x4 matrix")
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise ValueError(f"{parent} -> {child}: rotation is not orthonormal")
        stamp = int(stamp_ns)
        with self._cv:
            if static:
                self._static[child] = _Static(parent, T.copy())
            else:
                limit = self.future_limit()
                if limit is not None and stamp > limit:
                    raise FutureStampError(
                        f"{parent} -> {child}: stamp {_fmt(stamp)} is {(stamp - limit) / 1e9 + self.max_future_ns / 1e9:.3f}s "
                        f"after the reference time (newest image stamp / clock); the bound is "
                        f"{self.max_future_ns / 1e9:.3f}s")
                tl = self._dynamic.setdefault(child, _Timeline())
                tl.insert(stamp, parent, tq.mat2quat(R), T[:3, 3].copy())
                ref = self._ref if self._ref is not None else tl.stamps[-1]
                tl.prune(ref - self.cache_ns, None, self.max_samples)
                if not tl.stamps:
                    del self._dynamic[child]
            self._cv.notify_all()

    def clear(self) -> None:
        """Forget non-static transforms and the reference time (time jumped backwards: bag loop, reset)."""
        with self._cv:
            self._dynamic = {}
            self._ref = None

    # ------------------------------------------------------------------------------------ queries
    def frames(self) -> List[str]:
        with self._cv:
            names = set(self._dynamic) | set(self._static) | {s.parent for s in self._static.values()}
            for tl in self._dynamic.values():
                names.update(tl.parent_count)
            return sorted(names)

    def _edge(self, frame: str, stamp: int):
        """``(parent or None, T or TransformError)`` of ``frame`` at ``stamp`` (0: its newest sample)."""
        tl = self._dynamic.get(frame)
        why = None
        if tl is not None:
            if stamp == 0:
                return tl.parents[-1], _to_matrix(tl.quats[-1], tl.trans[-1])
            parent, value = tl.edge_at(stamp, self.max_gap_ns, frame)
            if parent is not None:
                return parent, value
            why = value
        st = self._static.get(frame)
        if st is not None:
            return st.parent, st.T
        return None, why

    def _chain(self, frame: str, stamp: int):
        """``[(frame, T_parent_frame or error), ...]`` up to the root at ``stamp``, the root, and why it
        is the root (an aged-out edge) if so."""
        steps, seen = [], {frame}
        f = frame
        while True:
            parent, value = self._edge(f, stamp)
            if parent is None:
                return steps, f, value
            if parent in seen:
                raise ConnectivityError(f"tf loop through {parent!r} at {_fmt(stamp)}")
            steps.append((f, value))
            seen.add(parent)
            f = parent

    def _latest_common(self, target: str, source: str) -> int:
        stamps = []
        for f in (source, target):
            seen = {f}
            while f in self._dynamic or f in self._static:
                parent, _ = self._edge(f, 0)
                if f in self._dynamic:
                    stamps.append(self._dynamic[f].stamps[-1])
                if parent in seen:
                    break
                seen.add(parent)
                f = parent
        return min(stamps, default=0)

    def _lookup_locked(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        target, source = target.lstrip("/"), source.lstrip("/")
        known = set(self._dynamic) | set(self._static) | {s.parent for s in self._static.values()}
        for tl in self._dynamic.values():
            known.update(tl.parent_count)
        for f in (target, source):
            if f not in known:
                raise UnknownFrameError(f"frame {f!r} does not exist in the tf tree "
                                        f"(known: {', '.join(sorted(known)) or 'none'})")
        if target == source:
            return np.eye(4)
        stamp = int(stamp_ns) or self._latest_common(target, source)
        up_s, root_s, why_s = self._chain(source, stamp)
        up_t, root_t, why_t = self._chain(target, stamp)
        frames_s = [f for f, _ in up_s] + [root_s]
        frames_t = [f for f, _ in up_t] + [root_t]
        common = next((f for f in frames_s if f in set(frames_t)), None)
        if common is None:
            for why in (why_s, why_t):  # an aged-out edge explains the disconnection best
                if why is not None:
                    raise why
            raise ConnectivityError(f"{target!r} and {source!r} are not connected at {_fmt(stamp)} "
                                    f"(roots {root_t!r} and {root_s!r})")

        def to_common(steps, frames):
            T = np.eye(4)
            for f, value in steps[: frames.index(common)]:
                if isinstance(value, TransformError):
                    raise value
                T = value @ T
            return T
        return np.linalg.inv(to_common(up_t, frames_t)) @ to_common(up_s, frames_s)

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``; waits up to ``timeout_s`` for data to arrive.

        Raises UnknownFrameError, ConnectivityError, ExtrapolationError, GapError or TransformError. Waiting
        only helps while the data may still come (unknown or unconnected frames, stamps after the newest
        sample); a stamp older than the cache or inside a gap fails at once.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while True:
                try:
                    return self._lookup_locked(target, source, stamp_ns)
                except (ExtrapolationError, UnknownFrameError, ConnectivityError) as exc:
                    if "before the oldest" in str(exc):
                        raise
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

    Transforms that cannot be stored (NaN, zero quaternion, bad frame names, stamped beyond the future bound)
    are counted in ``self.rejected`` (``self.rejected_future`` of them for the future stamps) and reported
    through ``on_error(text)`` (the node rate-limits its log).
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
        self.rejected_future = 0
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
                if isinstance(exc, FutureStampError):
                    self.rejected_future += 1
                if self._on_error:
                    self._on_error(f"{'/tf_static' if static else '/tf'}: transform "
                                   f"{ts.header.frame_id!r} -> {ts.child_frame_id!r} rejected: {exc}")


class Tf2RosLookup:
    """The same ``lookup`` over the real ``tf2_ros`` Buffer + TransformListener (ROS 2 distributions).
    tf2's own buffer has none of the builtin buffer's protections against a poisoning message."""

    def __init__(self, node, cache_time_s: float):
        import tf2_ros
        from rclpy.duration import Duration

        self._tf2 = tf2_ros
        self._Duration = Duration
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s), node=node)
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)
        self.rejected = 0
        self.rejected_future = 0

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
    """:class:`TfBuffer` + :class:`TfListener` behind the ``lookup`` interface. The buffer's clock is the
    node's (ROS time: ``/clock`` under sim time); every lookup's stamp is noted as the reference time."""

    def __init__(self, node, cache_time_s: float, max_gap_s: float, on_error=None, callback_group=None,
                 max_future_s: float = 5.0):
        clock = node.get_clock()
        self.buffer = TfBuffer(cache_time_s, max_gap_s, max_future_s, clock=lambda: clock.now().nanoseconds)
        self.listener = TfListener(node, self.buffer, on_error, callback_group)

    @property
    def rejected(self) -> int:
        return self.listener.rejected

    @property
    def rejected_future(self) -> int:
        return self.listener.rejected_future

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        if stamp_ns:
            self.buffer.note_reference(stamp_ns)
        return self.buffer.lookup(target, source, stamp_ns, timeout_s)

    def clear(self) -> None:
        self.buffer.clear()


class TfBackendUnavailable(RuntimeError):
    """The requested tf implementation cannot be used in this install (the message says what to do)."""


def make_tf_lookup(node, backend: str = "auto", cache_time_s: float = 10.0, max_gap_s: float = 0.5,
                   on_error=None, callback_group=None, max_future_s: float = 5.0) -> Tuple[object, str]:
    """``(lookup object, backend name)``. ``backend``: ``auto`` (the builtin buffer when ``tf2_msgs`` is
    importable, else tf2_ros), ``tf2_ros`` or ``builtin``. ``auto`` prefers the builtin buffer even where tf2_ros
    is installed: it is the one no single /tf message can poison (future stamps, reversed or re-parented edges;
    see :class:`TfBuffer`), which tf2's buffer is not. The gap tolerance and the future bound apply to the builtin
    buffer (tf2_ros interpolates any gap). Raises :class:`TfBackendUnavailable` when the requested backend is not
    installed."""
    if backend not in ("auto", "tf2_ros", "builtin"):
        raise ValueError(f"tf backend must be auto, tf2_ros or builtin, got {backend!r}")
    builtin_error = None
    if backend in ("auto", "builtin"):
        try:
            return BuiltinLookup(node, cache_time_s, max_gap_s, on_error, callback_group, max_future_s), "builtin"
        except RuntimeError as exc:
            if backend == "builtin":
                raise TfBackendUnavailable(str(exc)) from exc
            builtin_error = exc
    try:
        return Tf2RosLookup(node, cache_time_s), "tf2_ros"
    except ImportError as exc:
        if backend == "tf2_ros":
            raise TfBackendUnavailable(
                f"tf_backend tf2_ros is not installed ({exc}); use tf_backend:=builtin or auto, or install "
                f"ROS 2 tf2_ros") from exc
        raise TfBackendUnavailable(f"{builtin_error}; and tf2_ros is not installed ({exc})") from exc
