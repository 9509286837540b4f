"""``map_node``: fuses the video node's depth into a TSDF map and publishes it (cloud, optional mesh).

Subscribes (reliable by default, matching ``mvs_node``'s outputs; ``qos_reliability`` overrides):

* ``depth_estimate`` (``mvs_depth_ros/msg/DepthEstimate``: depth, confidence, camera_info and the pose in
  one message) when the interface is built and ``input`` is ``auto`` or ``depth_estimate``;
* otherwise ``depth`` (32FC1 / 16UC1) + ``depth/camera_info`` (latest kept) + the pose from TF
  (``world_frame`` <- the depth's frame at its stamp; ``/tf`` + transient-local ``/tf_static``);
* ``image`` (rgb8 / bgr8 / mono8, best effort) for colour when ``use_color``: matched to a depth map by
  its exact stamp (``mvs_node`` stamps depth with the input image's stamp; an image not received yet is
  waited for up to 0.1 s while images are arriving); grey without a match.

Confidence: ``confidence_threshold`` < 0 (the default, -1) fuses only the pixels whose confidence reaches the
threshold the estimator recommends, which every DepthEstimate carries (``confidence_threshold`` field; 0.5,
the project default, for messages built before the field existed); 0 fuses everything; a value in (0, 1]
overrides the recommendation. The depth + camera_info + TF input has no confidence: nothing is filtered
there, the depth topic is whatever ``mvs_node``'s own ``confidence_threshold`` left valid (NaN elsewhere).

Publishes:

* ``map`` (sensor_msgs/PointCloud2, x y z rgb in ``world_frame``), reliable + transient-local (late
  subscribers such as RViz get the latest map), at ``publish_rate`` Hz when the map changed;
* ``map_mesh`` (visualization_msgs/Marker TRIANGLE_LIST) when ``publish_mesh`` (at ``mesh_rate`` Hz, at
  most ``mesh_max_triangles`` triangles: Marker messages are built point by point, so keep it modest);
* ``/diagnostics``.

Output timers (map, mesh, diagnostics) tick on the steady clock, also with ``use_sim_time`` (a finished or
paused bag stops ``/clock``, and the last fused depth maps must still reach the map); the messages are
stamped with the node's clock (the bag time under ``use_sim_time``).

Services (``std_srvs/Trigger``; pip: ``ros-std-srvs``): ``~/save_map`` writes ``save_path`` (cloud) and
``<stem>_mesh.ply``; ``~/reset_map`` empties the map. Without ``std_srvs`` the live parameter
``command`` does the same (``ros2 param set /map_node command save`` | ``reset``).

The node only converts: fusion, filtering and extraction are :mod:`mvs_depth_ros.recon`. Integration
runs in a worker thread behind a bounded queue (the oldest waiting depth map is dropped, and counted,
when fusion falls behind). Memory is bounded by ``max_blocks`` voxel blocks; when the budget is reached
the map stops growing, a warning is logged and ``/diagnostics`` says so. Bad input is logged (rate
limited), counted and never stops the node.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..models.base import DEFAULT_CONFIDENCE_THRESHOLD
from ..recon.consistency import consistent_view_count
from ..recon.tsdf import TSDFConfig, TSDFVolume
from . import conversions as C
from . import interfaces
from .diagnostics import RateLimitedLog, RateWindow, make_status, publish_status
from .node_main import spin_node
from .params import ParameterError, Spec, declare_all, live_changes, with_changes
from .qos import diagnostics_qos, make_qos
from .tf_buffer import TransformError, make_tf_lookup

#: longest wait of the fusion worker for the colour image of a depth map (see MapNode._wait_for_color)
COLOR_WAIT_S = 0.1

MAP_SPECS: Dict[str, Spec] = {
    # input
    "input": Spec("auto", "depth input: auto (depth_estimate when the interface is built, else depth + "
                          "camera_info + TF)", choices=("auto", "depth_estimate", "depth")),
    "world_frame": Spec("odom", "frame of the map (the poses' world frame, REP 105)"),
    "use_color": Spec(True, "colour the map from the image topic (matched by stamp)"),
    "confidence_threshold": Spec(-1.0, "fuse only depth with confidence >= this. < 0 (default -1): the threshold "
                                       "the estimator recommends, carried by each DepthEstimate (its "
                                       "confidence_threshold field); 0: fuse all; (0, 1]: this value. "
                                       "input=depth carries no confidence: nothing is filtered here (mvs_node's "
                                       "own confidence_threshold decides what its depth topic holds)",
                                 -1.0, 1.0, read_only=False),
    "consistency_views": Spec(0, "check each depth map against this many previous ones (0 = off)", 0, 16),
    "consistency_min_views": Spec(1, "previous views that must agree to keep a pixel", 1, 16),
    "consistency_reproj_px": Spec(1.0, "consistency: round-trip reprojection limit, pixels", 0.01, 100.0),
    "consistency_rel_depth": Spec(0.01, "consistency: relative depth difference limit", 1e-4, 1.0),
    # TSDF
    "voxel_size": Spec(0.02, "TSDF voxel size, metres", 1e-3, 10.0),
    "trunc": Spec(0.0, "truncation distance, metres (0 = 4 voxels)", 0.0, 100.0),
    "min_depth": Spec(0.1, "depth below this is not fused, metres", 0.0, 1e4),
    "max_depth": Spec(5.0, "depth beyond this is not fused, metres", 1e-3, 1e4),
    "max_blocks": Spec(50000, "memory budget in voxel blocks (8^3 voxels, ~10 KB each with colour)", 1, 10_000_000),
    "device": Spec("cpu", "open3d device", choices=("cpu", "cuda", "cuda:N", "auto")),
    "weight_threshold": Spec(1.0, "voxels observed with less weight are not extracted", 0.0, 1e6,
                             read_only=False),
    # outputs
    "publish_rate": Spec(1.0, "map cloud publications per second (0 = only on save)", 0.0, 100.0),
    "publish_mesh": Spec(False, "publish map_mesh (visualization_msgs/Marker TRIANGLE_LIST)"),
    "mesh_rate": Spec(0.2, "mesh publications per second", 0.001, 100.0),
    "mesh_max_triangles": Spec(100000, "mesh marker: decimate above this many triangles", 100, 10_000_000,
                               read_only=False),
    "save_path": Spec("map.ply", "save_map writes the cloud here and the mesh to <stem>_mesh.ply", read_only=False),
    "save_on_exit": Spec(False, "save the map when the node stops", read_only=False),
    "command": Spec("", "live fallback for the services: set to 'save' or 'reset'", read_only=False),
    # QoS / pose / logs
    "qos_reliability": Spec("reliable", "depth input subscriptions", choices=("best_effort", "reliable")),
    "qos_depth": Spec(10, "depth input queue depth", 1, 1000),
    "queue_size": Spec(8, "depth maps waiting for fusion; the oldest is dropped beyond this", 1, 1000),
    "tf_backend": Spec("auto", "tf implementation", choices=("auto", "tf2_ros", "builtin")),
    "tf_timeout": Spec(0.2, "seconds to wait for the pose at a depth stamp", 0.0, 10.0, read_only=False),
    "tf_cache_time": Spec(30.0, "seconds of transforms kept", 0.1, 3600.0),
    "tf_max_gap": Spec(0.5, "largest gap between transforms to interpolate across, seconds", 1e-3, 3600.0),
    "diagnostics_period": Spec(1.0, "seconds between /diagnostics messages", 0.05, 60.0),
    "warn_period": Spec(5.0, "the same warning at most once per this many seconds", 0.0, 3600.0),
}


@dataclass(frozen=True)
class MapConfig:
    input: str
    world_frame: str
    use_color: bool
    confidence_threshold: float
    consistency_views: int
    consistency_min_views: int
    consistency_reproj_px: float
    consistency_rel_depth: float
    voxel_size: float
    trunc: float
    min_depth: float
    max_depth: float
    max_blocks: int
    device: str
    weight_threshold: float
    publish_rate: float
    publish_mesh: bool
    mesh_rate: float
    mesh_max_triangles: int
    save_path: str
    save_on_exit: bool
    command: str
    qos_reliability: str
    qos_depth: int
    queue_size: int
    tf_backend: str
    tf_timeout: float
    tf_cache_time: float
    tf_max_gap: float
    diagnostics_period: float
    warn_period: float

    def __post_init__(self) -> None:
        if not self.world_frame:
            raise ParameterError("parameter world_frame must not be empty")
        if not self.min_depth < self.max_depth:
            raise ParameterError(f"parameters min_depth={self.min_depth} / max_depth={self.max_depth}: need min < max")
        if self.trunc and self.trunc < self.voxel_size:
            raise ParameterError(f"parameter trunc={self.trunc}: must be >= voxel_size ({self.voxel_size}) or 0")
        if self.consistency_views and self.consistency_min_views > self.consistency_views:
            raise ParameterError("parameter consistency_min_views cannot exceed consistency_views")
        if self.command not in ("", "save", "reset"):
            raise ParameterError(f"parameter command={self.command!r}: must be '', 'save' or 'reset'")

    @classmethod
    def from_values(cls, values: Dict[str, Any]) -> "MapConfig":
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def tsdf(self) -> TSDFConfig:
        return TSDFConfig(voxel_size=self.voxel_size, trunc=self.trunc or 4 * self.voxel_size,
                          min_depth=self.min_depth, max_depth=self.max_depth, max_blocks=self.max_blocks,
                          device=self.device.replace(":N", ":0"), color=self.use_color)


@dataclass
class MapCounters:
    depth_received: int = 0
    integrated: int = 0
    dropped: int = 0              # waited too long in the queue (fusion slower than the input)
    rejected: int = 0             # undecodable depth / camera_info / pose
    no_camera_info: int = 0
    tf_failures: int = 0
    skipped: int = 0              # nothing to fuse (no valid depth in range, ...)
    low_confidence_px: int = 0    # valid depth pixels not fused because their confidence was below the threshold
    color_matched: int = 0
    budget_dropped_blocks: int = 0
    maps_published: int = 0
    meshes_published: int = 0
    saves: int = 0
    resets: int = 0
    errors: int = 0


@dataclass
class _Item:
    stamp: int
    frame_id: str
    depth: np.ndarray
    confidence: Optional[np.ndarray]
    K: np.ndarray
    T: Optional[np.ndarray]       # None: look it up in TF in the worker
    recommended: Optional[float] = None   # DepthEstimate.confidence_threshold (None: no confidence input)


def cloud_to_pointcloud2(points: np.ndarray, colors: Optional[np.ndarray], header) -> PointCloud2:
    """Unorganised PointCloud2 (x y z [rgb]) from (N, 3) float points and (N, 3) uint8 colours.

    Built with the conversion module's field layout and one buffer copy. TODO(ros layer): move into
    ``ros/conversions.py`` as a public ``points_to_pointcloud2`` (this uses its private byte helper).
    """
    from sensor_msgs.msg import PointField
    dt = C.pointcloud_dtype(colors is not None, False)
    cloud = np.empty(len(points), dtype=dt)
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    cloud["x"], cloud["y"], cloud["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        cloud["rgb"] = C.pack_rgb(colors)
    msg = PointCloud2(header=header, height=1, width=len(points), is_bigendian=sys.byteorder == "big",
                      point_step=dt.itemsize, row_step=dt.itemsize * len(points), is_dense=True)
    msg.fields = [PointField(name=n, offset=int(dt.fields[n][1]), datatype=PointField.FLOAT32, count=1)
                  for n in dt.names]
    msg.data = C._bytes_array(cloud)
    return msg


def mesh_to_marker(mesh, header, max_triangles: int):
    """visualization_msgs/Marker TRIANGLE_LIST (per-vertex colours) of an open3d TriangleMesh."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker
    if len(mesh.triangles) > max_triangles:
        mesh = mesh.simplify_quadric_decimation(int(max_triangles))
    V = np.asarray(mesh.vertices, np.float64)
    T = np.asarray(mesh.triangles).reshape(-1)
    cols = np.asarray(mesh.vertex_colors, np.float64) if mesh.has_vertex_colors() else np.full_like(V, 0.7)
    m = Marker(header=header, ns="map", id=0, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    m.color.a = 1.0
    P, Cc = V[T].tolist(), cols[T].tolist()
    m.points = [Point(x=p[0], y=p[1], z=p[2]) for p in P]
    m.colors = [ColorRGBA(r=c[0], g=c[1], b=c[2], a=1.0) for c in Cc]
    return m


class MapNode(Node):
    """See the module docstring. Keyword arguments are parameter overrides (``MapNode(voxel_size=0.05)``)."""

    def __init__(self, node_name: str = "map_node", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides: Optional[Sequence[Parameter]] = None, cli_args=None, **params):
        overrides = list(parameter_overrides or []) + [Parameter(k, value=v) for k, v in params.items()]
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=overrides)
        self.config = MapConfig.from_values(declare_all(self, MAP_SPECS))
        cfg = self.config
        log = self.get_logger()
        self.counters = MapCounters()
        self._warn = RateLimitedLog(log.warning, cfg.warn_period)
        self.volume = TSDFVolume(cfg.tsdf())
        self._lock = threading.Lock()                 # guards the volume
        self._queue: Deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._images: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        self._history: Deque[tuple] = collections.deque(maxlen=max(cfg.consistency_views, 1))
        self._camera_info: Optional[tuple] = None
        self._version = 0                              # bumps when the map changes
        self._published_version = -1
        self._mesh_version = -1
        self._rate = RateWindow()
        self._last_error = ""
        self._budget_logged = False
        self._threshold_used: Optional[float] = None   # confidence threshold applied to the last depth map

        in_qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        self._io = MutuallyExclusiveCallbackGroup()
        self._pub_group = MutuallyExclusiveCallbackGroup()
        DepthEstimate = interfaces.depth_estimate_type()
        self.tf = None
        self.tf_backend = "none"
        if cfg.input == "depth_estimate" and DepthEstimate is None:
            raise ParameterError("input=depth_estimate but mvs_depth_ros/msg/DepthEstimate is not built "
                                 "(colcon build, or tools/install_ros.sh); use input:=depth")
        if DepthEstimate is not None and cfg.input in ("auto", "depth_estimate"):
            self.input_mode = "depth_estimate"
            self.create_subscription(DepthEstimate, "depth_estimate", self._on_estimate, in_qos, callback_group=self._io)
        else:
            self.input_mode = "depth"
            self.create_subscription(Image, "depth", self._on_depth, in_qos, callback_group=self._io)
            self.create_subscription(CameraInfo, "depth/camera_info", self._on_camera_info, in_qos,
                                     callback_group=self._io)
            self.tf, self.tf_backend = make_tf_lookup(self, cfg.tf_backend, cfg.tf_cache_time, cfg.tf_max_gap,
                                                      on_error=lambda t: self._reject("tf", t))
        if cfg.use_color:
            self.create_subscription(Image, "image", self._on_image, make_qos("best_effort", 10),
                                     callback_group=self._io)
        map_qos = make_qos("reliable", 1, "transient_local")
        self.pub_map = self.create_publisher(PointCloud2, "map", map_qos)
        self.pub_mesh = None
        # output timers run on the steady clock: with use_sim_time a finished (or paused) bag stops /clock, and
        # the map fused from its last depth maps must still be published; the messages keep the node's stamps
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if cfg.publish_mesh:
            from visualization_msgs.msg import Marker
            self.pub_mesh = self.create_publisher(Marker, "map_mesh", map_qos)
            self.create_timer(1.0 / cfg.mesh_rate, self._publish_mesh_timer, callback_group=self._pub_group,
                              clock=steady)
        if cfg.publish_rate > 0:
            self.create_timer(1.0 / cfg.publish_rate, self._publish_map_timer, callback_group=self._pub_group,
                              clock=steady)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self.create_timer(cfg.diagnostics_period, self.publish_diagnostics, callback_group=self._io, clock=steady)
        self.service_mode = "std_srvs"
        try:
            from std_srvs.srv import Trigger
            self.create_service(Trigger, "~/save_map", self._srv_save, callback_group=self._io)
            self.create_service(Trigger, "~/reset_map", self._srv_reset, callback_group=self._io)
        except ImportError:
            self.service_mode = "parameter"
            log.warning("std_srvs is not installed (pip install ros-std-srvs): the save_map / reset_map services "
                        "are OFF; use `ros2 param set <node> command save|reset`")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._work, name="map_worker", daemon=True)
        self._worker.start()
        t = self.volume.config
        log.info(f"TSDF map in {cfg.world_frame!r}: voxel {t.voxel_size:g} m, trunc {t.trunc:g} m, depth "
                 f"{t.min_depth:g}-{t.max_depth:g} m, budget {t.max_blocks} blocks "
                 f"({t.max_blocks * t.block_bytes / 1e6:.0f} MB), open3d {self.volume.device}; input "
                 f"{self.input_mode}{' (tf ' + self.tf_backend + ')' if self.tf else ''}; services: {self.service_mode}; "
                 f"confidence threshold: {self.threshold_mode()}")

    def threshold_mode(self) -> str:
        """The confidence filter in words (startup log, diagnostics)."""
        thr = self.config.confidence_threshold
        if self.input_mode == "depth":
            return "none (input=depth carries no confidence)"
        if thr < 0:
            return "from each DepthEstimate (the estimator's recommendation)"
        return "off (fuse all)" if thr == 0 else f"{thr:g}"

    def threshold_for(self, item: _Item) -> float:
        """Confidence threshold for one depth map: the parameter when >= 0, else the message's recommendation
        (:data:`DEFAULT_CONFIDENCE_THRESHOLD` for DepthEstimates built before the field existed); 0 = no filter."""
        if item.confidence is None:
            return 0.0
        if self.config.confidence_threshold >= 0:
            return self.config.confidence_threshold
        return DEFAULT_CONFIDENCE_THRESHOLD if item.recommended is None else item.recommended

    # ------------------------------------------------------------------------------------ callbacks
    def _reject(self, key: str, text: str) -> None:
        self.counters.rejected += 1
        self._warn(key, text)

    def _enqueue(self, item: _Item) -> None:
        with self._cv:
            self.counters.depth_received += 1
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self.counters.dropped += 1
                self._warn("dropped", f"fusion is behind: dropped the oldest waiting depth map "
                                      f"({self.counters.dropped} so far)")
            self._queue.append(item)
            self._cv.notify()

    def _on_estimate(self, msg) -> None:
        try:
            depth = np.array(C.image_to_depth(msg.depth), dtype=np.float32)
            conf = None
            if msg.confidence.width and msg.confidence.height:
                conf = np.array(C.image_to_array(msg.confidence), dtype=np.float32)
                if conf.shape != depth.shape:
                    raise C.ConversionError(f"confidence {conf.shape} does not match depth {depth.shape}")
            K, (w, h), _ = C.camera_info_to_K(msg.camera_info)
            if (w, h) != (depth.shape[1], depth.shape[0]):
                raise C.ConversionError(f"camera_info {w}x{h} does not match depth {depth.shape[1]}x{depth.shape[0]}")
            T = C.pose_to_matrix(msg.pose.pose)
        except (C.ConversionError, ValueError) as exc:
            self._reject("estimate", f"depth_estimate rejected: {exc}")
            return
        recommended = None
        if hasattr(msg, "confidence_threshold"):       # interfaces built before the field existed lack it
            recommended = float(msg.confidence_threshold)
            if not 0.0 <= recommended <= 1.0:           # NaN included
                self._warn("recommended", f"depth_estimate confidence_threshold={recommended} is not in [0, 1]: "
                                          f"the estimator's recommendation is ignored (fused without it)")
                recommended = 0.0
        frame = msg.pose.header.frame_id.lstrip("/")
        if frame and frame != self.config.world_frame:
            self._warn("frame", f"depth_estimate pose is in {frame!r}, the map in {self.config.world_frame!r}: "
                                f"fused as if they were the same frame")
        self._enqueue(_Item(C.stamp_to_ns(msg.header.stamp), msg.header.frame_id, depth, conf, K, T, recommended))

    def _on_depth(self, msg: Image) -> None:
        info = self._camera_info
        if info is None:
            self.counters.no_camera_info += 1
            self._warn("no_info", "depth received before any depth/camera_info: waiting for camera_info")
            return
        try:
            depth = np.array(C.image_to_depth(msg), dtype=np.float32)
        except C.ConversionError as exc:
            self._reject("depth", f"depth rejected: {exc}")
            return
        K, (w, h) = info
        if (w, h) != (depth.shape[1], depth.shape[0]):
            self._reject("info_size", f"depth {depth.shape[1]}x{depth.shape[0]} does not match camera_info {w}x{h}")
            return
        if not msg.header.frame_id:
            self._reject("frame_id", "depth has an empty header.frame_id: no pose can be looked up")
            return
        self._enqueue(_Item(C.stamp_to_ns(msg.header.stamp), msg.header.frame_id, depth, None, K, None))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K, size, _ = C.camera_info_to_K(msg)
        except C.ConversionError as exc:
            self._reject("camera_info", f"camera_info rejected: {exc}")
            return
        self._camera_info = (K, size)

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = np.array(C.image_to_rgb(msg))
        except C.ConversionError as exc:
            self._warn("image", f"colour image ignored: {exc}")
            return
        with self._cv:
            stamp = C.stamp_to_ns(msg.header.stamp)
            self._images[stamp] = rgb
            while len(self._images) > 30:
                self._images.popitem(last=False)
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------ commands
    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        try:
            changes = live_changes(MAP_SPECS, params)
            cmd = changes.pop("command", "")
            if cmd not in ("", "save", "reset"):
                return SetParametersResult(successful=False, reason="command must be '', 'save' or 'reset'")
            self.config = with_changes(self.config, changes)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if cmd == "save":
            ok, text = self.save()
            return SetParametersResult(successful=ok, reason=text)
        if cmd == "reset":
            self.reset_map()
        return SetParametersResult(successful=True)

    def _srv_save(self, request, response):
        response.success, response.message = self.save()
        return response

    def _srv_reset(self, request, response):
        self.reset_map()
        response.success, response.message = True, "map reset"
        return response

    def save(self, path: Optional[str] = None) -> tuple:
        """Write the cloud to ``path`` (default ``save_path``) and the mesh to ``<stem>_mesh.ply``."""
        cloud = Path(path or self.config.save_path).expanduser()
        mesh = cloud.with_name(cloud.stem + "_mesh" + (cloud.suffix or ".ply"))
        try:
            with self._lock:
                counts = self.volume.save(cloud, mesh, self.config.weight_threshold)
        except Exception as exc:  # noqa: BLE001 - a bad path must not kill the node
            self._warn("save", f"saving the map to {cloud} failed: {type(exc).__name__}: {exc}")
            return False, f"save failed: {type(exc).__name__}: {exc}"
        self.counters.saves += 1
        text = f"saved {counts.get('cloud', 0)} points to {cloud} and {counts.get('mesh', 0)} triangles to {mesh}"
        self.get_logger().info(text)
        return True, text

    def reset_map(self) -> None:
        with self._lock:
            self.volume.reset()
            self._history.clear()
            self._version += 1
        with self._cv:
            self._queue.clear()
        self._budget_logged = False
        self.counters.resets += 1
        self.get_logger().info("map reset")

    # ------------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._queue and not self._stop.is_set():
                    self._cv.wait(0.2)
                if self._stop.is_set():
                    return
                item = self._queue.popleft()
                rgb = self._wait_for_color(item.stamp) if self.config.use_color else None
            try:
                self._integrate(item, rgb)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything one frame does
                self.counters.errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._warn("worker", f"fusing the depth at {item.stamp / 1e9:.6f}s failed: {self._last_error}\n"
                                     f"{traceback.format_exc()}")

    def _wait_for_color(self, stamp: int) -> Optional[np.ndarray]:
        """The colour image stamped ``stamp`` (call with ``_cv`` held). Depth and image that travel together
        (a bag's ground-truth depth, a depth camera) race on separate topics: while images are arriving
        and none this new has yet, wait up to :data:`COLOR_WAIT_S` for it; otherwise fuse grey."""
        deadline = time.monotonic() + COLOR_WAIT_S
        while (stamp not in self._images and 0 <= max(self._images, default=-1) < stamp
               and not self._stop.is_set() and time.monotonic() < deadline):
            self._cv.wait(max(deadline - time.monotonic(), 0.0))
        return self._images.get(stamp)

    def _integrate(self, item: _Item, rgb: Optional[np.ndarray]) -> None:
        cfg = self.config
        T = item.T
        if T is None:
            try:
                T = self.tf.lookup(cfg.world_frame, item.frame_id, item.stamp, cfg.tf_timeout)
            except TransformError as exc:
                self.counters.tf_failures += 1
                self._warn("tf_lookup", f"no pose for {item.frame_id!r} in {cfg.world_frame!r} at "
                                        f"{item.stamp / 1e9:.6f}s: {exc} -> depth not fused")
                return
        depth = item.depth
        thr = self.threshold_for(item)
        self._threshold_used = thr if item.confidence is not None else None
        if thr > 0:
            low = ~(item.confidence >= thr) & np.isfinite(depth)     # NaN confidence counts as low
            self.counters.low_confidence_px += int(np.count_nonzero(low))
            depth = np.where(low, np.float32(np.nan), depth)
        if cfg.consistency_views > 0:
            hist = list(self._history)
            self._history.append((item.depth, item.K, T))
            if len(hist) < cfg.consistency_min_views:
                return   # not enough history yet to check against: wait (the map starts a few frames late)
            count = consistent_view_count(depth, item.K, T, [h[0] for h in hist], [h[1] for h in hist],
                                          [h[2] for h in hist], cfg.consistency_reproj_px, cfg.consistency_rel_depth)
            depth = np.where(count >= cfg.consistency_min_views, depth, np.float32(np.nan))
        if rgb is not None:
            self.counters.color_matched += 1
        with self._lock:
            st = self.volume.integrate(depth, item.K, T, rgb)
            if st.integrated:
                self._version += 1
        if not st.integrated:
            self.counters.skipped += 1
            self._warn("skip", f"depth at {item.stamp / 1e9:.6f}s not fused: {st.reason}")
            return
        self.counters.integrated += 1
        self.counters.budget_dropped_blocks += st.dropped_blocks
        self._rate.tick()
        if self.volume.budget_reached and not self._budget_logged:
            self._budget_logged = True
            self.get_logger().warning(
                f"map memory budget reached ({cfg.max_blocks} voxel blocks): the map no longer grows. Raise "
                f"max_blocks, use a larger voxel_size or smaller max_depth, or call ~/reset_map")

    # ------------------------------------------------------------------------------------ outputs
    def _guarded(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a timer must never take the node down
            self.counters.errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._warn(what, f"{what} failed: {self._last_error}\n{traceback.format_exc()}")

    def _publish_map_timer(self) -> None:
        self._guarded("publish_map", self.publish_map)

    def _publish_mesh_timer(self) -> None:
        self._guarded("publish_mesh", self.publish_mesh)

    def publish_map(self, force: bool = False) -> None:
        if not force and self._version == self._published_version:
            return
        with self._lock:
            version = self._version
            pts, cols = self.volume.point_cloud(self.config.weight_threshold)
        header = C.make_header(self.get_clock().now().nanoseconds, self.config.world_frame)
        self.pub_map.publish(cloud_to_pointcloud2(pts, cols, header))
        self._published_version = version
        self.counters.maps_published += 1

    def publish_mesh(self) -> None:
        if self.pub_mesh is None or self._version == self._mesh_version:
            return
        with self._lock:
            version = self._version
            mesh = self.volume.mesh(self.config.weight_threshold)
        header = C.make_header(self.get_clock().now().nanoseconds, self.config.world_frame)
        self.pub_mesh.publish(mesh_to_marker(mesh, header, self.config.mesh_max_triangles))
        self._mesh_version = version
        self.counters.meshes_published += 1

    def diagnostic_status(self) -> DiagnosticStatus:
        c = self.counters
        problems = []
        if c.errors:
            problems.append(f"{c.errors} fusion errors (last: {self._last_error})")
        if self.volume.budget_reached:
            problems.append(f"memory budget reached ({self.config.max_blocks} blocks): map not growing")
        if c.rejected or c.no_camera_info:
            problems.append(f"{c.rejected + c.no_camera_info} inputs rejected")
        if c.tf_failures:
            problems.append(f"{c.tf_failures} depth maps without a pose")
        if c.dropped:
            problems.append(f"{c.dropped} depth maps dropped (fusion slower than the input)")
        level = DiagnosticStatus.ERROR if c.errors else (DiagnosticStatus.WARN if problems else DiagnosticStatus.OK)
        message = "; ".join(problems) if problems else ("ok" if c.integrated else "waiting for depth")
        values = [("input", self.input_mode), ("confidence_threshold_mode", self.threshold_mode()),
                  ("confidence_threshold_used", "none" if self._threshold_used is None else self._threshold_used),
                  ("fusion_rate_hz", self._rate.rate()), ("blocks", self.volume.n_blocks),
                  ("memory_mb", self.volume.memory_bytes / 1e6), ("budget_blocks", self.config.max_blocks),
                  ("device", str(self.volume.device)), ("queue", len(self._queue))] + list(asdict(c).items())
        return make_status(f"{self.get_name()}: TSDF map", self.get_fully_qualified_name(), level, message, values)

    def publish_diagnostics(self) -> None:
        publish_status(self, self.pub_diag, self.diagnostic_status())

    # ------------------------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        worker = getattr(self, "_worker", None)   # absent when __init__ failed part way
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=30)

    def destroy_node(self):
        if not hasattr(self, "_stop"):
            return super().destroy_node()
        self.shutdown()
        if self.config.save_on_exit and self.counters.integrated:
            self.save()
        return super().destroy_node()


def main(argv: Optional[List[str]] = None) -> int:
    """``ros2 run mvs_depth_ros map_node --ros-args -p world_frame:=odom -p voxel_size:=0.02 ...``"""
    return spin_node(MapNode, "map_node", argv, large_messages=False)


if __name__ == "__main__":
    sys.exit(main())
