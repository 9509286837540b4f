"""``mvs_node``: dense metric depth from a posed camera stream (video multi-view stereo).

Subscribes (best effort by default, REP 2003; ``qos_reliability`` overrides):

* ``image`` (sensor_msgs/Image rgb8 / bgr8 / mono8, **rectified**) with the ``camera_info`` of its stamp (as
  image_transport's CameraSubscriber; ``approximate_sync`` for drivers whose stamps differ), paired by
  ``message_filters`` when importable, else by the package's own matcher (``sync_backend``);
* poses: TF ``world_frame`` <- camera optical frame at the image stamp (``pose_source: tf``, default;
  ``/tf`` + transient-local ``/tf_static``), or ``pose`` (geometry_msgs/PoseStamped) or ``odometry``
  (nav_msgs/Odometry) matched by stamp within ``pose_tolerance`` (the camera optical frame's pose).

Publishes, stamped with the input image's stamp and frame (REP 103/105/118), reliable by default:

* ``depth`` (32FC1 metres, NaN invalid), optional ``depth_mm`` (16UC1 mm, 0 invalid), ``confidence``
  (32FC1 in [0, 1]), ``depth/camera_info`` (K at the working resolution), ``points`` (PointCloud2: x y z
  rgb [confidence]), ``depth_estimate`` (mvs_depth_ros/msg/DepthEstimate, when the interface is built);
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): rates, latency, drops, rejections, TF failures, device.

The node only converts: frames go to :class:`mvs_depth_ros.core.pipeline.VideoPipeline` (keyframes,
measurement frames, recurrent state, tracking loss). Around it, the skeleton shared with ``stereo_node``
(:mod:`mvs_depth_ros.ros.node_base`): each frame waits for the pose at its stamp (``tf_timeout``; released in
stamp order as soon as the transform arrives, dropped and counted when the wait expires), then for the
worker thread behind a latest-frame-wins slot (``frame_queue`` 1: a slow model drops frames, counted, instead
of queueing latency; N keeps N in order). Bad input is logged (rate limited), counted in ``/diagnostics``
and never stops the node.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..core.frame import Frame, scale_intrinsics
from ..core.fusion import FusionConfig
from ..core.keyframes import KeyframeConfig
from ..core.pipeline import PipelineConfig, VideoPipeline
from ..models.registry import NEEDS_CHECKPOINT, create_model
from ..models.base import recommended_threshold
from . import conversions as C
from . import interfaces
from .node_base import BaseCounters, DepthNodeBase, Pending
from .node_main import spin_node
from .params import MVS_SPECS, MvsConfig, ParameterError
from .qos import make_qos
from .sync import PoseBuffer, TopicSync, pose_message_to_matrix


@dataclass
class NodeCounters(BaseCounters):
    images: int = 0               # image messages received
    bad_poses: int = 0            # NaN / invalid pose messages or transforms
    empty_depth: int = 0          # depth maps without a single valid pixel although the camera moved
    implausible_baseline: int = 0  # depth from measurement frames farther than max_depth (cannot overlap)
    pose_gap_resets: int = 0
    keyframes: int = 0


class MvsNode(DepthNodeBase):
    """See the module docstring. Keyword arguments are parameter overrides (``MvsNode(width=160)``)."""

    SPECS = MVS_SPECS
    CONFIG = MvsConfig
    COUNTERS = NodeCounters
    TITLE = "video MVS depth"
    INPUT = "frame"

    def __init__(self, node_name: str = "mvs_node", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Any]] = None, cli_args=None, **params):
        super().__init__(node_name, namespace=namespace, context=context, parameter_overrides=parameter_overrides,
                         cli_args=cli_args, **params)
        cfg = self.config
        log = self.get_logger()

        # core pipeline ------------------------------------------------------------------------------
        options = cfg.estimator_options()
        if cfg.n_planes and "n_planes" not in options and (cfg.model == "planesweep" or (cfg.model in NEEDS_CHECKPOINT and not cfg.checkpoint)):
            options["n_planes"] = cfg.n_planes
        try:
            self.estimator = create_model(cfg.model, cfg.checkpoint or None, cfg.device, min_depth=cfg.min_depth,
                                          max_depth=cfg.max_depth, **options)
        except ValueError as exc:  # an option the model does not take or a value it refuses
            raise ParameterError(f"parameters model={cfg.model!r} / model_options={cfg.model_options!r}: {exc}") from exc
        self.model_name = getattr(self.estimator, "name", cfg.model)
        kf = KeyframeConfig(buffer_size=cfg.keyframe_buffer_size, keyframe_pose_distance=cfg.keyframe_pose_distance,
                            optimal_t_measure=cfg.optimal_t_measure, tracking_lost_frames=cfg.tracking_lost_frames)
        fusion = FusionConfig(mode="causal" if cfg.temporal_fusion else "off")  # a robot has only the past
        self.pipeline = VideoPipeline(self.estimator, PipelineConfig(cfg.width, cfg.height, cfg.n_measurement_frames,
                                                                     kf, fusion))
        self._last_pose_stamp: Optional[int] = None

        # I/O ------------------------------------------------------------------------------------------
        in_qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        out_qos = make_qos(cfg.output_qos_reliability, cfg.output_qos_depth)
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        # image + camera_info of the same stamp (image_transport's CameraSubscriber; message_filters when importable)
        self.sync = TopicSync(self, [(Image, "image"), (CameraInfo, "camera_info")], in_qos, self._on_image,
                              approximate=cfg.approximate_sync, tolerance_s=cfg.approximate_sync_tolerance_seconds,
                              queue_size=cfg.queue_size, backend=cfg.sync_backend, callback_group=self._io_group)
        self.poses: Optional[PoseBuffer] = None
        if cfg.pose_source == "tf":
            self._make_tf(cfg.world_frame, self._tf_group)
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
        self._start(self._resolve_pose, self._io_group)

        avail = interfaces.availability()
        off = [f"{k} ({why})" for k, (ok, why) in avail.items() if not ok and k != "tf2_ros"]
        log.info(f"{self.estimator.describe()}; working size {cfg.width}x{cfg.height}; poses from "
                 f"{cfg.pose_source}{' (' + self.tf_backend + ')' if self.tf else ''} in {cfg.world_frame!r}; "
                 f"image + camera_info paired by {self.sync.backend}")
        if not DepthEstimate:
            log.warning("depth_estimate output is OFF: mvs_depth_ros/msg/DepthEstimate is not built "
                        "(colcon build, or tools/install_ros.sh)")
        if off:
            log.info("optional interfaces off: " + "; ".join(off))

    # ------------------------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image, info: CameraInfo) -> None:
        """An image and its camera_info: checked here (bad input never waits for a pose), then queued."""
        rgb = self.decode(msg)
        if rgb is None:
            return
        frame_id = self.config.camera_frame or msg.header.frame_id
        if not frame_id:
            self.counters.rejected_corrupt += 1
            self._warn("frame_id", "image has an empty header.frame_id and no camera_frame parameter is set")
            return
        intrinsics = self.camera_info(info)
        if intrinsics is None:
            return
        self.submit(C.stamp_to_ns(msg.header.stamp), frame_id, (msg, intrinsics, rgb))

    def unpaired(self) -> Tuple[int, int]:
        return self.sync.unmatched(0), self.sync.queued(0)

    def input_count(self) -> Tuple[str, int]:
        return self.sync.topics[0], self.sync.received[0]

    def _on_pose(self, msg) -> None:
        try:
            stamp, frame, T = pose_message_to_matrix(msg)
            if frame and frame.lstrip("/") != self.config.world_frame:
                self._warn("pose_frame", f"pose in frame {frame!r}, expected world_frame {self.config.world_frame!r}; "
                                         f"using it as is")
            self.poses.add(stamp, T)
        except (C.ConversionError, ValueError) as exc:
            self._bad_pose("pose_msg", f"{self.config.pose_source} message rejected: {exc}")

    def _resolve_pose(self, frame_id: str, stamp: int, timeout: float) -> np.ndarray:
        """The camera pose at ``stamp``, waiting up to ``timeout`` (FrameQueue's release thread)."""
        if self.tf is not None:
            return self.tf.lookup(self.config.world_frame, frame_id, stamp, timeout)
        if self.poses is not None:
            return self.poses.lookup(stamp, timeout)
        raise LookupError(f"tf is unavailable ({self._tf_unavailable})")

    # ------------------------------------------------------------------------------------ worker
    def process(self, item: Pending) -> None:
        cfg = self.config
        t_start = time.perf_counter()
        msg, (K, (iw, ih), _), rgb = item.msgs
        stamp, frame_id = item.stamp, item.frame_id
        h, w = rgb.shape[:2]
        if (iw, ih) != (w, h):
            if iw > 0 and ih > 0 and abs(iw / ih - w / h) < 1e-3:
                K = scale_intrinsics(K, w / iw, h / ih)  # a binned / resized stream with the same field of view
            else:
                self.counters.camera_info_mismatch += 1
                self._warn("info_size", f"image {w}x{h} does not match camera_info {iw}x{ih}: frame dropped")
                return
        if not self.check_continuity(stamp, (w, h), self._reset_all):
            return
        T = item.T
        if T is not None:
            if (cfg.reset_after_pose_gap > 0 and self._last_pose_stamp is not None
                    and stamp - self._last_pose_stamp >= cfg.reset_after_pose_gap * 1e9 and len(self.pipeline.buffer)):
                self._pose_gap_reset(stamp)
            self._last_pose_stamp = stamp
        elif (cfg.reset_after_pose_gap > 0 and self._last_pose_stamp is not None
              and stamp - self._last_pose_stamp >= cfg.reset_after_pose_gap * 1e9 and len(self.pipeline.buffer)):
            self._pose_gap_reset(stamp)
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
        self._check_empty(step)
        t_pub = time.perf_counter()
        self._publish(msg, step, T, frame_id)
        self.published(stamp, t_start, step.compute_ms, (time.perf_counter() - t_pub) * 1e3)

    def _check_empty(self, step) -> None:
        """Implausible motion is counted and warned instead of silently publishing nonsense: measurement frames
        farther from the reference than ``max_depth`` cannot see the same scene (a pose jump, a wrong scale),
        and a depth map without one valid pixel although the camera moved (it turned away, poses wrong)."""
        ref = step.frame.T_world_cam
        if ref is None:
            return
        moved = [float(np.linalg.norm(m.T_world_cam[:3, 3] - ref[:3, 3])) for m in step.measurements
                 if m.T_world_cam is not None]
        if not moved:
            return
        where = (f"camera at {np.round(ref[:3, 3], 3).tolist()} m in {self.config.world_frame!r}, depth at "
                 f"{step.frame.stamp / 1e9:.6f}s")
        if max(moved) > self.config.max_depth:
            self.counters.implausible_baseline += 1
            self._warn("baseline", f"measurement frame(s) {max(moved):.4g} m from the reference, more than max_depth "
                                   f"{self.config.max_depth:g} m: the views cannot overlap, the depth is unreliable "
                                   f"(pose jumps or a wrong scale?); {where}")
        if max(moved) > 0 and not np.isfinite(step.result.depth).any():
            self.counters.empty_depth += 1
            self._warn("empty_depth", f"depth is all NaN although the camera moved {max(moved):.3g} m from its "
                                      f"measurement frame(s) (turned away, or implausible poses); {where}")

    def _pose_gap_reset(self, stamp: int) -> None:
        self.counters.pose_gap_resets += 1
        self._event("pose_gap", f"no pose for {(stamp - self._last_pose_stamp) / 1e9:.2f}s: keyframes and "
                                f"recurrent state reset")
        self.pipeline.reset()

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
            if hasattr(est, "fused"):  # interfaces built before temporal fusion lack these fields
                est.fused, est.fusion_keyframes = bool(res.fused), int(res.fusion_keyframes)
            self.pub_estimate.publish(est)

    def _reset_all(self) -> None:
        self.pipeline.reset()
        self._last_pose_stamp = None
        if self.tf is not None:
            self.tf.clear()
        if self.poses is not None:
            self.poses.clear()

    # ------------------------------------------------------------------------------------ diagnostics
    def refresh_counters(self) -> None:
        c = self.counters
        c.images, c.no_camera_info = self.sync.received[0], self.sync.unmatched(0)

    def diagnostic_extra(self) -> Tuple[List[str], List[Tuple[str, Any]]]:
        c = self.counters
        problems = []
        bad = c.rejected_encoding + c.rejected_corrupt + c.no_camera_info + c.camera_info_mismatch + c.stamp_backwards
        if bad:
            problems.append(f"{bad} input frames rejected")
        values = [("device", str(self.estimator.device)), ("model", self.model_name),
                  ("pose_source", self.config.pose_source), ("sync_backend", self.sync.backend),
                  ("depth_estimate", "on" if self.pub_estimate is not None else "off"),
                  ("pipeline_resets", self.pipeline.counters.resets)]
        return problems, values


def main(argv: Optional[List[str]] = None) -> int:
    """``ros2 run mvs_depth_ros mvs_node --ros-args -p model:=planesweep ...``"""
    return spin_node(MvsNode, "mvs_node", argv)


if __name__ == "__main__":
    sys.exit(main())
