"""``mvs_node``: dense metric depth from a posed camera stream (video multi-view stereo).

Subscribes (best effort by default, REP 2003; ``qos_reliability`` overrides):

* ``image`` (sensor_msgs/Image rgb8 / bgr8 / mono8, **rectified**), ``camera_info`` (latest kept);
* poses: TF ``world_frame`` <- camera optical frame at the image stamp (``pose_source: tf``, default;
  ``/tf`` + transient-local ``/tf_static``), or ``pose`` (geometry_msgs/PoseStamped) or ``odometry``
  (nav_msgs/Odometry) matched by stamp within ``pose_tolerance`` (the camera optical frame's pose).

Publishes, stamped with the input image's stamp and frame (REP 103/105/118), reliable by default:

* ``depth`` (32FC1 metres, NaN invalid), optional ``depth_mm`` (16UC1 mm, 0 invalid), ``confidence``
  (32FC1 in [0, 1]), ``depth/camera_info`` (K at the working resolution), ``points`` (PointCloud2: x y z
  rgb [confidence]), ``depth_estimate`` (mvs_depth_ros/msg/DepthEstimate, when the interface is built);
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): rates, latency, drops, rejections, TF failures, device.

The node only converts: frames go to :class:`mvs_depth_ros.core.pipeline.VideoPipeline` (keyframes,
measurement frames, recurrent state, tracking loss). Inference runs in a worker thread behind a
latest-frame-wins slot: a slow model drops frames (counted) instead of queueing latency. Bad input is
logged (rate limited), counted in ``/diagnostics`` and never stops the node.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..core.frame import Frame, scale_intrinsics
from ..core.keyframes import KeyframeConfig
from ..core.pipeline import PipelineConfig, VideoPipeline
from ..models.registry import NEEDS_CHECKPOINT, create_model
from ..models.base import recommended_threshold
from . import conversions as C
from . import interfaces
from .diagnostics import RateLimitedLog, RateWindow, Stats, make_status, publish_status
from .node_main import spin_node
from .params import MVS_SPECS, MvsConfig, ParameterError, declare_all, live_changes, with_changes
from .qos import diagnostics_qos, make_qos
from .sync import PoseBuffer, SyncError, pose_message_to_matrix
from .tf_buffer import TransformError, make_tf_lookup


@dataclass
class NodeCounters:
    images: int = 0               # image messages received
    processed: int = 0            # frames given to the pipeline
    dropped: int = 0              # replaced in the slot before the worker took them (model too slow)
    rejected_encoding: int = 0
    rejected_corrupt: int = 0     # undecodable image / camera_info
    no_camera_info: int = 0       # image before any (matching) camera_info
    camera_info_mismatch: int = 0
    stamp_backwards: int = 0      # dropped: stamp not after the previous frame's
    time_jumps: int = 0           # large backward jumps: everything reset
    size_changes: int = 0
    tf_failures: int = 0          # no pose at the image stamp (TF or pose topic)
    bad_poses: int = 0            # NaN / invalid pose messages or transforms
    pose_gap_resets: int = 0
    keyframes: int = 0
    predictions: int = 0          # depth maps published
    errors: int = 0               # unexpected exceptions in the worker (logged with traceback)


def _overrides(parameter_overrides: Optional[Sequence[Parameter]], params: Dict[str, Any]) -> List[Parameter]:
    out = list(parameter_overrides or [])
    out += [Parameter(k, value=v) for k, v in params.items()]
    return out


class MvsNode(Node):
    """See the module docstring. Keyword arguments are parameter overrides (``MvsNode(width=160)``)."""

    def __init__(self, node_name: str = "mvs_node", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Parameter]] = None, cli_args=None, **params):
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=_overrides(parameter_overrides, params))
        self.config = MvsConfig.from_values(declare_all(self, MVS_SPECS))
        cfg = self.config
        log = self.get_logger()
        self.counters = NodeCounters()
        self._warn = RateLimitedLog(log.warning, cfg.warn_period)
        self._lock = threading.Lock()

        # core pipeline ------------------------------------------------------------------------------
        options = {}
        if cfg.n_planes and (cfg.model == "planesweep" or (cfg.model in NEEDS_CHECKPOINT and not cfg.checkpoint)):
            options["n_planes"] = cfg.n_planes
        self.estimator = create_model(cfg.model, cfg.checkpoint or None, cfg.device, min_depth=cfg.min_depth,
                                      max_depth=cfg.max_depth, **options)
        self.model_name = getattr(self.estimator, "name", cfg.model)
        kf = KeyframeConfig(buffer_size=cfg.keyframe_buffer_size, keyframe_pose_distance=cfg.keyframe_pose_distance,
                            optimal_t_measure=cfg.optimal_t_measure, tracking_lost_frames=cfg.tracking_lost_frames)
        self.pipeline = VideoPipeline(self.estimator, PipelineConfig(cfg.width, cfg.height, cfg.n_measurement_frames, kf))

        # state ----------------------------------------------------------------------------------------
        self._camera_info: Optional[tuple] = None   # (K, (w, h), D, frame_id)
        self._camera_info_arrived = threading.Event()
        self._distortion_warned = False
        self._last_stamp: Optional[int] = None
        self._last_size: Optional[tuple] = None
        self._last_pose_stamp: Optional[int] = None
        # frames waiting for the worker: (Image, receive monotonic time); maxlen 1 = latest frame wins
        self._slot: Deque[tuple] = deque(maxlen=self.config.frame_queue)
        self._slot_cv = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._rate_in, self._rate_out = RateWindow(), RateWindow()
        self._latency, self._compute, self._overhead, self._publish_ms = Stats(), Stats(), Stats(), Stats()
        self._queue_wait = Stats()  # receive -> the worker takes the frame
        self._last_error = ""

        # I/O ------------------------------------------------------------------------------------------
        in_qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        out_qos = make_qos(cfg.output_qos_reliability, cfg.output_qos_depth)
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "image", self._on_image, in_qos, callback_group=self._io_group)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, in_qos, callback_group=self._io_group)
        self.tf = None
        self.tf_backend = "none"
        self.poses: Optional[PoseBuffer] = None
        self._tf_unavailable = ""
        if cfg.pose_source == "tf":
            try:
                self.tf, self.tf_backend = make_tf_lookup(
                    self, cfg.tf_backend, cfg.tf_cache_time, cfg.tf_max_gap,
                    on_error=lambda t: self._bad_pose("tf_reject", t), callback_group=self._tf_group)
            except (RuntimeError, ImportError) as exc:  # no tf2_ros and no tf2_msgs in this install
                self._tf_unavailable = str(exc)
                self.tf_backend = "unavailable"
                log.error(f"pose_source tf is OFF: {exc}. Frames get no pose (no depth) until restarted with "
                          f"pose_source:=pose or odometry")
        else:
            self.poses = PoseBuffer(cfg.pose_tolerance, max_size=2000)
            mtype, topic = (PoseStamped, "pose") if cfg.pose_source == "pose" else (Odometry, "odometry")
            self.create_subscription(mtype, topic, self._on_pose, make_qos(cfg.qos_reliability, 100),
                                     callback_group=self._tf_group)
        self.pub_depth = self.create_publisher(Image, "depth", out_qos)
        self.pub_conf = self.create_publisher(Image, "confidence", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, "depth/camera_info", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, "points", out_qos)
        self.pub_depth_mm = self.create_publisher(Image, "depth_mm", out_qos) if cfg.publish_depth_mm else None
        DepthEstimate = interfaces.depth_estimate_type()
        self._DepthEstimate = DepthEstimate
        self.pub_estimate = self.create_publisher(DepthEstimate, "depth_estimate", out_qos) if DepthEstimate else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(cfg.diagnostics_period, self.publish_diagnostics,
                                             callback_group=self._io_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="mvs_worker", daemon=True)
        self._worker.start()
        avail = interfaces.availability()
        off = [f"{k} ({why})" for k, (ok, why) in avail.items() if not ok and k != "tf2_ros"]
        log.info(f"{self.estimator.describe()}; working size {cfg.width}x{cfg.height}; poses from "
                 f"{cfg.pose_source}{' (' + self.tf_backend + ')' if self.tf else ''} in {cfg.world_frame!r}")
        if not DepthEstimate:
            log.warning("depth_estimate output is OFF: mvs_depth_ros/msg/DepthEstimate is not built "
                        "(colcon build, or tools/install_ros.sh)")
        if off:
            log.info("optional interfaces off: " + "; ".join(off))

    # ------------------------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image) -> None:
        self._rate_in.tick()
        with self._slot_cv:
            self.counters.images += 1
            if len(self._slot) == self._slot.maxlen:
                self.counters.dropped += 1             # the oldest waiting frame makes room
            self._slot.append((msg, time.monotonic()))
            self._slot_cv.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K, size, D = C.camera_info_to_K(msg)
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn("camera_info", f"camera_info rejected: {exc}")
            return
        if D.size and np.any(D != 0) and not self._distortion_warned:
            self._distortion_warned = True
            self.get_logger().warning(
                f"camera_info has non-zero distortion {D.tolist()}: this node assumes rectified images "
                f"(run image_proc rectify first); depth will be biased otherwise")
        self._camera_info = (K, size, D, msg.header.frame_id)
        self._camera_info_arrived.set()

    def _on_pose(self, msg) -> None:
        try:
            stamp, frame, T = pose_message_to_matrix(msg)
            if frame and frame.lstrip("/") != self.config.world_frame:
                self._warn("pose_frame", f"pose in frame {frame!r}, expected world_frame {self.config.world_frame!r}; "
                                         f"using it as is")
            self.poses.add(stamp, T)
        except (C.ConversionError, ValueError) as exc:
            self._bad_pose("pose_msg", f"{self.config.pose_source} message rejected: {exc}")

    def _bad_pose(self, key: str, text: str) -> None:
        self.counters.bad_poses += 1
        self._warn(key, text)

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        try:
            self.config = with_changes(self.config, live_changes(MVS_SPECS, params))
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._slot_cv:
                while not self._slot and not self._stop.is_set():
                    self._slot_cv.wait(0.2)
                if self._stop.is_set():
                    return
                msg, t_recv = self._slot.popleft()
                self._busy = True
            try:
                self._process(msg, t_recv)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything one frame does
                self.counters.errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._warn("worker_error", f"frame at {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} "
                                           f"failed: {self._last_error}\n{traceback.format_exc()}")
            finally:
                self._busy = False

    def idle(self) -> bool:
        """True when no frame is waiting or being processed (the runner drains with it)."""
        with self._slot_cv:
            return not self._slot and not self._busy

    def _lookup_pose(self, frame_id: str, stamp: int) -> Optional[np.ndarray]:
        cfg = self.config
        if self._tf_unavailable:
            self.counters.tf_failures += 1
            self._warn("tf_unavailable", f"no pose: tf is unavailable ({self._tf_unavailable})")
            return None
        try:
            if self.tf is not None:
                return self.tf.lookup(cfg.world_frame, frame_id, stamp, cfg.tf_timeout)
            return self.poses.lookup(stamp, cfg.tf_timeout)
        except (TransformError, SyncError) as exc:
            self.counters.tf_failures += 1
            self._warn("pose_lookup", f"no pose for {frame_id!r} in {cfg.world_frame!r} at "
                                      f"{stamp / 1e9:.6f}s: {exc} -> frame used without a pose")
            return None

    def _process(self, msg: Image, t_recv: float) -> None:
        cfg = self.config
        t_start = time.perf_counter()
        self._queue_wait.add((time.monotonic() - t_recv) * 1e3)
        stamp = C.stamp_to_ns(msg.header.stamp)
        frame_id = cfg.camera_frame or msg.header.frame_id
        # decode --------------------------------------------------------------------------------------
        try:
            rgb = C.image_to_rgb(msg)
        except C.UnsupportedEncoding as exc:
            self.counters.rejected_encoding += 1
            self._warn("encoding", f"image rejected: {exc}")
            return
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn("corrupt", f"image rejected: {exc}")
            return
        if not frame_id:
            self.counters.rejected_corrupt += 1
            self._warn("frame_id", "image has an empty header.frame_id and no camera_frame parameter is set")
            return
        if self._camera_info is None:
            # image and camera_info of one stamp travel on two topics: the image may win by a few ms, so the
            # first frames wait for the first camera_info as long as for a transform
            self._camera_info_arrived.wait(cfg.tf_timeout)
        info = self._camera_info
        if info is None:
            self.counters.no_camera_info += 1
            self._warn("no_info", "image received before any camera_info: waiting for camera_info")
            return
        K, (iw, ih), _, _ = info
        h, w = rgb.shape[:2]
        if (iw, ih) != (w, h):
            if iw > 0 and ih > 0 and abs(iw / ih - w / h) < 1e-3:
                K = scale_intrinsics(K, w / iw, h / ih)  # a binned / resized stream with the same field of view
            else:
                self.counters.camera_info_mismatch += 1
                self._warn("info_size", f"image {w}x{h} does not match camera_info {iw}x{ih}: frame dropped")
                return
        # stream continuity ---------------------------------------------------------------------------
        if self._last_stamp is not None and stamp <= self._last_stamp:
            back = (self._last_stamp - stamp) / 1e9
            if cfg.time_jump_reset > 0 and back >= cfg.time_jump_reset:
                self.counters.time_jumps += 1
                self.get_logger().warning(f"image stamps jumped back by {back:.3f}s (bag loop / restart): "
                                          f"keyframes, recurrent state and poses reset")
                self._reset_all()
            else:
                self.counters.stamp_backwards += 1
                self._warn("backwards", f"image stamp {stamp / 1e9:.6f}s is not after the previous "
                                        f"{self._last_stamp / 1e9:.6f}s: frame dropped")
                return
        if self._last_size is not None and self._last_size != (w, h):
            self.counters.size_changes += 1
            self.get_logger().warning(f"image size changed {self._last_size[0]}x{self._last_size[1]} -> {w}x{h}: "
                                      f"keyframes and recurrent state reset")
            self.pipeline.reset()
        self._last_size = (w, h)
        self._last_stamp = stamp
        # pose ----------------------------------------------------------------------------------------
        t_pose = time.perf_counter()
        T = self._lookup_pose(frame_id, stamp)
        pose_ms = (time.perf_counter() - t_pose) * 1e3
        if T is not None:
            self._last_pose_stamp = stamp
        elif (cfg.reset_after_pose_gap > 0 and self._last_pose_stamp is not None
              and stamp - self._last_pose_stamp >= cfg.reset_after_pose_gap * 1e9 and len(self.pipeline.buffer)):
            self.counters.pose_gap_resets += 1
            self.get_logger().warning(f"no pose for {(stamp - self._last_pose_stamp) / 1e9:.2f}s: keyframes and "
                                      f"recurrent state reset")
            self.pipeline.reset()
        # pipeline ------------------------------------------------------------------------------------
        try:
            frame = Frame(image=rgb, K=K, T_world_cam=T, stamp=stamp, frame_id=frame_id)
        except ValueError as exc:
            self.counters.rejected_corrupt += 1
            self._warn("frame", f"frame rejected: {exc}")
            return
        self.counters.processed += 1
        step = self.pipeline.process(frame)
        self.counters.keyframes = self.pipeline.counters.keyframes
        if step.result is None:
            return
        t_pub = time.perf_counter()
        self._publish(msg, step, T, frame_id)
        self._publish_ms.add((time.perf_counter() - t_pub) * 1e3)
        total = (time.perf_counter() - t_start) * 1e3
        self._compute.add(step.compute_ms)
        # node work around the model for this frame: decode, resize, conversions, publishing (not the
        # time spent waiting for the pose to arrive, nor the model itself)
        self._overhead.add(total - step.compute_ms - pose_ms)
        self.counters.predictions += 1
        self._rate_out.tick()
        self._latency.add((self.get_clock().now().nanoseconds - stamp) / 1e6)

    def _publish(self, msg: Image, step, T: np.ndarray, frame_id: str) -> None:
        cfg = self.config
        res = step.result
        header = C.make_header(msg.header.stamp, frame_id)
        depth = res.filtered(cfg.confidence_threshold) if cfg.confidence_threshold > 0 else res.depth
        h, w = depth.shape
        depth_msg = C.depth_to_image(depth, header)
        conf_msg = C.array_to_image(np.ascontiguousarray(res.confidence, dtype=np.float32), "32FC1", header)
        info_msg = C.make_camera_info(res.K, w, h, header)
        self.pub_depth.publish(depth_msg)
        self.pub_conf.publish(conf_msg)
        self.pub_info.publish(info_msg)
        # the costly derived outputs are built only while someone subscribes to them
        if self.pub_depth_mm is not None and self.pub_depth_mm.get_subscription_count():
            self.pub_depth_mm.publish(C.depth_to_image(depth, header, "16UC1"))
        if cfg.publish_points and self.pub_points.get_subscription_count():
            rgb = step.frame.image if step.frame.image.shape[:2] == (h, w) else None
            self.pub_points.publish(C.depth_to_pointcloud2(
                depth, res.K, header, rgb=rgb, confidence=res.confidence if cfg.points_confidence else None,
                dense=cfg.points_dense, stride=cfg.points_stride, max_range=cfg.points_max_range))
        if self.pub_estimate is not None and self.pub_estimate.get_subscription_count():
            est = self._DepthEstimate()
            est.header = header
            est.depth, est.confidence, est.camera_info = depth_msg, conf_msg, info_msg
            est.pose = C.make_pose_stamped(T, cfg.world_frame, msg.header.stamp)
            est.model = str(self.model_name)
            est.compute_ms = float(step.compute_ms)
            if hasattr(est, "confidence_threshold"):  # interfaces built before the field existed lack it
                est.confidence_threshold = recommended_threshold(res)
            est.measurement_stamps = [C.ns_to_stamp(m.stamp) for m in step.measurements]
            est.measurement_ids = [int(m.uid) for m in step.measurements]
            self.pub_estimate.publish(est)

    def _reset_all(self) -> None:
        self.pipeline.reset()
        self._last_pose_stamp = None
        if self.tf is not None:
            self.tf.clear()
        if self.poses is not None:
            self.poses.clear()

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
        bad = c.rejected_encoding + c.rejected_corrupt + c.no_camera_info + c.camera_info_mismatch + c.stamp_backwards
        if bad:
            problems.append(f"{bad} input frames rejected")
        if c.tf_failures:
            problems.append(f"{c.tf_failures} frames without a pose")
        if c.dropped:
            problems.append(f"{c.dropped} frames dropped (model slower than the input)")
        level = DiagnosticStatus.ERROR if c.errors else (DiagnosticStatus.WARN if problems else DiagnosticStatus.OK)
        message = "; ".join(problems) if problems else "ok"
        if c.images == 0:
            message = "waiting for images" + (f"; {message}" if problems else "")
        values = [("input_rate_hz", self._rate_in.rate()), ("output_rate_hz", self._rate_out.rate()),
                  ("latency_ms_mean", lat_mean), ("latency_ms_max", lat_max),
                  ("compute_ms_mean", comp_mean), ("node_overhead_ms_mean", ovh_mean), ("node_overhead_ms_max", ovh_max),
                  ("publish_ms_mean", pub_mean), ("queue_wait_ms_mean", self._queue_wait.summary()[0]),
                  ("device", str(self.estimator.device)), ("model", self.model_name),
                  ("pose_source", self.config.pose_source), ("tf_backend", self.tf_backend),
                  ("depth_estimate", "on" if self.pub_estimate is not None else "off"),
                  ("pipeline_resets", self.pipeline.counters.resets)]
        values += list(asdict(c).items())
        if self.tf is not None:
            values.append(("tf_rejected", getattr(self.tf, "rejected", 0)))
        return make_status(f"{self.get_name()}: video MVS depth", self.get_fully_qualified_name(), level, message, values)

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
    """``ros2 run mvs_depth_ros mvs_node --ros-args -p model:=planesweep ...``"""
    return spin_node(MvsNode, "mvs_node", argv)


if __name__ == "__main__":
    sys.exit(main())
