"""Small helpers for the nodes' ``/diagnostics`` and rate-limited warnings (no ROS math, no threads)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Dict, Iterable, Optional, Tuple


class RateWindow:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._t: Deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, t: Optional[float] = None) -> None:
        with self._lock:
            self._t.append(time.monotonic() if t is None else t)

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._t and self._t[0] < now - self.window:
                self._t.popleft()
            if len(self._t) < 2:
                return 0.0
            span = max(now - self._t[0], 1e-9)
            return len(self._t) / min(self.window, max(span, 1e-9))


class Stats:
    """Running mean / max / last of a value over a window of samples."""

    def __init__(self, n: int = 100):
        self._v: Deque[float] = collections.deque(maxlen=n)
        self._lock = threading.Lock()

    def add(self, v: float) -> None:
        with self._lock:
            self._v.append(float(v))

    def summary(self) -> Tuple[float, float, float]:
        """(mean, max, last); zeros when empty."""
        with self._lock:
            if not self._v:
                return 0.0, 0.0, 0.0
            return sum(self._v) / len(self._v), max(self._v), self._v[-1]


class RateLimitedLog:
    """Logs the first message of a key at once, then at most once per ``period`` with the suppressed count."""

    def __init__(self, emit: Callable[[str], None], period: float = 5.0):
        self.emit = emit
        self.period = period
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._suppressed[key] += 1
                return False
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        self.emit(text + (f" ({n} similar message(s) suppressed)" if n else ""))
        return True


class RecentProblems:
    """Problems of the last ``window`` seconds, for a ``/diagnostics`` level that recovers.

    ``note(key, text, level)`` records one occurrence (``key`` groups the same kind of problem: "tf_reject",
    "encoding", ...; ``text`` is the latest description; ``level`` 1 = WARN, 2 = ERROR). ``summary()`` gives
    the worst level seen in the window (0 = OK once the inputs have been good for ``window`` seconds) and a
    message naming the recent problems, the most frequent first. Lifetime counts belong in the status values;
    this only holds the window (bounded: at most ``max_events`` occurrences are kept).
    """

    def __init__(self, window: float = 5.0, max_events: int = 10000):
        self.window = float(window)
        self._events: Deque[Tuple[float, str, int]] = collections.deque(maxlen=max_events)
        self._text: Dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, key: str, text: str, level: int = 1, t: Optional[float] = None) -> None:
        with self._lock:
            self._events.append((time.monotonic() if t is None else t, key, int(level)))
            self._text[key] = text

    def _prune(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()
        live = {k for _, k, _ in self._events}
        for k in [k for k in self._text if k not in live]:
            del self._text[k]

    def summary(self, now: Optional[float] = None, max_items: int = 3) -> Tuple[int, str]:
        """``(level, message)``; ``(0, "")`` when nothing happened within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._prune(now)
            if not self._events:
                return 0, ""
            counts: Dict[str, int] = collections.Counter()
            levels: Dict[str, int] = {}
            for _, k, lv in self._events:
                counts[k] += 1
                levels[k] = max(levels.get(k, 0), lv)
            order = sorted(counts, key=lambda k: (-levels[k], -counts[k], k))
            parts = [f"{counts[k]}x {self._text[k]}" for k in order[:max_items]]
            if len(order) > max_items:
                parts.append(f"+{len(order) - max_items} more kind(s)")
            return max(levels.values()), f"last {self.window:g}s: " + "; ".join(parts)


def make_status(name: str, hardware_id: str, level, message: str, values: Iterable[Tuple[str, object]]):
    """A ``diagnostic_msgs/DiagnosticStatus`` (values turned into strings)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    st = DiagnosticStatus(name=name, hardware_id=hardware_id, message=message)
    st.level = level if isinstance(level, bytes) else bytes([int(level)])
    st.values = [KeyValue(key=str(k), value=(f"{v:.3f}" if isinstance(v, float) else str(v))) for k, v in values]
    return st


def publish_status(node, publisher, status) -> None:
    """Publish one DiagnosticStatus as a ``DiagnosticArray`` stamped with the node's clock."""
    from diagnostic_msgs.msg import DiagnosticArray
    arr = DiagnosticArray()
    arr.header.stamp = node.get_clock().now().to_msg()
    arr.status = [status]
    publisher.publish(arr)


def status_values(status) -> Dict[str, str]:
    """``{key: value}`` of a DiagnosticStatus (for tests and the evaluator)."""
    return {kv.key: kv.value for kv in status.values}
