"""Shared helpers for tests that talk DDS (no ROS 2 distribution needed: the PyPI wheels do).

* :func:`require_rclpy` skips with the reason when rclpy (or a message package) cannot be imported;
* :func:`ros_env` is the environment every ROS test process uses: discovery on this host only
  (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), the project's Fast DDS profile (large SHM segment, so
  ~1 MB images are not lost best effort), and a ``ROS_DOMAIN_ID`` unique to this test run so parallel
  runs on one machine never see each other;
* :class:`NodeProcess` runs a node in its own process and keeps its log for the failure message;
* :class:`Probe` is an rclpy node in the test process with publishers / collecting subscriptions.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DDS_PROFILE = REPO_ROOT / "config" / "fastdds_profile.xml"
_DOMAIN_ID: Optional[int] = None


def require_rclpy():
    """Import rclpy + the message packages the tests use, or skip saying what is missing."""
    try:
        import rclpy  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
        import geometry_msgs.msg  # noqa: F401
        import diagnostic_msgs.msg  # noqa: F401
    except Exception as exc:  # ImportError, or the rmw library failing to load
        pytest.skip(f"rclpy / ROS 2 messages not importable ({type(exc).__name__}: {exc}); "
                    f"install them with tools/install_ros.sh or source a ROS 2 distribution")
    return rclpy


def domain_id() -> int:
    """One ROS_DOMAIN_ID per test run (process), in the range whose ports never collide (1..100)."""
    global _DOMAIN_ID
    if _DOMAIN_ID is None:
        env = os.environ.get("MVS_TEST_ROS_DOMAIN_ID")
        _DOMAIN_ID = int(env) if env else random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)
    return _DOMAIN_ID


def ros_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({
        "ROS_DOMAIN_ID": str(domain_id()),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(DDS_PROFILE),
        "PYTHONUNBUFFERED": "1",
        "MVS_TEST_THREADS": env.get("MVS_TEST_THREADS", "1"),
    })
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def apply_ros_env() -> None:
    """Put :func:`ros_env` into this process (before ``rclpy.init``)."""
    os.environ.update(ros_env())


class NodeProcess:
    """``python -m module --ros-args -p k:=v ...`` in its own process, log kept in a temp file."""

    def __init__(self, module: str, params: Optional[Dict[str, object]] = None, args: Optional[List[str]] = None,
                 remaps: Optional[Dict[str, str]] = None, env: Optional[Dict[str, str]] = None):
        cmd = [sys.executable, "-m", module]
        cmd += list(args or [])
        ros_args = []
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            ros_args += ["-p", f"{k}:={v}"]
        for k, v in (remaps or {}).items():
            ros_args += ["-r", f"{k}:={v}"]
        if ros_args:
            cmd += ["--ros-args"] + ros_args
        self.cmd = cmd
        self.extra_env = dict(env or {})
        self.log = tempfile.NamedTemporaryFile(prefix="node_", suffix=".log", delete=False)
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "NodeProcess":
        self.proc = subprocess.Popen(self.cmd, env={**ros_env(), **getattr(self, "extra_env", {})}, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=str(REPO_ROOT), start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class Probe:
    """A test-side node spun in a background thread: publishers and message-collecting subscriptions."""

    def __init__(self, name: str = "probe"):
        rclpy = require_rclpy()
        apply_ros_env()
        from rclpy.executors import SingleThreadedExecutor
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: Dict[str, list] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def subscribe(self, msg_type, topic: str, qos=None) -> list:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        box = self.received.setdefault(topic, [])

        def cb(msg, box=box):
            with self._lock:
                box.append((time.monotonic(), msg))
        self.node.create_subscription(msg_type, topic, cb, qos)
        return box

    def publisher(self, msg_type, topic: str, qos=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        return self.node.create_publisher(msg_type, topic, qos or QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def wait_for(self, pred: Callable[[], bool], timeout: float, proc: Optional[NodeProcess] = None) -> bool:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if pred():
                return True
            if proc is not None and not proc.alive():
                return pred()
            time.sleep(0.02)
        return pred()

    def wait_matched(self, pub, n: int = 1, timeout: float = 20.0) -> bool:
        return self.wait_for(lambda: pub.get_subscription_count() >= n, timeout)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy
        rclpy.shutdown(context=self.context)
