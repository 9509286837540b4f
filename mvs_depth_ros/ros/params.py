"""Parameters: declared once with descriptors (type, range, read-only), validated into a frozen dataclass.

:func:`declare_all` turns a table of :class:`Spec` into ``declare_parameter`` calls (ranges in the
descriptor, so ``ros2 param describe`` shows them and rclpy rejects out-of-range values), then checks the
choices; :class:`MvsConfig` validates the relations between values (``min_depth < max_depth``, ...).
A bad value raises :class:`ParameterError` naming the parameter and why.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


class ParameterError(ValueError):
    pass


@dataclass(frozen=True)
class Spec:
    default: Any
    description: str
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    read_only: bool = True  # changing it needs a reload (model, resolution, topics, QoS)

    def descriptor(self, name: str) -> ParameterDescriptor:
        desc = self.description
        if self.choices:
            desc += f" (one of: {', '.join(self.choices)})"
        d = ParameterDescriptor(name=name, description=desc, read_only=self.read_only)
        if self.min is not None or self.max is not None:
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                d.integer_range = [IntegerRange(from_value=int(self.min if self.min is not None else -2**31),
                                                to_value=int(self.max if self.max is not None else 2**31 - 1), step=0)]
            elif isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(self.min if self.min is not None else -1e300),
                                                             to_value=float(self.max if self.max is not None else 1e300),
                                                             step=0.0)]
        return d

    def check(self, name: str, value: Any) -> Any:
        if self.choices and not _in_choices(value, self.choices):
            raise ParameterError(f"parameter {name}={value!r}: must be one of {', '.join(self.choices)}")
        if isinstance(self.default, (int, float)) and not isinstance(self.default, bool):
            if self.min is not None and value < self.min or self.max is not None and value > self.max:
                raise ParameterError(f"parameter {name}={value!r}: must be in [{self.min}, {self.max}]")
        return value


def _in_choices(value: Any, choices: Sequence[str]) -> bool:
    # "cuda:N" style choices: a trailing ":N" accepts any integer suffix
    for c in choices:
        if c.endswith(":N") and isinstance(value, str) and value.startswith(c[:-1]) and value[len(c) - 1:].isdigit():
            return True
    return value in choices


def declare_all(node, specs: Dict[str, Spec]) -> Dict[str, Any]:
    """Declare every parameter (overrides from YAML / CLI apply) and return name -> checked value."""
    from rclpy.exceptions import InvalidParameterValueException, ParameterException
    values = {}
    for name, spec in specs.items():
        try:
            p = node.declare_parameter(name, spec.default, spec.descriptor(name))
        except (InvalidParameterValueException, ParameterException, TypeError) as exc:
            raise ParameterError(f"parameter {name}: {exc}") from exc
        values[name] = check_value(name, spec, p.value)
    return values


def check_value(name: str, spec: Spec, value: Any) -> Any:
    """A parameter value of the declared type (ints accepted for floats) within its range / choices."""
    if isinstance(spec.default, float) and isinstance(value, int):
        value = float(value)
    if type(value) is not type(spec.default):
        raise ParameterError(f"parameter {name}={value!r}: expected {type(spec.default).__name__}")
    return spec.check(name, value)


def live_changes(specs: Dict[str, Spec], params: Sequence[Any]) -> Dict[str, Any]:
    """Checked ``{name: value}`` of a set-parameters request (rclpy ``Parameter`` objects); parameters not in
    ``specs`` are ignored; a read-only, mistyped or out-of-range one raises :class:`ParameterError`."""
    changes = {}
    for p in params:
        spec = specs.get(p.name)
        if spec is None:
            continue
        if spec.read_only:
            raise ParameterError(f"{p.name} is read-only (restart the node)")
        changes[p.name] = check_value(p.name, spec, p.value)
    return changes


def with_changes(config: Any, changes: Dict[str, Any]) -> Any:
    """``config`` (a frozen dataclass with ``from_values``) with ``changes`` applied and re-validated."""
    if not changes:
        return config
    values = asdict(config)
    values.update(changes)
    return type(config).from_values(values)


# ---------------------------------------------------------------------------------------------------
# every depth node
# ---------------------------------------------------------------------------------------------------

#: parameters every depth node declares (merged into the nodes' tables)
COMMON_SPECS: Dict[str, Spec] = {
    "approximate_sync": Spec(False, "pair the input topics (image + camera_info; stereo: left/right images + camera_infos) "
                                    "by nearest stamp instead of equal stamps"),
    "approximate_sync_tolerance_seconds": Spec(0.005, "approximate_sync: largest stamp difference within a set, s",
                                               0.0, 10.0),
    "queue_size": Spec(5, "unmatched messages kept per input topic while waiting for the others", 1, 1000),
    "tf_timeout": Spec(0.1, "seconds an input waits for the transform at its stamp (tf2 MessageFilter): released "
                            "as soon as it arrives, dropped and counted (tf_expired) when the wait expires",
                       0.0, 3600.0, read_only=False),
    "frame_queue": Spec(1, "inputs waiting for the model: 1 = latest wins (live: a slow model drops inputs, "
                           "counted, never queues latency); N > 1 = keep up to N in order, dropping the oldest "
                           "when full (bag evaluation: every input processed)", 1, 100000),
    "sync_backend": Spec("auto", "stamp pairing of the input topics: message_filters (when importable; auto) or "
                                 "the package's own matcher (builtin)", choices=("auto", "message_filters", "builtin")),
    "end_of_bag_topic": Spec("", "bag evaluation: the player's end-of-bag report (diagnostic_msgs/DiagnosticStatus, "
                                 "images sent per topic); the node then publishes its end_of_stream report once "
                                 "every image is accounted for ('' = off)"),
    "tf_max_future": Spec(5.0, "transforms and images stamped more than this many seconds after the newest image "
                               "stamp / the clock are rejected and counted (a publisher with a wrong clock)", 0.01, 3600.0),
    "diagnostics_window": Spec(5.0, "seconds of recent problems that set the /diagnostics level and message (OK again "
                                    "once the inputs have been good this long; counters stay lifetime)", 0.1, 3600.0),
    "trim_period": Spec(10.0, "seconds between returning the heap's free pages to the OS (glibc malloc_trim; keeps "
                              "RSS at the live working set in long runs; 0 = never)", 0.0, 3600.0),
    "end_timeout": Spec(30.0, "after the end of the bag, seconds without a new image before the missing ones count "
                              "as lost", 0.1, 3600.0),
    # outputs (live-tunable)
    "publish_points": Spec(True, "publish the points PointCloud2", read_only=False),
    "points_dense": Spec(False, "points: drop invalid points (true) or keep the image grid with NaN (false)",
                         read_only=False),
    "points_stride": Spec(1, "points: keep every n-th pixel in both directions", 1, 64, read_only=False),
    "points_max_range": Spec(0.0, "points: drop points farther than this, metres (0 = no limit)", 0.0, 1e4,
                             read_only=False),
    "points_confidence": Spec(True, "points: add a confidence field", read_only=False),
    # transforms
    "tf_backend": Spec("auto", "tf implementation", choices=("auto", "tf2_ros", "builtin")),
    "tf_cache_time": Spec(10.0, "seconds of transforms kept", 0.1, 3600.0),
    "tf_max_gap": Spec(0.5, "largest time between two transforms to interpolate across, seconds", 1e-3, 3600.0),
    "time_jump_reset": Spec(1.0, "a stamp this far behind the last (s) resets everything (bag loop); smaller "
                                 "backward steps drop the input", 0.0, 3600.0),
    # QoS
    "qos_reliability": Spec("best_effort", "input subscriptions (REP 2003 sensor data)",
                            choices=("best_effort", "reliable")),
    "qos_depth": Spec(5, "input queue depth", 1, 1000),
    "output_qos_reliability": Spec("reliable", "output publishers", choices=("best_effort", "reliable")),
    "output_qos_depth": Spec(5, "output queue depth", 1, 1000),
    # diagnostics / logs
    "diagnostics_period": Spec(1.0, "seconds between /diagnostics messages", 0.05, 60.0),
    "warn_period": Spec(5.0, "the same warning is logged at most once per this many seconds", 0.0, 3600.0),
}


@dataclass(frozen=True)
class DepthNodeConfig:
    """The validated parameters every depth node has: its own table's ``model``, ``checkpoint``, ``device``,
    ``confidence_threshold``, ``camera_frame``, ``world_frame`` and :data:`COMMON_SPECS`. The nodes' configs
    (:class:`MvsConfig`, ``stereo_node.StereoConfig``) add their own fields."""
    model: str
    checkpoint: str
    device: str
    confidence_threshold: float
    camera_frame: str
    world_frame: str
    approximate_sync: bool
    approximate_sync_tolerance_seconds: float
    queue_size: int
    tf_timeout: float
    frame_queue: int
    sync_backend: str
    end_of_bag_topic: str
    tf_max_future: float
    diagnostics_window: float
    trim_period: float
    end_timeout: float
    publish_points: bool
    points_dense: bool
    points_stride: int
    points_max_range: float
    points_confidence: bool
    tf_backend: str
    tf_cache_time: float
    tf_max_gap: float
    time_jump_reset: float
    qos_reliability: str
    qos_depth: int
    output_qos_reliability: str
    output_qos_depth: int
    diagnostics_period: float
    warn_period: float

    def __post_init__(self) -> None:
        if self.checkpoint:
            import os
            if not os.path.isfile(self.checkpoint):
                raise ParameterError(f"parameter checkpoint={self.checkpoint!r}: no such file")

    @classmethod
    def from_values(cls, values: Dict[str, Any]):
        return cls(**{f.name: values[f.name] for f in fields(cls)})



# ---------------------------------------------------------------------------------------------------
# mvs_node
# ---------------------------------------------------------------------------------------------------

MVS_SPECS: Dict[str, Spec] = {
    # model
    "model": Spec("planesweep", "depth estimator (registry name; learned models need checkpoint)"),
    "checkpoint": Spec("", "checkpoint file for a learned model ('' = none: learned models fall back to planesweep)"),
    "device": Spec("auto", "torch device", choices=("auto", "cpu", "cuda", "cuda:N")),
    "n_planes": Spec(0, "depth hypotheses of the plane sweep (0 = the model's default)", 0, 1024),
    "model_options": Spec("", "further estimator options, KEY=VALUE separated by commas (as mvs-depth run "
                              "--model-option), e.g. 'compile=true' for a long-running node (the first depth waits for "
                              "the compilation: about a minute on 2 cores)"),
    "width": Spec(320, "working width (images are resized to it, K rescaled)", 8, 8192),
    "height": Spec(256, "working height", 8, 8192),
    "min_depth": Spec(0.25, "nearest depth, metres", 1e-3, 1e4),
    "max_depth": Spec(20.0, "farthest depth, metres", 1e-3, 1e4),
    "n_measurement_frames": Spec(2, "measurement keyframes per prediction", 1, 16),
    "keyframe_buffer_size": Spec(30, "keyframes kept", 2, 1000),
    "keyframe_pose_distance": Spec(0.1, "pose distance that makes a new keyframe", 0.0, 100.0),
    "optimal_t_measure": Spec(0.15, "preferred measurement-frame baseline, metres", 0.0, 100.0),
    "tracking_lost_frames": Spec(30, "frames without a pose before the keyframes and state are reset", 0, 100000),
    "temporal_fusion": Spec(True, "fuse each keyframe's depth with the previous keyframes' re-projected into it"),
    # outputs
    "confidence_threshold": Spec(0.0, "depth below this confidence is published as NaN (0 = keep all)", 0.0, 1.0,
                                 read_only=False),
    "publish_depth_mm": Spec(False, "also publish depth_mm (16UC1 millimetres, 0 invalid)"),
    # poses
    "pose_source": Spec("tf", "where camera poses come from", choices=("tf", "pose", "odometry")),
    "world_frame": Spec("odom", "continuous world frame of the poses (REP 105)"),
    "camera_frame": Spec("", "camera optical frame ('' = the image header's frame_id)"),
    "pose_tolerance": Spec(0.02, "pose topic: largest |pose stamp - image stamp|, seconds", 0.0, 10.0),
    "reset_after_pose_gap": Spec(1.0, "reset keyframes + state when no pose for this long, seconds (0 = never)",
                                 0.0, 3600.0),
    **COMMON_SPECS,
}


@dataclass(frozen=True)
class MvsConfig(DepthNodeConfig):
    n_planes: int
    model_options: str
    width: int
    height: int
    min_depth: float
    max_depth: float
    n_measurement_frames: int
    keyframe_buffer_size: int
    keyframe_pose_distance: float
    optimal_t_measure: float
    tracking_lost_frames: int
    temporal_fusion: bool
    publish_depth_mm: bool
    pose_source: str
    pose_tolerance: float
    reset_after_pose_gap: float

    def __post_init__(self) -> None:
        from ..models.registry import available_models
        if self.model not in available_models():
            raise ParameterError(f"parameter model={self.model!r}: unknown; available: {', '.join(available_models())}")
        try:
            self.estimator_options()
        except ValueError as exc:
            raise ParameterError(f"parameter model_options={self.model_options!r}: {exc}") from exc
        if not self.min_depth < self.max_depth:
            raise ParameterError(f"parameters min_depth={self.min_depth} / max_depth={self.max_depth}: need min < max")
        if not self.world_frame:
            raise ParameterError("parameter world_frame must not be empty")
        super().__post_init__()

    def estimator_options(self) -> Dict[str, Any]:
        """``model_options`` parsed (``ValueError`` on a malformed item)."""
        from ..models.registry import parse_model_options
        return parse_model_options(self.model_options)
