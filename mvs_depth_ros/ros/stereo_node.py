"""``stereo_node``: dense metric depth from a rectified stereo pair (SGBM, or a learned stereo network).

Subscribes (best effort by default, REP 2003; ``qos_reliability`` overrides):

* ``left/image_rect``, ``right/image_rect`` (sensor_msgs/Image rgb8 / bgr8 / mono8, **rectified**), paired
  by stamp: exactly (default) or, with ``approximate_sync``, the nearest stamp within
  ``approximate_sync_tolerance_seconds``; at most ``queue_size`` unmatched images are kept per side
  (``message_filters``' policies and ``stereo_image_proc``'s parameter names; the PyPI ROS wheels have no
  ``message_filters``, so the node pairs stamps itself: :class:`PairSynchronizer`);
* ``left/camera_info``, ``right/camera_info`` (latest kept per side): K from the left projection P,
  baseline ``B = -Tx / fx`` from the right P (``Tx = P[0, 3] = -fx * B``), ``doffs = cx_right - cx_left``;
* optional poses for the temporal filter's warp: TF ``world_frame`` <- the left optical frame at the
  image stamp when ``world_frame`` is set (``/tf`` + transient-local ``/tf_static``); with
  ``world_frame: ''`` the temporal filter runs without poses (a still rig).

Publishes, stamped with the left image's stamp and frame (REP 103/105/118), reliable by default:

* ``disparity`` (stereo_msgs/DisparityImage: ``32FC1`` disparity adjusted for the principal-point offset,
  ``d = x_l - x_r + doffs`` so ``Z = f * T / d``; invalid pixels are ``min_disparity - 1`` as the message
  definition says; ``f``, ``T``, ``min_disparity``, ``max_disparity``, ``delta_d``, ``valid_window``);
* ``depth`` (32FC1 metres, NaN invalid), ``confidence`` (32FC1 in [0, 1]), ``depth/camera_info`` (the
  left camera, P = [K | 0]), ``points`` (PointCloud2 x y z rgb [confidence] in the left optical frame,
  built only while subscribed);
* ``/diagnostics``: rates, latency, drops, rejections (per reason), TF failures, model, device.

The node only converts: pairs go to :class:`mvs_depth_ros.core.stereo.StereoPipeline` (estimator from
the stereo registry, optionally wrapped in the temporal filter; state reset on stamp gaps, bag loops, size
changes). Inference runs in a worker thread behind a latest-pair-wins slot, as in ``mvs_node``. Bad
input (unpaired images, left/right size mismatch, missing camera_info, bad calibration, unsupported
encodings, stamps going backwards) is logged (rate limited), counted in ``/diagnostics`` and never stops
the node.
"""
from __future__ import annotations

import bisect
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, RegionOfInterest
from stereo_msgs.msg import DisparityImage

from ..core.frame import StereoFrame, scale_intrinsics
from ..core.stereo import StereoPipeline, StereoPipelineConfig
from ..data.stereo_bags import stereo_geometry
from ..models.registry import DEFAULT_STEREO_MODEL, available_stereo_models, create_stereo_model
from ..models.stereo.sgbm import SGBMConfig
from ..models.stereo.temporal import TemporalConfig, TemporalStereo
from . import conversions as C
from .diagnostics import RateLimitedLog, RateWindow, Stats, make_status, publish_status
from .node_main import spin_node
from .params import ParameterError, Spec, declare_all, live_changes, with_changes
from .qos import diagnostics_qos, make_qos
from .tf_buffer import TransformError, make_tf_lookup

# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------

_SGBM_MODES = ("sgbm", "hh", "sgbm_3way", "hh4")

STEREO_SPECS: Dict[str, Spec] = {
    # model
    "model": Spec(DEFAULT_STEREO_MODEL, "stereo estimator (registry name; learned models need checkpoint, "
                                        "else they fall back to sgbm)", choices=tuple(available_stereo_models())),
    "checkpoint": Spec("", "checkpoint file of a learned stereo model ('' = none)"),
    "device": Spec("auto", "torch device (SGBM always runs on the CPU)", choices=("auto", "cpu", "cuda", "cuda:N")),
    # SGBM (cv2.StereoSGBM names, as stereo_image_proc's)
    "min_disparity": Spec(0, "SGBM: smallest disparity searched, px", -1024, 1024),
    "num_disparities": Spec(64, "SGBM: disparity search range, px (a multiple of 16)", 16, 1024),
    "block_size": Spec(5, "SGBM: matching block size (odd)", 1, 51),
    "p1": Spec(0, "SGBM: small smoothness penalty (0 = 8 * channels * block_size^2)", 0, 100000),
    "p2": Spec(0, "SGBM: large smoothness penalty (0 = 32 * channels * block_size^2)", 0, 400000),
    "uniqueness_ratio": Spec(5, "SGBM: uniqueness filter, per cent", 0, 100),
    "speckle_window_size": Spec(100, "SGBM: speckle filter region size (0 = off)", 0, 10000),
    "speckle_range": Spec(2, "SGBM: speckle filter disparity variation", 0, 1000),
    "sgbm_mode": Spec("sgbm", "SGBM: OpenCV mode", choices=_SGBM_MODES),
    "lr_check": Spec(True, "SGBM: left-right consistency check"),
    "lr_max_diff": Spec(1.0, "SGBM: largest left-right disagreement kept, px", 0.0, 100.0),
    # temporal filter (models/stereo/temporal.py)
    "temporal": Spec(False, "recursive, pose-aware temporal filtering of the disparity"),
    "temporal_decay": Spec(0.95, "temporal: weight decay per frame", 1e-3, 1.0),
    "temporal_max_weight": Spec(8.0, "temporal: largest accumulated weight (about that many frames of memory)",
                                1e-3, 1000.0),
    "temporal_outlier_px": Spec(1.0, "temporal: measurement/prediction disagreement that restarts a pixel, px",
                                0.0, 1000.0),
    "temporal_outlier_rel": Spec(0.05, "temporal: relative disagreement that restarts a pixel", 0.0, 10.0),
    "temporal_fill_missing": Spec(False, "temporal: keep predicted disparity where the measurement has none"),
    "temporal_use_poses": Spec(True, "temporal: warp the state with the camera motion (needs world_frame)"),
    "temporal_reset_translation": Spec(0.5, "temporal: motion between frames that resets the state, m", 1e-6, 1e3),
    "temporal_reset_rotation_deg": Spec(20.0, "temporal: rotation between frames that resets the state, deg",
                                        1e-6, 180.0),
    "max_gap": Spec(1.0, "reset the temporal state when pairs are further apart than this, s (0 = never)",
                    0.0, 3600.0),
    "time_jump_reset": Spec(1.0, "a stamp this far behind the last (s) resets everything (bag loop); smaller "
                                 "backward steps drop the pair", 0.0, 3600.0),
    # synchronisation (stereo_image_proc names)
    "approximate_sync": Spec(False, "pair left/right images by nearest stamp instead of equal stamps"),
    "approximate_sync_tolerance_seconds": Spec(0.005, "approximate_sync: largest |left - right| stamp, s",
                                               0.0, 10.0),
    "queue_size": Spec(5, "unmatched images kept per side while waiting for the other side", 1, 1000),
    # live-tunable outputs
    "confidence_threshold": Spec(0.0, "disparity/depth/points below this confidence are invalid (0 = keep all)",
                                 0.0, 1.0, read_only=False),
    "publish_points": Spec(True, "publish the points PointCloud2", read_only=False),
    "points_dense": Spec(False, "points: drop invalid points (true) or keep the image grid with NaN (false)",
                         read_only=False),
    "points_stride": Spec(1, "points: keep every n-th pixel in both directions", 1, 64, read_only=False),
    "points_max_range": Spec(0.0, "points: drop points farther than this, m (0 = no limit)", 0.0, 1e4,
                             read_only=False),
    "points_confidence": Spec(True, "points: add a confidence field", read_only=False),
    # frames / poses
    "camera_frame": Spec("", "left optical frame of the outputs ('' = the left image header's frame_id)"),
    "world_frame": Spec("", "continuous world frame for the temporal warp ('' = no poses; REP 105 odom)"),
    "tf_backend": Spec("auto", "tf implementation", choices=("auto", "tf2_ros", "builtin")),
    "tf_timeout": Spec(0.1, "seconds to wait for the pose at an image stamp", 0.0, 10.0, read_only=False),
    "tf_cache_time": Spec(10.0, "seconds of transforms kept", 0.1, 3600.0),
    "tf_max_gap": Spec(0.5, "largest time between two transforms to interpolate across, s", 1e-3, 3600.0),
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
class StereoConfig:
    model: str
    checkpoint: str
    device: str
    min_disparity: int
    num_disparities: int
    block_size: int
    p1: int
    p2: int
    uniqueness_ratio: int
    speckle_window_size: int
    speckle_range: int
    sgbm_mode: str
    lr_check: bool
    lr_max_diff: float
    temporal: bool
    temporal_decay: float
    temporal_max_weight: float
    temporal_outlier_px: float
    temporal_outlier_rel: float
    temporal_fill_missing: bool
    temporal_use_poses: bool
    temporal_reset_translation: float
    temporal_reset_rotation_deg: float
    max_gap: float
    time_jump_reset: float
    approximate_sync: bool
    approximate_sync_tolerance_seconds: float
    queue_size: int
    confidence_threshold: float
    publish_points: bool
    points_dense: bool
    points_stride: int
    points_max_range: float
    points_confidence: bool
    camera_frame: str
    world_frame: str
    tf_backend: str
    tf_timeout: float
    tf_cache_time: float
    tf_max_gap: float
    qos_reliability: str
    qos_depth: int
    output_qos_reliability: str
    output_qos_depth: int
    diagnostics_period: float
    warn_period: float

    def __post_init__(self) -> None:
        try:
            self.sgbm_config()
            self.temporal_config()
        except ValueError as exc:
            raise ParameterError(f"parameters: {exc}") from None
        if self.checkpoint:
            import os
            if not os.path.exists(self.checkpoint):
                raise ParameterError(f"parameter checkpoint={self.checkpoint!r}: no such file")

    def sgbm_config(self) -> SGBMConfig:
        return SGBMConfig(min_disparity=self.min_disparity, num_disparities=self.num_disparities,
                          block_size=self.block_size, p1=self.p1, p2=self.p2, uniqueness_ratio=self.uniqueness_ratio,
                          speckle_window_size=self.speckle_window_size, speckle_range=self.speckle_range,
                          mode=self.sgbm_mode, lr_check=self.lr_check, lr_max_diff=self.lr_max_diff)

    def sgbm_options(self) -> Dict[str, Any]:
        c = self.sgbm_config()
        return {f.name: getattr(c, f.name) for f in fields(SGBMConfig) if f.name != "uniqueness_levels"}

    def temporal_config(self) -> TemporalConfig:
        return TemporalConfig(decay=self.temporal_decay, max_weight=self.temporal_max_weight,
                              outlier_px=self.temporal_outlier_px, outlier_rel=self.temporal_outlier_rel,
                              fill_missing=self.temporal_fill_missing, use_poses=self.temporal_use_poses,
                              reset_translation=self.temporal_reset_translation,
                              reset_rotation_deg=self.temporal_reset_rotation_deg)

    @classmethod
    def from_values(cls, values: Dict[str, Any]) -> "StereoConfig":
        return cls(**{f.name: values[f.name] for f in fields(cls)})


# ---------------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------------

class PairSynchronizer:
    """Pairs left/right messages by stamp (no rclpy; the policy of ``message_filters``' synchronisers).

    ``add(side, stamp_ns, msg)`` (side 0 = left, 1 = right) returns ``(pair or None, dropped)``: a pair
    ``(stamp_left, left_msg, right_msg)`` as soon as both sides have a match -- equal stamps, or with
    ``approximate`` the nearest stamp of the other side within ``tolerance_s``. When a pair is made, every
    older unmatched message of either side can no longer be matched and is dropped; a side holding more
    than ``queue_size`` unmatched messages drops its oldest. ``dropped`` counts those messages.
    """

    def __init__(self, approximate: bool = False, tolerance_s: float = 0.0, queue_size: int = 5):
        if queue_size < 1 or tolerance_s < 0:
            raise ValueError(f"need queue_size >= 1 and tolerance_s >= 0, got {queue_size}, {tolerance_s}")
        self.approximate = bool(approximate)
        self.tolerance_ns = int(round(tolerance_s * 1e9)) if approximate else 0
        self.queue_size = int(queue_size)
        self._q: Tuple[List[Tuple[int, Any]], List[Tuple[int, Any]]] = ([], [])
        self._lock = threading.Lock()

    def clear(self) -> int:
        with self._lock:
            n = len(self._q[0]) + len(self._q[1])
            self._q[0].clear()
            self._q[1].clear()
            return n

    def pending(self) -> Tuple[int, int]:
        return len(self._q[0]), len(self._q[1])

    def _match(self, other: List[Tuple[int, Any]], stamp: int) -> Optional[int]:
        if not other:
            return None
        stamps = [s for s, _ in other]
        k = bisect.bisect_left(stamps, stamp)
        best = min((j for j in (k - 1, k) if 0 <= j < len(other)), key=lambda j: abs(stamps[j] - stamp))
        return best if abs(stamps[best] - stamp) <= self.tolerance_ns else None

    def add(self, side: int, stamp_ns: int, msg: Any) -> Tuple[Optional[Tuple[int, Any, Any]], int]:
        if side not in (0, 1):
            raise ValueError(f"side must be 0 (left) or 1 (right), got {side}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            mine, other = self._q[side], self._q[1 - side]
            j = self._match(other, stamp_ns)
            if j is None:
                stamps = [s for s, _ in mine]
                k = bisect.bisect_left(stamps, stamp_ns)
                dropped = 0
                if k < len(mine) and mine[k][0] == stamp_ns:
                    mine[k] = (stamp_ns, msg)    # a repeated stamp replaces the earlier message
                    dropped = 1
                else:
                    mine.insert(k, (stamp_ns, msg))
                while len(mine) > self.queue_size:
                    mine.pop(0)
                    dropped += 1
                return None, dropped
            s_other, m_other = other.pop(j)
            # everything older than the pair on either side can no longer be paired
            dropped = 0
            for q, s in ((mine, stamp_ns), (other, s_other)):
                n = bisect.bisect_left([x for x, _ in q], s)
                del q[:n]
                dropped += n
            left, right = (msg, m_other) if side == 0 else (m_other, msg)
            return ((stamp_ns if side == 0 else s_other), left, right), dropped


# ---------------------------------------------------------------------------------------------------
# node
# ---------------------------------------------------------------------------------------------------

@dataclass
class StereoNodeCounters:
    left_images: int = 0          # left image messages received
    right_images: int = 0
    pairs: int = 0                # synchronised pairs
    unsynchronized: int = 0       # images dropped without a partner (stamps never matched)
    processed: int = 0            # pairs given to the pipeline
    dropped: int = 0              # pairs replaced in the slot before the worker took them (model too slow)
    rejected_encoding: int = 0
    rejected_corrupt: int = 0     # undecodable image / camera_info, empty frame_id
    no_camera_info: int = 0       # pair before camera_info of both sides
    camera_info_mismatch: int = 0  # camera_info size differs from the images (and not a rescale)
    bad_calibration: int = 0      # right P without a baseline (Tx), non-finite P
    size_mismatch: int = 0        # left and right images of a pair differ in size
    stamp_backwards: int = 0      # dropped: stamp not after the previous pair's
    time_jumps: int = 0           # large backward jumps: everything reset
    size_changes: int = 0
    tf_failures: int = 0          # no pose at the stamp (world_frame set)
    predictions: int = 0          # disparity/depth published
    errors: int = 0               # unexpected exceptions in the worker (logged with traceback)


def _overrides(parameter_overrides: Optional[Sequence[Parameter]], params: Dict[str, Any]) -> List[Parameter]:
    return list(parameter_overrides or []) + [Parameter(k, value=v) for k, v in params.items()]


def _disparity_range(estimator, width: int) -> Tuple[float, float, float]:
    """``(min, max, delta_d)`` of the disparities ``estimator`` can output (unadjusted, px)."""
    base = getattr(estimator, "base", estimator)
    cfg = getattr(base, "config", None)
    if isinstance(cfg, SGBMConfig):
        return float(cfg.min_disparity), float(cfg.min_disparity + cfg.num_disparities - 1), 1.0 / 16.0
    lo = float(getattr(base, "min_disparity", 0.0))
    hi = float(getattr(base, "max_disparity", width - 1))
    return lo, hi, float(getattr(base, "disparity_step", 0.0))


class StereoNode(Node):
    """See the module docstring. Keyword arguments are parameter overrides (``StereoNode(num_disparities=32)``)."""

    def __init__(self, node_name: str = "stereo_node", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Parameter]] = None, cli_args=None, **params):
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=_overrides(parameter_overrides, params))
        self.config = StereoConfig.from_values(declare_all(self, STEREO_SPECS))
        cfg = self.config
        log = self.get_logger()
        self.counters = StereoNodeCounters()
        self._warn = RateLimitedLog(log.warning, cfg.warn_period)

        # core ------------------------------------------------------------------------------------------
        uses_sgbm = cfg.model == DEFAULT_STEREO_MODEL or not cfg.checkpoint
        options = cfg.sgbm_options() if uses_sgbm else {}
        try:
            base = create_stereo_model(cfg.model, cfg.checkpoint or None, cfg.device, **options)
        except (RuntimeError, ValueError) as exc:   # model not in this install, unusable checkpoint
            raise ParameterError(f"parameter model={cfg.model!r}: {exc}") from exc
        self.estimator = TemporalStereo(base, cfg.temporal_config()) if cfg.temporal else base
        self.model_name = getattr(self.estimator, "name", cfg.model)
        self.pipeline = StereoPipeline(self.estimator, StereoPipelineConfig(max_gap_s=cfg.max_gap))
        self.sync = PairSynchronizer(cfg.approximate_sync, cfg.approximate_sync_tolerance_seconds, cfg.queue_size)

        # state -----------------------------------------------------------------------------------------
        self._info: List[Optional[CameraInfo]] = [None, None]
        self._distortion_warned = False
        self._last_stamp: Optional[int] = None
        self._last_size: Optional[Tuple[int, int]] = None
        self._last_geometry: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # fx, baseline, doffs
        self._slot: Optional[tuple] = None           # (stamp, left Image, right Image, receive monotonic time)
        self._slot_cv = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._rate_in, self._rate_out = RateWindow(), RateWindow()
        self._latency, self._compute, self._overhead, self._publish_ms = Stats(), Stats(), Stats(), Stats()
        self._last_error = ""

        # I/O -------------------------------------------------------------------------------------------
        in_qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        out_qos = make_qos(cfg.output_qos_reliability, cfg.output_qos_depth)
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "left/image_rect", lambda m: self._on_image(0, m), in_qos,
                                 callback_group=self._io_group)
        self.create_subscription(Image, "right/image_rect", lambda m: self._on_image(1, m), in_qos,
                                 callback_group=self._io_group)
        self.create_subscription(CameraInfo, "left/camera_info", lambda m: self._on_camera_info(0, m), in_qos,
                                 callback_group=self._io_group)
        self.create_subscription(CameraInfo, "right/camera_info", lambda m: self._on_camera_info(1, m), in_qos,
                                 callback_group=self._io_group)
        self.tf = None
        self.tf_backend = "off"
        self._tf_unavailable = ""
        if cfg.world_frame:
            try:
                self.tf, self.tf_backend = make_tf_lookup(self, cfg.tf_backend, cfg.tf_cache_time, cfg.tf_max_gap,
                                                          on_error=lambda t: self._warn("tf_reject", t),
                                                          callback_group=self._tf_group)
            except (RuntimeError, ImportError) as exc:
                self._tf_unavailable = str(exc)
                self.tf_backend = "unavailable"
                log.error(f"world_frame {cfg.world_frame!r} set but tf is unavailable: {exc}; the temporal filter "
                          f"runs without poses")
        self.pub_disp = self.create_publisher(DisparityImage, "disparity", out_qos)
        self.pub_depth = self.create_publisher(Image, "depth", out_qos)
        self.pub_conf = self.create_publisher(Image, "confidence", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, "depth/camera_info", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, "points", out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(cfg.diagnostics_period, self.publish_diagnostics,
                                             callback_group=self._io_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="stereo_worker", daemon=True)
        self._worker.start()
        sync = (f"approximate (tolerance {cfg.approximate_sync_tolerance_seconds:g} s)" if cfg.approximate_sync
                else "exact")
        log.info(f"{self.estimator.describe()}; {sync} pairing, queue {cfg.queue_size}; poses: "
                 + (f"TF {cfg.world_frame!r} ({self.tf_backend})" if cfg.world_frame else "none"))
        if cfg.temporal and cfg.temporal_use_poses and not cfg.world_frame:
            log.info("temporal filter without poses (world_frame ''): right for a still rig; set world_frame "
                     "to warp the state with the camera motion")

    # ------------------------------------------------------------------------------------ callbacks
    def _on_image(self, side: int, msg: Image) -> None:
        if side == 0:
            self.counters.left_images += 1
            self._rate_in.tick()
        else:
            self.counters.right_images += 1
        pair, dropped = self.sync.add(side, C.stamp_to_ns(msg.header.stamp), msg)
        if dropped:
            self.counters.unsynchronized += dropped
            n_l, n_r = self.sync.pending()
            self._warn("unsync", f"{dropped} image(s) dropped without a partner of equal stamp"
                       + (f" (within {self.config.approximate_sync_tolerance_seconds:g} s)"
                          if self.config.approximate_sync else " (set approximate_sync for unsynchronised cameras)")
                       + f"; waiting: {n_l} left, {n_r} right")
        if pair is None:
            return
        with self._slot_cv:
            self.counters.pairs += 1
            if self._slot is not None:
                self.counters.dropped += 1
            self._slot = pair + (time.monotonic(),)
            self._slot_cv.notify()

    def _on_camera_info(self, side: int, msg: CameraInfo) -> None:
        try:
            _, _, D = C.camera_info_to_K(msg)
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn(f"camera_info{side}", f"{('left', 'right')[side]} camera_info rejected: {exc}")
            return
        if D.size and np.any(D != 0) and not self._distortion_warned:
            self._distortion_warned = True
            self.get_logger().warning(
                f"camera_info has non-zero distortion {D.tolist()}: this node expects rectified images "
                f"(image_rect; run image_proc / stereo_image_proc rectification first)")
        self._info[side] = msg

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        try:
            self.config = with_changes(self.config, live_changes(STEREO_SPECS, params))
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._slot_cv:
                while self._slot is None and not self._stop.is_set():
                    self._slot_cv.wait(0.2)
                if self._stop.is_set():
                    return
                stamp, left, right, t_recv = self._slot
                self._slot = None
                self._busy = True
            try:
                self._process(stamp, left, right, t_recv)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything one pair does
                self.counters.errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._warn("worker_error", f"pair at {stamp / 1e9:.6f}s failed: {self._last_error}\n"
                                           f"{traceback.format_exc()}")
            finally:
                self._busy = False

    def idle(self) -> bool:
        """True when no pair is waiting or being processed (the runner drains with it)."""
        with self._slot_cv:
            return self._slot is None and not self._busy

    def _decode(self, msg: Image, side: str) -> Optional[np.ndarray]:
        try:
            return C.image_to_rgb(msg)
        except C.UnsupportedEncoding as exc:
            self.counters.rejected_encoding += 1
            self._warn(f"encoding_{side}", f"{side} image rejected: {exc}")
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn(f"corrupt_{side}", f"{side} image rejected: {exc}")
        return None

    def _geometry(self, w: int, h: int) -> Optional[Tuple[np.ndarray, float, float]]:
        """(K of the left image at w x h, baseline m, doffs px) from the latest camera_infos, or None (counted)."""
        li, ri = self._info
        if li is None or ri is None:
            self.counters.no_camera_info += 1
            missing = " and ".join(s for s, m in (("left", li), ("right", ri)) if m is None)
            self._warn("no_info", f"pair received before {missing} camera_info: waiting for camera_info")
            return None
        try:
            K, baseline, doffs = stereo_geometry(li, ri)
        except ValueError as exc:
            self.counters.bad_calibration += 1
            self._warn("calibration", f"pair dropped: {exc}")
            return None
        iw, ih = int(li.width), int(li.height)
        if (iw, ih) != (w, h):
            if iw > 0 and ih > 0 and abs(iw / ih - w / h) < 1e-3 and (int(ri.width), int(ri.height)) == (iw, ih):
                s = w / iw   # a binned / resized pair with the same field of view: disparities scale with x
                K, doffs = scale_intrinsics(K, s, h / ih), doffs * s
            else:
                self.counters.camera_info_mismatch += 1
                self._warn("info_size", f"images {w}x{h} do not match camera_info {iw}x{ih}: pair dropped")
                return None
        return K, baseline, doffs

    def _process(self, stamp: int, left_msg: Image, right_msg: Image, t_recv: float) -> None:
        cfg = self.config
        t_start = time.perf_counter()
        frame_id = cfg.camera_frame or left_msg.header.frame_id
        left = self._decode(left_msg, "left")
        if left is None:
            return
        right = self._decode(right_msg, "right")
        if right is None:
            return
        if left.shape != right.shape:
            self.counters.size_mismatch += 1
            self._warn("size_mismatch", f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x"
                                        f"{right.shape[0]} images differ in size: pair dropped")
            return
        if not frame_id:
            self.counters.rejected_corrupt += 1
            self._warn("frame_id", "left image has an empty header.frame_id and no camera_frame parameter is set")
            return
        h, w = left.shape[:2]
        geo = self._geometry(w, h)
        if geo is None:
            return
        K, baseline, doffs = geo
        # stream continuity ---------------------------------------------------------------------------
        if self._last_stamp is not None and stamp <= self._last_stamp:
            back = (self._last_stamp - stamp) / 1e9
            if cfg.time_jump_reset > 0 and back >= cfg.time_jump_reset:
                self.counters.time_jumps += 1
                self.get_logger().warning(f"pair stamps jumped back by {back:.3f}s (bag loop / restart): "
                                          f"temporal state and poses reset")
                self.pipeline.reset()
                if self.tf is not None:
                    self.tf.clear()
            else:
                self.counters.stamp_backwards += 1
                self._warn("backwards", f"pair stamp {stamp / 1e9:.6f}s is not after the previous "
                                        f"{self._last_stamp / 1e9:.6f}s: pair dropped")
                return
        if self._last_size is not None and self._last_size != (w, h):
            self.counters.size_changes += 1
            self.get_logger().warning(f"image size changed {self._last_size[0]}x{self._last_size[1]} -> {w}x{h}: "
                                      f"temporal state reset")
            self.pipeline.reset()
        self._last_size = (w, h)
        self._last_stamp = stamp
        # pose --------------------------------------------------------------------------------------------
        T, pose_ms = None, 0.0
        if cfg.world_frame:
            t_pose = time.perf_counter()
            T = self._lookup_pose(frame_id, stamp)
            pose_ms = (time.perf_counter() - t_pose) * 1e3
        # pipeline ----------------------------------------------------------------------------------------
        try:
            frame = StereoFrame(left=left, right=right, K=K, baseline=baseline, stamp=stamp, frame_id=frame_id,
                                T_world_cam=T, doffs=doffs)
        except ValueError as exc:
            self.counters.rejected_corrupt += 1
            self._warn("frame", f"pair rejected: {exc}")
            return
        self.counters.processed += 1
        res = self.pipeline.process(frame)
        self._last_geometry = (float(K[0, 0]), baseline, doffs)
        t_pub = time.perf_counter()
        self._publish(left_msg, frame, res, frame_id)
        self._publish_ms.add((time.perf_counter() - t_pub) * 1e3)
        compute_ms = float(res.info.get("compute_ms", 0.0))
        self._compute.add(compute_ms)
        self._overhead.add((time.perf_counter() - t_start) * 1e3 - compute_ms - pose_ms)
        self.counters.predictions += 1
        self._rate_out.tick()
        self._latency.add((self.get_clock().now().nanoseconds - stamp) / 1e6)

    def _lookup_pose(self, frame_id: str, stamp: int) -> Optional[np.ndarray]:
        cfg = self.config
        if self.tf is None:
            self.counters.tf_failures += 1
            self._warn("tf_unavailable", f"no pose: tf is unavailable ({self._tf_unavailable})")
            return None
        try:
            return self.tf.lookup(cfg.world_frame, frame_id, stamp, cfg.tf_timeout)
        except TransformError as exc:
            self.counters.tf_failures += 1
            self._warn("pose_lookup", f"no pose for {frame_id!r} in {cfg.world_frame!r} at {stamp / 1e9:.6f}s: "
                                      f"{exc} -> temporal filter without motion for this pair")
            return None

    def _publish(self, left_msg: Image, frame: StereoFrame, res, frame_id: str) -> None:
        cfg = self.config
        header = C.make_header(left_msg.header.stamp, frame_id)
        if cfg.confidence_threshold > 0:
            keep = res.confidence >= cfg.confidence_threshold
            disparity = np.where(keep, res.disparity, np.float32(np.nan)).astype(np.float32)
            depth = np.where(keep, res.depth, np.float32(np.nan)).astype(np.float32)
        else:
            disparity, depth = res.disparity, res.depth
        h, w = depth.shape
        # DisparityImage: d = x_l - x_r + doffs (Z = f T / d); invalid = below min_disparity
        lo, hi, step = _disparity_range(self.estimator, w)
        doffs = np.float32(frame.doffs)
        valid = np.isfinite(disparity)
        min_d = float(lo + doffs)
        adjusted = np.where(valid, disparity + doffs, np.float32(min_d - 1.0)).astype(np.float32)
        dmsg = DisparityImage(header=header, image=C.array_to_image(adjusted, "32FC1", header),
                              f=float(frame.K[0, 0]), t=float(frame.baseline), min_disparity=min_d,
                              max_disparity=float(hi + doffs), delta_d=float(step))
        if valid.any():
            rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
            dmsg.valid_window = RegionOfInterest(x_offset=int(cols[0]), y_offset=int(rows[0]),
                                                 width=int(cols[-1] - cols[0] + 1), height=int(rows[-1] - rows[0] + 1))
        self.pub_disp.publish(dmsg)
        self.pub_depth.publish(C.depth_to_image(depth, header))
        self.pub_conf.publish(C.array_to_image(np.ascontiguousarray(res.confidence, dtype=np.float32), "32FC1", header))
        self.pub_info.publish(C.make_camera_info(frame.K, w, h, header))
        if cfg.publish_points and self.pub_points.get_subscription_count():
            self.pub_points.publish(C.depth_to_pointcloud2(
                depth, frame.K, header, rgb=frame.left, confidence=res.confidence if cfg.points_confidence else None,
                dense=cfg.points_dense, stride=cfg.points_stride, max_range=cfg.points_max_range))

    # ------------------------------------------------------------------------------------ diagnostics
    def diagnostic_status(self) -> DiagnosticStatus:
        c = self.counters
        lat_mean, lat_max, _ = self._latency.summary()
        comp_mean, _, _ = self._compute.summary()
        ovh_mean, ovh_max, _ = self._overhead.summary()
        pub_mean, _, _ = self._publish_ms.summary()
        problems = []
        if c.errors:
            problems.append(f"{c.errors} worker errors (last: {self._last_error})")
        bad = (c.rejected_encoding + c.rejected_corrupt + c.no_camera_info + c.camera_info_mismatch
               + c.bad_calibration + c.size_mismatch + c.stamp_backwards)
        if bad:
            problems.append(f"{bad} input pairs rejected")
        if c.unsynchronized:
            problems.append(f"{c.unsynchronized} images without a partner")
        if c.tf_failures:
            problems.append(f"{c.tf_failures} pairs without a pose")
        if c.dropped:
            problems.append(f"{c.dropped} pairs dropped (model slower than the input)")
        level = DiagnosticStatus.ERROR if c.errors else (DiagnosticStatus.WARN if problems else DiagnosticStatus.OK)
        message = "; ".join(problems) if problems else "ok"
        if c.left_images + c.right_images == 0:
            message = "waiting for images" + (f"; {message}" if problems else "")
        fx, baseline, doffs = self._last_geometry
        values = [("input_rate_hz", self._rate_in.rate()), ("output_rate_hz", self._rate_out.rate()),
                  ("latency_ms_mean", lat_mean), ("latency_ms_max", lat_max), ("compute_ms_mean", comp_mean),
                  ("node_overhead_ms_mean", ovh_mean), ("node_overhead_ms_max", ovh_max),
                  ("publish_ms_mean", pub_mean), ("model", self.model_name),
                  ("device", str(getattr(getattr(self.estimator, "base", self.estimator), "device", "cpu"))),
                  ("temporal", "on" if self.config.temporal else "off"),
                  ("sync", "approximate" if self.config.approximate_sync else "exact"),
                  ("tf_backend", self.tf_backend), ("fx", fx), ("baseline_m", baseline), ("doffs_px", doffs),
                  ("pipeline_resets", self.pipeline.counters.resets)]
        values += list(asdict(c).items())
        return make_status(f"{self.get_name()}: stereo depth", self.get_fully_qualified_name(), level, message, values)

    def publish_diagnostics(self) -> None:
        publish_status(self, self.pub_diag, self.diagnostic_status())

    # ------------------------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self._stop.set()
        with self._slot_cv:
            self._slot_cv.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30)

    def destroy_node(self):
        self.shutdown()
        return super().destroy_node()


def main(argv: Optional[List[str]] = None) -> int:
    """``ros2 run mvs_depth_ros stereo_node --ros-args -r left/image_rect:=... -p num_disparities:=128``"""
    return spin_node(StereoNode, "stereo_node", argv)


if __name__ == "__main__":
    sys.exit(main())
