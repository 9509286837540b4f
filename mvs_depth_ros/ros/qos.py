"""QoS profiles used by every mvs_depth_ros node (one place, so both sides of a topic agree).

* Camera inputs are subscribed **best effort** by default (REP 2003 sensor data): a best-effort
  subscription matches both best-effort and reliable publishers. Override with the node's
  ``qos_reliability`` parameter (``reliable`` needs a reliable publisher).
* Outputs (depth, confidence, points, depth_estimate) are published **reliable** by default, so they
  reach reliable subscribers (RViz's default) as well as best-effort ones; ``output_qos_reliability``
  switches them to best effort.
* ``/tf_static`` is reliable + transient-local (latched); ``/tf`` reliable, volatile, depth 100;
  ``/clock`` best effort depth 1; ``/diagnostics`` reliable depth 10.
"""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

RELIABILITY_CHOICES = ("best_effort", "reliable")
DURABILITY_CHOICES = ("volatile", "transient_local")

_REL = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
_DUR = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


def make_qos(reliability: str = "best_effort", depth: int = 5, durability: str = "volatile") -> QoSProfile:
    """A keep-last profile from plain strings (what parameters hold). Raises ValueError with the choices."""
    if reliability not in _REL:
        raise ValueError(f"reliability must be one of {RELIABILITY_CHOICES}, got {reliability!r}")
    if durability not in _DUR:
        raise ValueError(f"durability must be one of {DURABILITY_CHOICES}, got {durability!r}")
    if int(depth) < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=_REL[reliability],
                      durability=_DUR[durability])


def sensor_qos(depth: int = 5) -> QoSProfile:
    """REP 2003 sensor data: best effort, volatile, keep last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=qos_profile_sensor_data.reliability,
                      durability=qos_profile_sensor_data.durability)


def output_qos(depth: int = 5, reliability: str = "reliable") -> QoSProfile:
    return make_qos(reliability, depth)


def tf_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def tf_static_qos() -> QoSProfile:
    """Latched: late joiners get every static transform (the publisher must match: transient local)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def clock_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def diagnostics_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
