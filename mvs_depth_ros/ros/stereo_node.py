"""``stereo_node``: dense metric depth from a rectified stereo pair (SGBM, or a learned stereo network).

Subscribes (best effort by default, REP 2003; ``qos_reliability`` overrides):

* ``left/image_rect``, ``right/image_rect`` (sensor_msgs/Image rgb8 / bgr8 / mono8, **rectified**), paired
  by stamp: exactly (default) or, with ``approximate_sync``, the nearest stamp within
  ``approximate_sync_tolerance_seconds``; at most ``queue_size`` unmatched images are kept per side
  (``stereo_image_proc``'s parameter names; ``message_filters``' synchronisers when importable, else the
  package's own matcher with the same policies, :class:`~mvs_depth_ros.ros.sync.StampSync`; ``sync_backend``);
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
changes). Pairs wait for their pose (with ``world_frame``) and for the worker behind a latest-pair-wins slot,
in the skeleton shared with ``mvs_node`` (:mod:`mvs_depth_ros.ros.node_base`). Bad
input (unpaired images, left/right size mismatch, missing camera_info, bad calibration, unsupported
encodings, stamps going backwards) is logged (rate limited), counted in ``/diagnostics`` and never stops
the node.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, RegionOfInterest
from stereo_msgs.msg import DisparityImage

from ..core.frame import StereoFrame, scale_intrinsics
from ..core.stereo import StereoPipeline, StereoPipelineConfig
from ..data.stereo_bags import stereo_geometry
from ..models.registry import DEFAULT_STEREO_MODEL, available_stereo_models, create_stereo_model
from ..models.stereo.sgbm import SGBMConfig
from ..models.stereo.temporal import TemporalConfig, TemporalStereo
from . import conversions as C
from .node_base import BaseCounters, DepthNodeBase, Pending
from .node_main import spin_node
from .params import COMMON_SPECS, DepthNodeConfig, ParameterError, Spec
from .qos import make_qos
from .sync import PairSynchronizer, TopicSync  # noqa: F401 - PairSynchronizer: the pairing policy, re-exported

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
    # outputs (live-tunable)
    "confidence_threshold": Spec(0.0, "disparity/depth/points below this confidence are invalid (0 = keep all)",
                                 0.0, 1.0, read_only=False),
    # frames / poses
    "camera_frame": Spec("", "left optical frame of the outputs ('' = the left image header's frame_id)"),
    "world_frame": Spec("", "continuous world frame for the temporal warp ('' = no poses; REP 105 odom)"),
    **COMMON_SPECS,
}


@dataclass(frozen=True)
class StereoConfig(DepthNodeConfig):
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

    def __post_init__(self) -> None:
        try:
            self.sgbm_config()
            self.temporal_config()
        except ValueError as exc:
            raise ParameterError(f"parameters: {exc}") from None
        super().__post_init__()

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


# ---------------------------------------------------------------------------------------------------
# node
# ---------------------------------------------------------------------------------------------------

@dataclass
class StereoNodeCounters(BaseCounters):
    left_images: int = 0          # left image messages received
    right_images: int = 0
    pairs: int = 0                # synchronised pairs
    unsynchronized: int = 0       # images dropped without a partner (stamps never matched)
    bad_calibration: int = 0      # right P without a baseline (Tx), non-finite P
    size_mismatch: int = 0        # left and right images of a pair differ in size
    bad_poses: int = 0            # transforms rejected


def _disparity_range(estimator, width: int) -> Tuple[float, float, float]:
    """``(min, max, delta_d)`` of the disparities ``estimator`` can output (unadjusted, px)."""
    base = getattr(estimator, "base", estimator)
    cfg = getattr(base, "config", None)
    if isinstance(cfg, SGBMConfig):
        return float(cfg.min_disparity), float(cfg.min_disparity + cfg.num_disparities - 1), 1.0 / 16.0
    lo = float(getattr(base, "min_disparity", 0.0))
    hi = float(getattr(base, "max_disparity", width - 1))
    return lo, hi, float(getattr(base, "disparity_step", 0.0))


class StereoNode(DepthNodeBase):
    """See the module docstring. Keyword arguments are parameter overrides (``StereoNode(num_disparities=32)``)."""

    SPECS = STEREO_SPECS
    CONFIG = StereoConfig
    COUNTERS = StereoNodeCounters
    TITLE = "stereo depth"
    INPUT = "pair"

    def __init__(self, node_name: str = "stereo_node", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Parameter]] = None, cli_args=None, **params):
        super().__init__(node_name, namespace=namespace, context=context, parameter_overrides=parameter_overrides,
                         cli_args=cli_args, **params)
        cfg = self.config
        log = self.get_logger()

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
        self._info: List[Optional[CameraInfo]] = [None, None]
        self._last_geometry: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # fx, baseline, doffs

        # I/O -------------------------------------------------------------------------------------------
        in_qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        out_qos = make_qos(cfg.output_qos_reliability, cfg.output_qos_depth)
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        # left + right of the same stamp (message_filters when importable); camera_infos: the latest per side
        self.sync = TopicSync(self, [(Image, "left/image_rect"), (Image, "right/image_rect")], in_qos, self._on_pair,
                              approximate=cfg.approximate_sync, tolerance_s=cfg.approximate_sync_tolerance_seconds,
                              queue_size=cfg.queue_size, backend=cfg.sync_backend, callback_group=self._io_group)
        self.create_subscription(CameraInfo, "left/camera_info", lambda m: self._on_camera_info(0, m), in_qos,
                                 callback_group=self._io_group)
        self.create_subscription(CameraInfo, "right/camera_info", lambda m: self._on_camera_info(1, m), in_qos,
                                 callback_group=self._io_group)
        if cfg.world_frame:
            self._make_tf(cfg.world_frame, self._tf_group)
            if self.tf is None:
                log.error("the temporal filter runs without poses")
        self.pub_disp = self.create_publisher(DisparityImage, "disparity", out_qos)
        self.pub_depth = self.create_publisher(Image, "depth", out_qos)
        self.pub_conf = self.create_publisher(Image, "confidence", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, "depth/camera_info", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, "points", out_qos)
        self._start(self._resolve_pose if cfg.world_frame else None, self._io_group)

        sync = (f"approximate (tolerance {cfg.approximate_sync_tolerance_seconds:g} s)" if cfg.approximate_sync
                else "exact")
        log.info(f"{self.estimator.describe()}; {sync} pairing by {self.sync.backend}, queue {cfg.queue_size}; "
                 f"poses: " + (f"TF {cfg.world_frame!r} ({self.tf_backend})" if cfg.world_frame else "none"))
        if cfg.temporal and cfg.temporal_use_poses and not cfg.world_frame:
            log.info("temporal filter without poses (world_frame ''): right for a still rig; set world_frame "
                     "to warp the state with the camera motion")

    # ------------------------------------------------------------------------------------ callbacks
    def _on_pair(self, left_msg: Image, right_msg: Image) -> None:
        """A synchronised pair: decoded and checked here (bad input never waits for a pose), then queued."""
        left = self.decode(left_msg, "left image")
        right = self.decode(right_msg, "right image") if left is not None else None
        if right is None:
            return
        if left.shape != right.shape:
            self.counters.size_mismatch += 1
            self._warn("size_mismatch", f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x"
                                        f"{right.shape[0]} images differ in size: pair dropped")
            return
        frame_id = self.config.camera_frame or left_msg.header.frame_id
        if not frame_id:
            self.counters.rejected_corrupt += 1
            self._warn("frame_id", "left image has an empty header.frame_id and no camera_frame parameter is set")
            return
        self.submit(C.stamp_to_ns(left_msg.header.stamp), frame_id, (left_msg, left, right))

    def unpaired(self) -> Tuple[int, int]:
        return self.sync.unmatched(0), self.sync.queued(0)

    def input_count(self) -> Tuple[str, int]:
        return self.sync.topics[0], self.sync.received[0]

    def _on_camera_info(self, side: int, msg: CameraInfo) -> None:
        try:
            _, _, D = C.camera_info_to_K(msg)
        except C.ConversionError as exc:
            self.counters.rejected_corrupt += 1
            self._warn(f"camera_info{side}", f"{('left', 'right')[side]} camera_info rejected: {exc}")
            return
        if side == 0:
            self.check_distortion(D)
        self._info[side] = msg

    def _resolve_pose(self, frame_id: str, stamp: int, timeout: float) -> np.ndarray:
        if self.tf is None:
            raise LookupError(f"tf is unavailable ({self._tf_unavailable})")
        return self.tf.lookup(self.config.world_frame, frame_id, stamp, timeout)

    # ------------------------------------------------------------------------------------ worker
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

    def process(self, item: Pending) -> None:
        t_start = time.perf_counter()
        left_msg, left, right = item.msgs
        stamp, frame_id = item.stamp, item.frame_id
        h, w = left.shape[:2]
        geo = self._geometry(w, h)
        if geo is None:
            return
        K, baseline, doffs = geo
        if not self.check_continuity(stamp, (w, h), self._reset_all):
            return
        try:
            frame = StereoFrame(left=left, right=right, K=K, baseline=baseline, stamp=stamp, frame_id=frame_id,
                                T_world_cam=item.T, doffs=doffs)
        except ValueError as exc:
            self.counters.rejected_corrupt += 1
            self._warn("frame", f"pair rejected: {exc}")
            return
        self.counters.processed += 1
        res = self.pipeline.process(frame)
        self._last_geometry = (float(K[0, 0]), baseline, doffs)
        t_pub = time.perf_counter()
        self._publish(left_msg, frame, res, frame_id)
        self.published(stamp, t_start, float(res.info.get("compute_ms", 0.0)), (time.perf_counter() - t_pub) * 1e3)

    def _reset_all(self) -> None:
        self.pipeline.reset()
        if self.tf is not None:
            self.tf.clear()

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
    def refresh_counters(self) -> None:
        c = self.counters
        c.left_images, c.right_images = self.sync.received
        c.pairs, c.unsynchronized = self.sync.matched, self.sync.unmatched(0) + self.sync.unmatched(1)

    def diagnostic_extra(self) -> Tuple[List[str], List[Tuple[str, Any]]]:
        c = self.counters
        problems = []
        bad = (c.rejected_encoding + c.rejected_corrupt + c.no_camera_info + c.camera_info_mismatch
               + c.bad_calibration + c.size_mismatch + c.stamp_backwards)
        if bad:
            problems.append(f"{bad} input pairs rejected")
        if c.unsynchronized:
            problems.append(f"{c.unsynchronized} images without a partner")
        fx, baseline, doffs = self._last_geometry
        values = [("model", self.model_name),
                  ("device", str(getattr(getattr(self.estimator, "base", self.estimator), "device", "cpu"))),
                  ("temporal", "on" if self.config.temporal else "off"),
                  ("sync", "approximate" if self.config.approximate_sync else "exact"),
                  ("sync_backend", self.sync.backend), ("fx", fx), ("baseline_m", baseline), ("doffs_px", doffs),
                  ("pipeline_resets", self.pipeline.counters.resets)]
        return problems, values


def main(argv: Optional[List[str]] = None) -> int:
    """``ros2 run mvs_depth_ros stereo_node --ros-args -r left/image_rect:=... -p num_disparities:=128``"""
    return spin_node(StereoNode, "stereo_node", argv)


if __name__ == "__main__":
    sys.exit(main())
