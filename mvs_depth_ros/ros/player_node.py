"""``player_node``: play a rosbag2 (mcap or sqlite3) over DDS without ``ros2 bag`` (rosbags + rclpy).

Publishes every recorded message as its recorded CDR bytes (``Publisher.publish(bytes)``: no
deserialisation, exact), paced by the bag's timestamps divided by ``rate``, after an optional
``start_offset`` into the bag, optionally looping. ``/clock`` (rosgraph_msgs/Clock) carries the bag
time, at ``clock_frequency`` Hz while waiting and right before each message, so nodes with
``use_sim_time`` follow the bag. Topics whose recorded QoS was transient-local (``/tf_static``) are
re-published transient-local, keeping all their messages for late subscribers.

Message types that rclpy cannot import here (e.g. ``tf2_msgs`` before it is generated) are reported
once and counted (``counters.unsupported``), never fatal; the rest of the bag still plays.

In-process use (the ``mvs-depth launch`` runner)::

    node = PlayerNode(bag="/path/bag", rate=2.0, loop=False)   # keyword = parameter override
    # or PlayerNode(parameter_overrides=[Parameter("bag", value=...)], context=ctx, namespace="/x")
    executor.add_node(node); ...; node.finished.wait()  # set when playback ends (not with loop)

Playback runs on its own thread (publishing is thread-safe in rclpy) and starts in the constructor
unless ``autostart`` is false (then call :meth:`start`).
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from ..data.bags import BagError, iter_messages, open_bag


@dataclass(frozen=True)
class PlayerConfig:
    bag: str
    rate: float = 1.0
    start_offset: float = 0.0
    loop: bool = False
    clock: bool = True
    clock_frequency: float = 20.0
    delay: float = 0.0
    topics: Tuple[str, ...] = ()
    wait_for_topics: Tuple[str, ...] = ()
    wait_timeout: float = 10.0
    qos_depth: int = 10

    def __post_init__(self) -> None:
        if not self.bag:
            raise ValueError("parameter 'bag' is required (path of a rosbag2 folder, .mcap or .db3 file)")
        if not self.rate > 0:
            raise ValueError(f"parameter 'rate' must be > 0, got {self.rate}")
        if self.start_offset < 0 or self.delay < 0 or self.wait_timeout < 0:
            raise ValueError("parameters 'start_offset', 'delay' and 'wait_timeout' must be >= 0")
        if not self.clock_frequency > 0:
            raise ValueError(f"parameter 'clock_frequency' must be > 0, got {self.clock_frequency}")
        if self.qos_depth < 1:
            raise ValueError(f"parameter 'qos_depth' must be >= 1, got {self.qos_depth}")


@dataclass
class PlayerCounters:
    published: Counter = field(default_factory=Counter)     # topic -> messages published
    unsupported: Counter = field(default_factory=Counter)   # topic -> messages skipped (type not importable)
    publish_errors: int = 0
    clock_ticks: int = 0
    loops: int = 0
    max_lateness_s: float = 0.0                            # worst delay behind the schedule


def _float_range(lo: float, hi: float) -> List[FloatingPointRange]:
    return [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]


_PARAMS = {
    # name: (default, description, extra descriptor fields)
    "bag": ("", "rosbag2 to play: a bag folder, or a bare .mcap / .db3 file", {}),
    "rate": (1.0, "playback speed factor (2.0 = twice as fast)",
             {"floating_point_range": _float_range(1e-3, 1000.0)}),
    "start_offset": (0.0, "seconds into the bag to start from (/tf_static is always published)",
                     {"floating_point_range": _float_range(0.0, 1e9)}),
    "loop": (False, "play the bag again from start_offset when it ends", {}),
    "clock": (True, "publish /clock (rosgraph_msgs/Clock) with the bag time", {}),
    "clock_frequency": (20.0, "minimum /clock rate in Hz while waiting for the next message (each /clock is a "
                        "callback in every use_sim_time node; /clock is also sent right before each message)",
                        {"floating_point_range": _float_range(0.1, 10000.0)}),
    "delay": (0.0, "seconds to wait (after wait_for_topics) before the first message",
              {"floating_point_range": _float_range(0.0, 3600.0)}),
    "topics": ([""], "topics to play (empty list or [''] = all)", {}),
    "wait_for_topics": ([""], "start only when each of these topics has a subscriber (or wait_timeout)", {}),
    "wait_timeout": (10.0, "longest wait for wait_for_topics, seconds",
                     {"floating_point_range": _float_range(0.0, 3600.0)}),
    "qos_depth": (10, "history depth of the volatile publishers",
                  {"integer_range": [IntegerRange(from_value=1, to_value=10000, step=1)]}),
    "autostart": (True, "start playback in the constructor (else call start())", {}),
    "end_of_bag_topic": ("/end_of_bag", "at the end of the bag, a transient-local diagnostic_msgs/DiagnosticStatus "
                         "with the number of messages sent per topic ('' = none); the process waits up to 10 s for "
                         "its subscribers to acknowledge it before exiting", {}),
}


def _overrides(parameter_overrides: Optional[Sequence[Parameter]], kw: Dict[str, object]) -> List[Parameter]:
    out = list(parameter_overrides or [])
    for k, v in kw.items():
        if k not in _PARAMS:
            raise TypeError(f"unknown parameter {k!r}; known: {', '.join(_PARAMS)}")
        if isinstance(v, (tuple, list)):
            v = [str(x) for x in v] or [""]
        out.append(Parameter(k, value=v))
    return out


def import_message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image, or raise ImportError/AttributeError."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class PlayerNode(Node):
    """Plays a rosbag2 over DDS with /clock. Keyword arguments are parameter overrides (see module doc)."""

    def __init__(self, node_name: str = "player", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Parameter]] = None, cli_args=None, **params):
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=_overrides(parameter_overrides, params))
        for name, (default, desc, extra) in _PARAMS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=desc, read_only=True, **extra))
        gp = lambda n: self.get_parameter(n).value  # noqa: E731
        self.config = PlayerConfig(
            bag=str(gp("bag")), rate=float(gp("rate")), start_offset=float(gp("start_offset")),
            loop=bool(gp("loop")), clock=bool(gp("clock")), clock_frequency=float(gp("clock_frequency")),
            delay=float(gp("delay")), topics=tuple(t for t in gp("topics") if t),
            wait_for_topics=tuple(t for t in gp("wait_for_topics") if t), wait_timeout=float(gp("wait_timeout")),
            qos_depth=int(gp("qos_depth")))
        self.counters = PlayerCounters()
        self.finished = threading.Event()
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._clock_ns = -1
        self._thread: Optional[threading.Thread] = None
        self._bag_pubs: Dict[str, object] = {}
        self._inspect_bag()
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self.config.clock else None
        self._end_pub = None
        if gp("end_of_bag_topic"):
            from diagnostic_msgs.msg import DiagnosticStatus
            self._end_pub = self.create_publisher(DiagnosticStatus, gp("end_of_bag_topic"), QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if gp("autostart"):
            self.start()

    # --------------------------------------------------------------------------------------- setup
    def _inspect_bag(self) -> None:
        """Read the bag's metadata once: time range, publishers per topic (BagError if unreadable)."""
        cfg = self.config
        with open_bag(cfg.bag) as reader:
            self.bag_start_ns = int(reader.start_time)
            self.bag_end_ns = int(reader.end_time) - 1 if reader.message_count else self.bag_start_ns
            topics = reader.topics
        wanted = set(cfg.topics) if cfg.topics else set(topics)
        missing = sorted(wanted - set(topics))
        if missing:
            self.get_logger().warning(f"{cfg.bag}: requested topics not in the bag: {', '.join(missing)}")
        self.transient_topics = set()
        for name, info in sorted(topics.items()):
            if name not in wanted:
                continue
            if info.msgtype is None:
                self.get_logger().error(f"{cfg.bag}: topic {name} has several message types; skipped")
                continue
            try:
                cls = import_message_class(info.msgtype)
                offered = [q for c in info.connections for q in (c.ext.offered_qos_profiles or [])]
                latched = name == "/tf_static" or any(q.durability.name == "TRANSIENT_LOCAL" for q in offered)
                self._bag_pubs[name] = self.create_publisher(cls, name, self._qos(latched, int(info.msgcount)))
            except Exception as exc:  # noqa: BLE001 - ImportError, or rclpy lacking the type support
                self._bag_pubs.pop(name, None)
                self.counters.unsupported[name] += 0
                self.get_logger().warning(
                    f"{name}: message type {info.msgtype} is not usable in rclpy here ({type(exc).__name__}: {exc}); its "
                    f"{info.msgcount} message(s) will be skipped and counted")
                continue
            if latched:
                self.transient_topics.add(name)
        self.played_topics = sorted(self._bag_pubs) + sorted(self.counters.unsupported)
        self.get_logger().info(
            f"bag {cfg.bag}: {(self.bag_end_ns - self.bag_start_ns) / 1e9:.3f} s, publishing "
            f"{len(self._bag_pubs)} topic(s) at rate {cfg.rate:g}"
            + (f" from +{cfg.start_offset:g} s" if cfg.start_offset else "") + (", looping" if cfg.loop else ""))

    def _qos(self, latched: bool, count: int) -> QoSProfile:
        if latched:   # keep every message of a latched topic for late subscribers (tf2 static listeners)
            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, count),
                              reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.config.qos_depth,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

    # ------------------------------------------------------------------------------------ playback
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bag_player", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def destroy_node(self):
        self.stop()
        return super().destroy_node()

    def _publish_clock(self, t_ns: int) -> None:
        """/clock within a pass never goes backwards; a new loop pass starts again from start_offset."""
        if self._clock_pub is None or t_ns < self._clock_ns:
            return
        self._clock_ns = t_ns
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(t_ns // 10**9), int(t_ns % 10**9)
        self._clock_pub.publish(msg)
        self.counters.clock_ticks += 1

    def _wait_for_subscribers(self) -> None:
        cfg = self.config
        if not cfg.wait_for_topics:
            return
        deadline = time.monotonic() + cfg.wait_timeout
        while not self._stop.is_set():
            lacking = [t for t in cfg.wait_for_topics if self.count_subscribers(t) < 1]
            if not lacking:
                return
            if time.monotonic() > deadline:
                self.get_logger().warning(f"no subscriber on {', '.join(lacking)} after {cfg.wait_timeout:g} s; "
                                          "playing anyway")
                return
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
            if self.config.delay and self._stop.wait(self.config.delay):
                return
            first = True
            while not self._stop.is_set():
                self._play_once(publish_static=first)
                first = False
                if not self.config.loop or self._stop.is_set():
                    break
                self.counters.loops += 1
            if not self._stop.is_set():
                c = self.counters
                skipped = sum(c.unsupported.values())
                self.get_logger().info(
                    f"playback finished: {sum(c.published.values())} messages on {len(c.published)} topic(s)"
                    + (f", {skipped} skipped (unsupported types on {', '.join(sorted(c.unsupported))})"
                       if skipped else "")
                    + f", max lateness {c.max_lateness_s * 1e3:.1f} ms")
                self._announce_end()
        except BagError as exc:
            self.error = str(exc)
            self.get_logger().error(str(exc))
        except Exception as exc:  # noqa: BLE001 - report, never kill the process from a thread
            self.error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"playback stopped: {self.error}")
        finally:
            self.finished.set()

    def _announce_end(self) -> None:
        """The end-of-bag report: messages sent per topic (evaluator / depth nodes compare their counts)."""
        if self._end_pub is None:
            return
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        sent = self.counters.published
        msg = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.get_name()}: end of bag",
                               message=f"{sum(sent.values())} messages sent", hardware_id=self.config.bag,
                               values=[KeyValue(key=t, value=str(n)) for t, n in sorted(sent.items())])
        self._end_pub.publish(msg)
        if not self._end_pub.wait_for_all_acked(Duration(seconds=10.0)):
            self.get_logger().warning("end-of-bag report: not every subscriber acknowledged it within 10 s")

    @property
    def exit_code(self) -> Optional[int]:
        """None while playing (or looping); 0 once the bag has been played and announced, 1 on a playback error."""
        if not self.finished.is_set():
            return None
        return 1 if self.error else 0

    def _play_once(self, publish_static: bool) -> None:
        cfg = self.config
        t_begin = self.bag_start_ns + int(round(cfg.start_offset * 1e9))
        clock_period = 1.0 / cfg.clock_frequency
        wall0: Optional[float] = None
        with open_bag(cfg.bag) as reader:
            if publish_static and self.transient_topics:     # latched topics from the whole bag, first
                for conn, t, raw in iter_messages(reader, cfg.bag, self.transient_topics, start=None):
                    self._publish(conn, raw, t)
            topics = [t for t in self.played_topics if t not in self.transient_topics]
            for conn, t, raw in iter_messages(reader, cfg.bag, topics, start=t_begin):
                if self._stop.is_set():
                    return
                if wall0 is None:
                    wall0 = time.monotonic()
                    self._clock_ns = -1
                    self._publish_clock(t)
                target = wall0 + (t - t_begin) / 1e9 / cfg.rate
                while True:
                    now = time.monotonic()
                    if now >= target:
                        break
                    if self._stop.wait(min(target - now, clock_period)):
                        return
                    # bag time now, never past the next message (oversleeping must not make /clock jump back)
                    self._publish_clock(min(t, t_begin + int((time.monotonic() - wall0) * cfg.rate * 1e9)))
                late = time.monotonic() - target
                if late > self.counters.max_lateness_s:
                    self.counters.max_lateness_s = late
                self._publish_clock(t)
                self._publish(conn, raw, t)

    def _publish(self, conn, raw, t: int) -> None:
        pub = self._bag_pubs.get(conn.topic)
        if pub is None:
            self.counters.unsupported[conn.topic] += 1
            return
        try:
            pub.publish(bytes(raw))
            self.counters.published[conn.topic] += 1
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop playback
            self.counters.publish_errors += 1
            self.get_logger().warning(f"{conn.topic}: could not publish the message at {t} ns: {exc}",
                                      throttle_duration_sec=5.0)


def main(args=None) -> int:
    """``ros2 run mvs_depth_ros player_node --ros-args -p bag:=PATH``: exits when the bag has been played."""
    from .node_main import spin_node
    return spin_node(PlayerNode, "player_node", args, large_messages=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
