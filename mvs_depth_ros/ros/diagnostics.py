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
