"""The skeleton shared by the depth nodes (``mvs_node``, ``stereo_node``).

What a depth node does around its model lives here, once:

* **parameters -> config**: a table of :class:`~mvs_depth_ros.ros.params.Spec` declared with descriptors,
  validated into the node's frozen config dataclass; live changes re-validated (:meth:`DepthNodeBase._on_set_parameters`);
* **the input queue** (:class:`FrameQueue`): an input (an image, a stereo pair) waits for the camera pose at
  its stamp like ``tf2_ros::MessageFilter``: pending inputs are released in stamp order as soon as the
  transform is there, dropped and counted (``tf_expired``) when their wait (``tf_timeout``, wall seconds)
  expires; a pose that cannot come any more (a gap, older than the cache) releases the input without a pose
  (``tf_failures``). Across processes the ``/tf`` message of an image's stamp may arrive after the image: the
  input waits instead of losing its pose, so results do not depend on the machine's load;
* **the worker slot**: released inputs wait for the worker thread: ``frame_queue`` 1 = the latest input wins
  (live: a slow model drops inputs, counted, and never queues latency), N = up to N in order;
* **end of stream** (bag evaluation): with ``end_of_bag_topic`` set, the node learns from the player how many
  images it sent; once each is accounted for (processed or dropped) and the queue is empty, it publishes an
  ``end_of_stream`` report (``diagnostic_msgs/DiagnosticStatus``: counts, level ERROR when inputs were lost
  or dropped for lack of time) for the evaluator / the runner;
* **diagnostics** common to both nodes, the rate-limited warnings and the counters;
* **shutdown**: the attributes used by shutdown exist before anything can fail; ``shutdown`` stops the
  threads; :func:`mvs_depth_ros.ros.node_main.spin_node` is the one ``main``.
"""
from __future__ import annotations

import bisect
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import conversions as C
from .diagnostics import RateLimitedLog, RateWindow, RecentProblems, Stats, make_status, publish_status
from .params import COMMON_SPECS, ParameterError, Spec, declare_all, live_changes, with_changes

# ---------------------------------------------------------------------------------------------------
# the queue (no rclpy)
# ---------------------------------------------------------------------------------------------------


@dataclass
class Pending:
    """One input on its way to the worker."""
    stamp: int                          # ns
    frame_id: str                       # the frame whose pose it waits for
    msgs: tuple                         # the messages (image [, camera_info] / left, right, ...)
    t_recv: float                       # monotonic time of arrival
    T: Optional[np.ndarray] = None      # pose at the stamp, once released
    pose_error: str = ""                # why there is no pose ('' = posed, or no pose wanted)
    pose_wait_s: float = 0.0            # time spent waiting for the pose


#: the longest single wait of the release thread (it re-checks stop and the deadline in between)
_CHUNK_S = 0.2


class FrameQueue:
    """Inputs wait for their pose (a release thread), then for the worker (a worker thread).

    ``resolve(frame_id, stamp_ns, timeout_s) -> T`` waits up to ``timeout_s`` for the pose and raises a
    ``LookupError`` when it is not there (``TfBuffer.lookup`` / ``PoseBuffer.lookup``); an error raised
    before the timeout ran out means the pose cannot come (gap, older than the cache): the input is released
    without a pose. ``resolve`` None: inputs go straight to the worker. ``process(item)`` runs on the worker
    thread; ``on_event(kind, item, text)`` reports ``"dropped"`` (slot full), ``"expired"`` (wait over),
    ``"no_pose"`` (released without a pose), ``"overflow"`` (more than ``capacity`` waiting for a pose) and
    ``"error"`` (``process`` raised; text has the traceback).
    """

    def __init__(self, resolve: Optional[Callable[[str, int, float], np.ndarray]],
                 process: Callable[[Pending], None], on_event: Callable[[str, Pending, str], None], *,
                 wait_s: float, slot_size: int, capacity: int = 1000, name: str = "depth"):
        self.resolve, self.process, self.on_event = resolve, process, on_event
        self.wait_s = float(wait_s)
        self.slot_size = int(slot_size)
        self.capacity = int(capacity)
        self._pending: List[Pending] = []           # waiting for the pose, by stamp
        self._keys: List[int] = []
        self._ready: Deque[Pending] = deque()       # waiting for the worker
        self._busy = False
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_worker", daemon=True)]
        if resolve is not None:
            self._threads.append(threading.Thread(target=self._release, name=f"{name}_tf_wait", daemon=True))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    # --------------------------------------------------------------------------------------- input
    def put(self, item: Pending) -> None:
        with self._cv:
            if self.resolve is None:
                self._to_ready(item)
                return
            k = bisect.bisect_right(self._keys, item.stamp)
            self._keys.insert(k, item.stamp)
            self._pending.insert(k, item)
            if len(self._pending) > self.capacity:
                old = self._pending.pop(0)
                self._keys.pop(0)
                self.on_event("overflow", old, f"more than {self.capacity} inputs waiting for their pose")
            self._cv.notify_all()

    def _to_ready(self, item: Pending) -> None:
        if len(self._ready) >= self.slot_size:
            self.on_event("dropped", self._ready.popleft(), "replaced before the worker took it")
        self._ready.append(item)
        self._cv.notify_all()

    # ----------------------------------------------------------------------------------- pose wait
    def _wait_pose(self, item: Pending) -> Optional[str]:
        """Fill ``item.T`` / ``item.pose_error``; returns None, or ``"expired"`` / ``"stopped"``."""
        deadline = item.t_recv + self.wait_s
        t_begin = time.monotonic()
        while True:
            chunk = min(max(deadline - time.monotonic(), 0.0), _CHUNK_S)
            t0 = time.monotonic()
            try:
                item.T = self.resolve(item.frame_id, item.stamp, chunk)
                item.pose_error = ""
                break
            except LookupError as exc:
                item.pose_error = str(exc) or type(exc).__name__
                # a lookup that waits for data takes its whole timeout; one that fails sooner cannot succeed
                if time.monotonic() - t0 < chunk:
                    break
                if time.monotonic() >= deadline:
                    return "expired"
                if self._stop.is_set():
                    return "stopped"
        item.pose_wait_s = time.monotonic() - t_begin
        return None

    def _release(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._pending and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                item = self._pending[0]   # stays pending (not idle) while its pose is awaited
            outcome = self._wait_pose(item)
            if outcome == "stopped":
                return
            with self._cv:
                i = next(j for j, p in enumerate(self._pending) if p is item)
                del self._pending[i], self._keys[i]
                if outcome == "expired":
                    self.on_event("expired", item, f"no pose within {self.wait_s:g} s: {item.pose_error}")
                    self._cv.notify_all()
                    continue
                if item.pose_error:
                    self.on_event("no_pose", item, item.pose_error)
                self._to_ready(item)

    # -------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                item = self._ready.popleft()
                self._busy = True
            try:
                self.process(item)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything one input does
                if not self._stop.is_set():  # after stop() the node may be gone: its publishers fail, not the input
                    self.on_event("error", item, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    # ------------------------------------------------------------------------------------- state
    def counts(self) -> Tuple[int, int, bool]:
        """(waiting for a pose, waiting for the worker, worker busy)."""
        with self._cv:
            return len(self._pending), len(self._ready), self._busy

    def idle(self) -> bool:
        with self._cv:
            return not self._pending and not self._ready and not self._busy

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._ready or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.5))
            return True

    def clear_pending(self) -> int:
        with self._cv:
            n = len(self._pending) + len(self._ready)
            self._pending.clear()
            self._keys.clear()
            self._ready.clear()
            return n

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the threads: waits up to ``timeout`` s in all for the input being processed; False if it is still
        running then (the daemon worker ends when that input returns, or with the process)."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() and t is not threading.current_thread() for t in self._threads)


# ---------------------------------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------------------------------

@dataclass
class BaseCounters:
    """Counters every depth node has (the nodes extend them)."""
    processed: int = 0            # inputs given to the pipeline
    dropped: int = 0              # replaced in the worker slot before the worker took them (model too slow)
    tf_failures: int = 0          # inputs without a pose (expired wait, or a pose that cannot come)
    tf_expired: int = 0           # of those: dropped because their wait for the pose expired
    rejected_encoding: int = 0
    rejected_corrupt: int = 0     # undecodable image / camera_info, empty frame_id
    no_camera_info: int = 0       # image without a matching camera_info
    camera_info_mismatch: int = 0
    stamp_backwards: int = 0      # dropped: stamp not after the previous input's
    stamp_invalid: int = 0        # dropped: stamp 0, or beyond tf_max_future after the clock / newest stamp
    rejected_camera_info: int = 0  # camera_info with an invalid K or one beyond physical bounds
    distortion_changes: int = 0   # camera_info distortion changed (to non-zero or non-finite values)
    time_jumps: int = 0           # large backward jumps: everything reset
    size_changes: int = 0
    predictions: int = 0          # depth maps published
    errors: int = 0               # unexpected exceptions in the worker (logged with traceback)


def overrides(parameter_overrides: Optional[Sequence[Any]], params: Dict[str, Any]) -> List[Any]:
    """Parameter overrides from ``parameter_overrides`` and keyword arguments."""
    from rclpy.parameter import Parameter
    return list(parameter_overrides or []) + [Parameter(k, value=v) for k, v in params.items()]


def steady_clock():
    """A wall (steady) clock for timers that must run when a bag's /clock has stopped (use_sim_time)."""
    from rclpy.clock import Clock, ClockType
    return Clock(clock_type=ClockType.STEADY_TIME)


def _end_qos():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


try:
    from rclpy.node import Node as _Node
except ImportError:  # pragma: no cover - the nodes need rclpy; FrameQueue does not
    _Node = object  # type: ignore[assignment,misc]


class DepthNodeBase(_Node):  # type: ignore[misc,valid-type]
    """Skeleton of a depth node: see the module docstring.

    Subclasses set ``SPECS`` (parameter table including :data:`COMMON_SPECS`), ``CONFIG`` (frozen dataclass
    with ``from_values``), ``COUNTERS`` (a :class:`BaseCounters` subclass), ``TITLE`` (diagnostics name) and
    ``INPUT`` (what one input is called in messages: ``frame``, ``pair``), and implement ``process(item)``,
    ``input_count()`` (inputs received, compared with the player's count) and ``diagnostic_extra()``.
    """

    SPECS: Dict[str, Spec] = COMMON_SPECS
    CONFIG: Any = None
    COUNTERS: Any = BaseCounters
    TITLE = "depth"
    INPUT = "frame"

    def __init__(self, node_name: str, *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Any]] = None, cli_args=None, **params):
        # everything shutdown / destroy_node touch exists before anything can fail
        self.queue: Optional[FrameQueue] = None
        self.counters = self.COUNTERS()
        self.end_report = None            # the end_of_stream DiagnosticStatus once published
        self._end_sent: Optional[Dict[str, int]] = None
        self._end_progress: Optional[tuple] = None
        self._end_pub = None
        self._recent = RecentProblems()
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=overrides(parameter_overrides, params))
        self.config = self.CONFIG.from_values(declare_all(self, self.SPECS))
        self._log_limited = RateLimitedLog(self.get_logger().warning, self.config.warn_period)
        self._recent = RecentProblems(self.config.diagnostics_window)
        self._distortion: Optional[Tuple[float, ...]] = None
        self._last_stamp: Optional[int] = None
        self._last_size: Optional[Tuple[int, int]] = None
        self._last_input_t = time.monotonic()
        self._rate_in, self._rate_out = RateWindow(), RateWindow()
        self._latency, self._compute, self._overhead, self._publish_ms = Stats(), Stats(), Stats(), Stats()
        self._queue_wait, self._pose_wait = Stats(), Stats()
        self._last_trim, self._trim_ms = time.monotonic(), Stats(10)
        self._last_error = ""
        self.tf = None
        self.tf_backend = "off"
        self._tf_unavailable = ""

    # ------------------------------------------------------------------------------------ set-up
    def _make_tf(self, world_frame: str, callback_group) -> None:
        """The TF lookup (``tf_backend``) for poses in ``world_frame``. A backend that is not installed is a
        startup error (:class:`~mvs_depth_ros.ros.tf_buffer.TfBackendUnavailable`): a node that can never
        get a pose must not pretend to run."""
        from .tf_buffer import make_tf_lookup
        cfg = self.config
        self.tf, self.tf_backend = make_tf_lookup(
            self, cfg.tf_backend, cfg.tf_cache_time, cfg.tf_max_gap,
            on_error=lambda t: self._bad_pose("tf_reject", t), callback_group=callback_group,
            max_future_s=cfg.tf_max_future)

    def _event(self, key: str, text: str) -> None:
        """A rare event worth a log line each time (a reset, a size change): logged and in the recent window."""
        self._recent.note(key, text, 1)
        self.get_logger().warning(text)

    def _warn(self, key: str, text: str, level: int = 1) -> None:
        """A problem with the input: into the recent window of /diagnostics, and logged (rate-limited)."""
        self._recent.note(key, text.splitlines()[0] if text else key, level)
        self._log_limited(key, text)

    def _bad_pose(self, key: str, text: str) -> None:
        if hasattr(self.counters, "bad_poses"):
            self.counters.bad_poses += 1
        self._warn(key, text)

    def _start(self, resolve: Optional[Callable[[str, int, float], np.ndarray]], group) -> None:
        """Diagnostics timer, parameter callback, end-of-stream I/O, and the queue's threads."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        from .qos import diagnostics_qos
        cfg = self.config
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(cfg.diagnostics_period, self.publish_diagnostics, callback_group=group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if cfg.end_of_bag_topic:
            self._end_pub = self.create_publisher(DiagnosticStatus, "end_of_stream", _end_qos())
            self.create_subscription(DiagnosticStatus, cfg.end_of_bag_topic, self._on_end_of_bag, _end_qos(),
                                     callback_group=group)
            # wall time: with use_sim_time the bag's /clock stops at the end of the bag, and sim-time timers with it
            self._end_timer = self.create_timer(0.2, self._check_end, callback_group=group, clock=steady_clock())
        self.queue = FrameQueue(resolve, self._process_item, self._on_queue_event, wait_s=cfg.tf_timeout,
                                slot_size=cfg.frame_queue, capacity=max(1000, cfg.frame_queue), name=self.get_name())
        self.queue.start()

    def _on_set_parameters(self, params) -> Any:
        from rcl_interfaces.msg import SetParametersResult
        try:
            self.config = with_changes(self.config, live_changes(self.SPECS, params))
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if self.queue is not None:
            self.queue.wait_s = self.config.tf_timeout
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------ inputs
    def submit(self, stamp: int, frame_id: str, msgs: tuple) -> None:
        """Hand an input to the queue (subscription callbacks call this). A stamp of 0 (a driver without a
        clock) or beyond ``tf_max_future`` after the clock and the newest stamp is dropped and counted: it
        would wait for a pose that never comes, or poison the stamp order of every later input."""
        self._last_input_t = time.monotonic()
        self._rate_in.tick()
        why = self.stamp_problem(stamp)
        if why:
            self.counters.stamp_invalid += 1
            self._warn("stamp_invalid", f"{self.INPUT} at {stamp / 1e9:.6f}s dropped: {why}")
            return
        self.queue.put(Pending(stamp, frame_id, msgs, time.monotonic()))

    def stamp_problem(self, stamp: int) -> str:
        """Why an input stamp cannot be used ('' = fine)."""
        if stamp <= 0:
            return "stamp 0 (the driver sets no stamp)"
        ref = max(self.get_clock().now().nanoseconds, self._last_stamp or 0)
        limit = self.config.tf_max_future * 1e9
        if ref > 0 and stamp > ref + limit:
            return (f"stamp {(stamp - ref) / 1e9:.3f}s in the future of the clock / newest stamp "
                    f"(tf_max_future {self.config.tf_max_future:g}s)")
        return ""

    def _on_queue_event(self, kind: str, item: Pending, text: str) -> None:
        c = self.counters
        at = f"{self.INPUT} at {item.stamp / 1e9:.6f}s"
        if kind == "dropped" or kind == "overflow":
            c.dropped += 1
        elif kind == "expired":
            c.tf_failures += 1
            c.tf_expired += 1
            self._warn("tf_expired", f"{at} dropped: {text} (tf_timeout; the pose arrived too late or never)")
        elif kind == "no_pose":
            c.tf_failures += 1
            self._warn("pose_lookup", f"no pose for {item.frame_id!r} at {item.stamp / 1e9:.6f}s: {text} -> "
                                      f"{self.INPUT} used without a pose")
        elif kind == "error":
            c.errors += 1
            self._last_error = text.splitlines()[0]
            self._warn("worker_error", f"{at} failed: {text}", level=2)

    def _process_item(self, item: Pending) -> None:
        self._queue_wait.add((time.monotonic() - item.t_recv) * 1e3)
        self._pose_wait.add(item.pose_wait_s * 1e3)
        self.process(item)

    def process(self, item: Pending) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, msg, label: str = "image") -> Optional[np.ndarray]:
        """RGB of an image message, or None (counted, rate-limited warning)."""
        try:
            return C.image_to_rgb(msg)
        except C.UnsupportedEncoding as exc:
            self.counters.rejected_encoding += 1
            self._warn(f"encoding_{label}", f"{label} rejected: {exc}")
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn(f"corrupt_{label}", f"{label} rejected: {exc}")
        return None

    def camera_info(self, msg) -> Optional[Tuple[np.ndarray, Tuple[int, int], np.ndarray]]:
        """``(K, (w, h), D)`` of a camera_info, or None (counted, rate-limited warning); the distortion checked."""
        try:
            K, size, D = C.camera_info_to_K(msg)
        except C.ConversionError as exc:
            self.counters.rejected_camera_info += 1
            self._warn("camera_info", f"camera_info rejected: {exc}")
            return None
        self.check_distortion(D)
        return K, size, D

    def check_distortion(self, D: np.ndarray) -> None:
        """Flag every change of the camera_info distortion to non-zero or non-finite values (counted): this
        node expects rectified images."""
        d = tuple(float(x) for x in np.ravel(D))
        if d != self._distortion and (not np.all(np.isfinite(d)) or any(x != 0 for x in d)):
            # tuples compare NaN by identity: a repeated NaN distortion is the same, not a change
            if self._distortion is None or not np.array_equal(np.asarray(d), np.asarray(self._distortion),
                                                              equal_nan=True):
                self.counters.distortion_changes += 1
                what = "non-finite" if not np.all(np.isfinite(d)) else "non-zero"
                self._warn("distortion", f"camera_info distortion changed to {what} {list(d)}: this node expects "
                                         f"rectified images (run image_proc rectification first); depth will be "
                                         f"biased otherwise")
        self._distortion = d

    def check_continuity(self, stamp: int, size: Tuple[int, int], reset: Callable[[], None]) -> bool:
        """Stamps must increase (a large backward jump = bag loop: ``reset()``), a size change resets the
        pipeline state. False: drop this input (counted)."""
        cfg = self.config
        if self._last_stamp is not None and stamp <= self._last_stamp:
            back = (self._last_stamp - stamp) / 1e9
            if cfg.time_jump_reset > 0 and back >= cfg.time_jump_reset:
                self.counters.time_jumps += 1
                self._event("time_jump", f"{self.INPUT} stamps jumped back by {back:.3f}s (bag loop / restart): "
                                         f"state and poses reset")
                reset()
            else:
                self.counters.stamp_backwards += 1
                self._warn("backwards", f"{self.INPUT} stamp {stamp / 1e9:.6f}s is not after the previous "
                                        f"{self._last_stamp / 1e9:.6f}s: {self.INPUT} dropped")
                return False
        if self._last_size is not None and self._last_size != size:
            self.counters.size_changes += 1
            self._event("size_change", f"image size changed {self._last_size[0]}x{self._last_size[1]} -> "
                                       f"{size[0]}x{size[1]}: state reset")
            self.pipeline.reset()
        self._last_size = size
        self._last_stamp = stamp
        return True

    def published(self, stamp: int, t_start: float, compute_ms: float, publish_ms: float) -> None:
        """Book-keeping after an output: rates, latency, node overhead (work around the model)."""
        self._publish_ms.add(publish_ms)
        self._compute.add(compute_ms)
        self._overhead.add((time.perf_counter() - t_start) * 1e3 - compute_ms)
        self.counters.predictions += 1
        self._rate_out.tick()
        self._latency.add((self.get_clock().now().nanoseconds - stamp) / 1e6)

    # ------------------------------------------------------------------------------------ end of stream
    def input_count(self) -> Tuple[str, int]:  # pragma: no cover - abstract
        """(resolved topic name of the counted input, inputs received on it)."""
        raise NotImplementedError

    def unpaired(self) -> Tuple[int, int]:
        """(received inputs dropped without their partner messages, inputs still waiting for them)."""
        return 0, 0

    def _on_end_of_bag(self, msg) -> None:
        self._end_sent = {kv.key: int(kv.value) for kv in msg.values if kv.value.lstrip("-").isdigit()}
        topic, _ = self.input_count()
        self.get_logger().info(f"end of bag: the player sent {self._end_sent.get(topic, 0)} message(s) on {topic}")

    def _check_end(self) -> None:
        if self._end_sent is None or self.end_report is not None:
            return
        topic, received = self.input_count()
        sent = self._end_sent.get(topic, 0)
        progress = (received, self.unpaired(), self.counters.processed)
        if progress != self._end_progress:      # anything arriving restarts the end_timeout wait
            self._end_progress = progress
            self._last_input_t = time.monotonic()
        quiet = time.monotonic() - self._last_input_t
        if (received < sent or progress[1][1]) and quiet < self.config.end_timeout:
            return
        if not self.queue.idle():
            return
        self._publish_end(sent, received)

    def _publish_end(self, sent: int, received: int) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus
        self.refresh_counters()
        c = self.counters
        lost = max(0, sent - received)
        dropped_unpaired, waiting = self.unpaired()
        problems = []
        if lost:
            problems.append(f"{lost} of {sent} {self.INPUT}s never arrived")
        if dropped_unpaired or waiting:
            problems.append(f"{dropped_unpaired + waiting} {self.INPUT}s without their partner messages "
                            f"({dropped_unpaired} dropped, {waiting} still waiting)")
        if c.dropped:
            problems.append(f"{c.dropped} dropped unprocessed (frame_queue {self.config.frame_queue} full)")
        if c.tf_expired:
            problems.append(f"{c.tf_expired} dropped after waiting tf_timeout {self.config.tf_timeout:g} s "
                            f"for their pose")
        if c.errors:
            problems.append(f"{c.errors} failed in the worker")
        ok = not problems
        text = (f"all {sent} {self.INPUT}s processed" if ok else "; ".join(problems)) + \
            f" ({c.processed} processed, {c.predictions} depth maps)"
        values = [("sent", sent), ("received", received), ("lost", lost), ("unpaired", dropped_unpaired + waiting),
                  ("predictions", c.predictions)]
        values += [(k, v) for k, v in asdict(c).items() if k != "predictions"]
        self.end_report = make_status(f"{self.get_name()}: end of stream", self.get_fully_qualified_name(),
                                      DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR, text, values)
        (self.get_logger().info if ok else self.get_logger().error)(f"end of stream: {text}")
        self._end_pub.publish(self.end_report)

    # ------------------------------------------------------------------------------------ diagnostics
    def refresh_counters(self) -> None:
        """Copy counts kept elsewhere (the input synchroniser's) into ``counters``."""

    def diagnostic_extra(self) -> Tuple[List[str], List[Tuple[str, Any]]]:
        """(node-specific problems, node-specific values)."""
        return [], []

    def diagnostic_status(self):
        self.refresh_counters()
        c = self.counters
        lat_mean, lat_max, _ = self._latency.summary()
        ovh_mean, ovh_max, _ = self._overhead.summary()
        problems = [f"{c.errors} worker errors (last: {self._last_error})"] if c.errors else []
        extra_problems, extra_values = self.diagnostic_extra()
        problems += extra_problems
        if c.tf_failures:
            problems.append(f"{c.tf_failures} {self.INPUT}s without a pose ({c.tf_expired} dropped after "
                            f"waiting tf_timeout)")
        if c.dropped:
            problems.append(f"{c.dropped} {self.INPUT}s dropped (model slower than the input)")
        # the level and message reflect the recent window (OK again once the inputs are good); the lifetime
        # totals stay in the message's tail and in the values
        recent_level, recent = self._recent.summary()
        level = bytes([min(recent_level, 2)])      # DiagnosticStatus OK 0 / WARN 1 / ERROR 2
        message = recent or "ok"
        if problems:
            message += " (since start: " + "; ".join(problems) + ")"
        if self.input_count()[1] == 0:
            message = "waiting for images" + (f"; {message}" if recent or problems else "")
        waiting, queued, busy = self.queue.counts() if self.queue is not None else (0, 0, False)
        values = [("input_rate_hz", self._rate_in.rate()), ("output_rate_hz", self._rate_out.rate()),
                  ("latency_ms_mean", lat_mean), ("latency_ms_max", lat_max),
                  ("compute_ms_mean", self._compute.summary()[0]), ("node_overhead_ms_mean", ovh_mean),
                  ("node_overhead_ms_max", ovh_max), ("publish_ms_mean", self._publish_ms.summary()[0]),
                  ("queue_wait_ms_mean", self._queue_wait.summary()[0]),
                  ("pose_wait_ms_mean", self._pose_wait.summary()[0]),
                  ("heap_trim_ms_max", self._trim_ms.summary()[1]),
                  ("waiting_for_pose", waiting), ("waiting_for_worker", queued), ("busy", busy),
                  ("tf_backend", self.tf_backend)]
        values += extra_values
        values += list(asdict(c).items())
        if self.tf is not None:
            values.append(("tf_rejected", getattr(self.tf, "rejected", 0)))
            values.append(("tf_rejected_future", getattr(self.tf, "rejected_future", 0)))
        return make_status(f"{self.get_name()}: {self.TITLE}", self.get_fully_qualified_name(), level, message,
                           values)

    def publish_diagnostics(self) -> None:
        publish_status(self, self.pub_diag, self.diagnostic_status())
        now = time.monotonic()
        if self.config.trim_period > 0 and now - self._last_trim >= self.config.trim_period:
            self._last_trim = now
            C.trim_heap()
            self._trim_ms.add((time.monotonic() - now) * 1e3)

    # ------------------------------------------------------------------------------------ lifecycle
    def idle(self) -> bool:
        """True when no input waits for its pose or the worker and none is being processed."""
        return self.queue is None or self.queue.idle()

    #: seconds a shutdown (SIGINT, end of the bag) waits for the input being processed: ``ros2 launch`` escalates
    #: to SIGTERM 5 s after its SIGINT, and a keyframe of a slow model on a loaded CPU can take longer than that
    SHUTDOWN_WAIT_S = 2.0

    def shutdown(self) -> None:
        if self.queue is not None and not self.queue.stop(self.SHUTDOWN_WAIT_S):
            self.get_logger().warning(f"shutting down without the {self.INPUT} in progress (still being processed "
                                      f"after {self.SHUTDOWN_WAIT_S:g} s; its result is dropped)")

    def destroy_node(self):
        self.shutdown()
        return super().destroy_node()
