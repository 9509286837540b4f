"""Datasets <-> rosbag2 (mcap or sqlite3) through the pure-Python ``rosbags`` library (no ROS needed).

Writing (``mvs-depth bag convert``): a stream of :class:`~mvs_depth_ros.core.frame.Frame` (a
DeepVideoMVS scene folder or the synthetic renderer) becomes

* ``<prefix>/image_raw``   ``sensor_msgs/msg/Image`` ``rgb8``
* ``<prefix>/camera_info`` ``sensor_msgs/msg/CameraInfo`` (K, P = [K | 0], no distortion)
* ``<prefix>/depth_gt``    ``sensor_msgs/msg/Image`` ``32FC1`` metres, NaN invalid (REP 118)
* ``/tf``                  ``tf2_msgs/msg/TFMessage`` world -> camera body (or -> optical frame)
* ``/tf_static``           the fixed camera body -> optical rotation (REP 103), offered transient-local

all stamped ``start + i / rate`` (strictly increasing), header stamp == bag time. The frame names
and stamps are kept in the bag's ``custom_data`` so results can be named like the offline run's.

Reading: :func:`read_frames` turns a bag back into ``Frame``s (image + camera_info + pose from TF at
the image stamp + ground truth), :func:`bag_info` summarises a bag, :func:`open_bag` /
:func:`iter_messages` are the error-wrapped primitives the player uses. Any unreadable, truncated or
corrupt bag raises :class:`BagError` naming the file.
"""
from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from transforms3d.quaternions import mat2quat, quat2mat

from ..core.frame import Frame
from ..core.geometry import interpolate_pose
from .bag_topics import (CUSTOM_FRAMES_KEY, CUSTOM_SOURCE_KEY, BagFrames, BagTopics,
                         T_link_optical)

log = logging.getLogger(__name__)

#: message definitions of the ROS 2 release the PyPI wheels provide (hashes match rclpy's types)
TYPESTORE_NAME = "ros2_kilted"

IMAGE_T = "sensor_msgs/msg/Image"
CAMERA_INFO_T = "sensor_msgs/msg/CameraInfo"
TF_T = "tf2_msgs/msg/TFMessage"
CLOCK_T = "rosgraph_msgs/msg/Clock"

DEFAULT_START_NS = 1_700_000_000 * 10**9


class BagError(RuntimeError):
    """A bag that cannot be written or read; the message names the file."""


_TYPESTORE = None


def typestore():
    """The shared rosbags typestore (ROS 2 Kilted definitions, which include tf2_msgs)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore
        _TYPESTORE = get_typestore(Stores(TYPESTORE_NAME))
    return _TYPESTORE


# ------------------------------------------------------------------------------------------ messages
def _time(stamp_ns: int):
    T = typestore().types["builtin_interfaces/msg/Time"]
    return T(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9))


def _header(stamp_ns: int, frame_id: str):
    H = typestore().types["std_msgs/msg/Header"]
    return H(stamp=_time(stamp_ns), frame_id=frame_id)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str):
    """``rgb8`` Image (H, W, 3 uint8) or ``32FC1`` Image (H, W float32) as a rosbags message."""
    Image = typestore().types[IMAGE_T]
    a = np.ascontiguousarray(image)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        enc = "rgb8"
    elif a.dtype == np.float32 and a.ndim == 2:
        enc = "32FC1"
        a = a.astype("<f4", copy=False)
    else:
        raise ValueError(f"image_msg: need (H, W, 3) uint8 or (H, W) float32, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    return Image(header=_header(stamp_ns, frame_id), height=h, width=w, encoding=enc, is_bigendian=0,
                 step=a.strides[0], data=np.frombuffer(a.tobytes(), dtype=np.uint8))


def camera_info_msg(K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str):
    ts = typestore()
    CameraInfo, Roi = ts.types[CAMERA_INFO_T], ts.types["sensor_msgs/msg/RegionOfInterest"]
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=_header(stamp_ns, frame_id), height=int(height), width=int(width),
                      distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1).copy(),
                      r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
                      roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def transform_stamped(T_parent_child: np.ndarray, stamp_ns: int, parent: str, child: str):
    ts = typestore()
    TS = ts.types["geometry_msgs/msg/TransformStamped"]
    Tr, V, Q = (ts.types["geometry_msgs/msg/Transform"], ts.types["geometry_msgs/msg/Vector3"],
                ts.types["geometry_msgs/msg/Quaternion"])
    w, x, y, z = mat2quat(np.asarray(T_parent_child)[:3, :3])
    t = np.asarray(T_parent_child)[:3, 3]
    return TS(header=_header(stamp_ns, parent), child_frame_id=child,
              transform=Tr(translation=V(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                           rotation=Q(x=float(x), y=float(y), z=float(z), w=float(w))))


def tf_message(transforms: Sequence):
    return typestore().types[TF_T](transforms=list(transforms))


def transform_to_matrix(tr) -> np.ndarray:
    """geometry_msgs/Transform (rosbags or rclpy object) -> 4x4; the quaternion is normalised."""
    q = np.array([tr.rotation.w, tr.rotation.x, tr.rotation.y, tr.rotation.z], dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    T = np.eye(4)
    T[:3, :3] = quat2mat(q / n)
    T[:3, 3] = (tr.translation.x, tr.translation.y, tr.translation.z)
    return T


def decode_image(msg) -> np.ndarray:
    """Image message (rosbags or rclpy) -> RGB uint8 (H, W, 3). Supports rgb8/bgr8/rgba8/bgra8/mono8."""
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding).lower()
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if channels is None:
        raise ValueError(f"unsupported colour encoding {msg.encoding!r}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if step < w * channels or buf.size < step * h:
        raise ValueError(f"image buffer too small: {buf.size} bytes for {w}x{h} {enc} step {step}")
    a = buf[: step * h].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if enc in ("bgr8", "bgra8"):
        a = a[..., 2::-1]
    elif channels == 4:
        a = a[..., :3]
    elif channels == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def decode_depth(msg) -> np.ndarray:
    """Depth image (``32FC1`` metres or ``16UC1`` millimetres, REP 118) -> float32 metres.

    ``32FC1`` values are returned bit-exact (NaN already marks invalid pixels; a prediction is not
    altered before evaluation); ``16UC1`` zeros become NaN. Also decodes ``32FC1`` confidence images.
    """
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding).upper()
    if enc == "32FC1":
        dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
    elif enc in ("16UC1", "MONO16"):
        dt = np.dtype(">u2" if msg.is_bigendian else "<u2")
    else:
        raise ValueError(f"unsupported depth encoding {msg.encoding!r}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if step < w * dt.itemsize or buf.size < step * h:
        raise ValueError(f"depth buffer too small: {buf.size} bytes for {w}x{h} {enc} step {step}")
    rows = buf[: step * h].reshape(h, step)[:, : w * dt.itemsize]
    d = np.ascontiguousarray(rows).view(dt).reshape(h, w)
    if dt.kind == "u":
        out = d.astype(np.float32) / 1000.0
        out[d == 0] = np.nan
        return out
    return d.astype(np.float32)


def camera_info_K(msg) -> np.ndarray:
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info with invalid K {K.reshape(-1).tolist()}")
    return K


# ------------------------------------------------------------------------------------------- writing
def bag_qos(transient_local: bool, depth: int):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                    QosTime)
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


@dataclass
class WriteSummary:
    path: Path
    frames: int = 0
    poses: int = 0
    depth_gt: int = 0
    stamps: List[int] = field(default_factory=list)
    names: List[str] = field(default_factory=list)


def open_writer(out: Path, storage: str, rate: float):
    """An opened rosbag2 ``Writer`` for a new folder ``out`` (``storage`` mcap | sqlite3); checks ``rate``."""
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of Hz, got {rate}")
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
    try:
        writer = Writer(out, version=9, storage_plugin=plugins[storage])
        writer.open()
    except (WriterError, OSError) as exc:
        raise BagError(f"{out}: cannot create bag: {exc}") from None
    return writer


def write_bag(frames: Iterable[Frame], out: os.PathLike | str, *, rate: float = 10.0,
              storage: str = "mcap", topics: BagTopics = BagTopics(), tf_frames: BagFrames = BagFrames(),
              start_ns: int = DEFAULT_START_NS, source: str = "") -> WriteSummary:
    """Write ``frames`` to a new rosbag2 folder ``out`` (must not exist).

    ``rate`` (Hz) sets the stamps ``start_ns + round(i * 1e9 / rate)``. Frames without a valid pose
    get no ``/tf`` entry (tracking lost); frames without ``depth_gt`` get no ground-truth message.
    With ``tf_frames.mount`` empty, ``/tf`` goes straight from world to the optical frame.
    """
    out = Path(out)
    writer = open_writer(out, storage, rate)
    ts = typestore()
    summary = WriteSummary(path=out)
    T_mount_opt = T_link_optical()
    T_opt_mount = np.linalg.inv(T_mount_opt)
    try:
        c_static = writer.add_connection(topics.tf_static, TF_T, typestore=ts,
                                         offered_qos_profiles=[bag_qos(True, 1)])
        c_tf = writer.add_connection(topics.tf, TF_T, typestore=ts, offered_qos_profiles=[bag_qos(False, 100)])
        c_info = writer.add_connection(topics.camera_info, CAMERA_INFO_T, typestore=ts,
                                       offered_qos_profiles=[bag_qos(False, 10)])
        c_img = writer.add_connection(topics.image, IMAGE_T, typestore=ts, offered_qos_profiles=[bag_qos(False, 10)])
        c_gt = writer.add_connection(topics.depth_gt, IMAGE_T, typestore=ts, offered_qos_profiles=[bag_qos(False, 10)])

        def put(conn, stamp, msg, msgtype):
            writer.write(conn, stamp, ts.serialize_cdr(msg, msgtype))

        if tf_frames.mount:
            put(c_static, start_ns, tf_message([transform_stamped(T_mount_opt, start_ns, tf_frames.mount,
                                                                  tf_frames.camera)]), TF_T)
        for i, f in enumerate(frames):
            stamp = start_ns + int(round(i * 1e9 / rate))
            if f.has_pose:
                if tf_frames.mount:
                    tr = transform_stamped(f.T_world_cam @ T_opt_mount, stamp, tf_frames.world, tf_frames.mount)
                else:
                    tr = transform_stamped(f.T_world_cam, stamp, tf_frames.world, tf_frames.camera)
                put(c_tf, stamp, tf_message([tr]), TF_T)
                summary.poses += 1
            put(c_info, stamp, camera_info_msg(f.K, f.width, f.height, stamp, tf_frames.camera), CAMERA_INFO_T)
            put(c_img, stamp, image_msg(f.image, stamp, tf_frames.camera), IMAGE_T)
            if f.depth_gt is not None:
                put(c_gt, stamp, image_msg(np.asarray(f.depth_gt, dtype=np.float32), stamp, tf_frames.camera),
                    IMAGE_T)
                summary.depth_gt += 1
            summary.frames += 1
            summary.stamps.append(stamp)
            summary.names.append(f.name or str(i))
        writer.set_custom_data(CUSTOM_FRAMES_KEY, json.dumps({"names": summary.names, "stamps": summary.stamps}))
        writer.set_custom_data(CUSTOM_SOURCE_KEY, json.dumps({
            "source": source, "rate_hz": rate, "world_frame": tf_frames.world,
            "camera_frame": tf_frames.camera, "mount_frame": tf_frames.mount, "topics": topics.__dict__}))
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - already failing; leave the partial bag for inspection
            pass
        raise
    return summary


# ------------------------------------------------------------------------------------------- reading
_READ_ERRORS: Tuple[type, ...] = (OSError, ValueError, KeyError, IndexError, EOFError, TypeError,
                                  AssertionError)


def _wrap_errors():
    from rosbags.rosbag2 import ReaderError
    try:
        import sqlite3
        extra: Tuple[type, ...] = (sqlite3.Error,)
    except ImportError:  # pragma: no cover
        extra = ()
    try:
        from rosbags.serde import SerdeError
        extra += (SerdeError,)
    except ImportError:  # pragma: no cover
        pass
    import struct
    return (ReaderError, struct.error) + extra + _READ_ERRORS


@contextmanager
def open_bag(path: os.PathLike | str):
    """Open a rosbag2 folder (or a bare ``.mcap`` / ``.db3`` file) for reading; BagError on failure."""
    from rosbags.rosbag2 import Reader
    p = Path(path)
    errors = _wrap_errors()
    if not p.exists():
        raise BagError(f"{p}: bag does not exist")
    try:
        reader = Reader(p)
        reader.open()
    except errors as exc:
        raise BagError(f"{p}: not a readable rosbag2 (corrupt or truncated?): {type(exc).__name__}: {exc}") from None
    try:
        yield reader
    finally:
        try:
            reader.close()
        except errors:  # pragma: no cover - closing a broken file
            pass


def iter_messages(reader, path: os.PathLike | str, topics: Optional[Iterable[str]] = None,
                  start: Optional[int] = None) -> Iterator[Tuple[object, int, bytes]]:
    """``(connection, bag_time_ns, raw_cdr)`` in time order; storage errors become BagError(path)."""
    errors = _wrap_errors()
    wanted = set(topics) if topics is not None else None
    conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
    if wanted is not None and not conns:
        return
    try:
        for conn, t, raw in reader.messages(connections=conns, start=start):
            yield conn, t, raw
    except errors as exc:
        raise BagError(f"{path}: error while reading messages (corrupt or truncated bag?): "
                       f"{type(exc).__name__}: {exc}") from None


def bag_custom_data(reader) -> Dict[str, str]:
    meta = getattr(reader.storage, "metadata", None)
    return dict(getattr(meta, "custom", None) or {})


def recorded_topics(path: os.PathLike | str) -> BagTopics:
    """The topic names a bag written by :func:`write_bag` was given (``--image-topic`` ...); the defaults
    for other bags."""
    with open_bag(path) as reader:
        raw = bag_custom_data(reader).get(CUSTOM_SOURCE_KEY)
    try:
        names = json.loads(raw).get("topics", {}) if raw else {}
    except (ValueError, AttributeError):
        names = {}
    known = set(BagTopics.__dataclass_fields__)
    return BagTopics(**{k: v for k, v in names.items() if k in known and isinstance(v, str) and v})


def frame_names(path: os.PathLike | str) -> Dict[int, str]:
    """stamp (ns) -> frame name of a bag written by :func:`write_bag` ({} for other bags)."""
    with open_bag(path) as reader:
        raw = bag_custom_data(reader).get(CUSTOM_FRAMES_KEY)
    if not raw:
        return {}
    try:
        d = json.loads(raw)
        return {int(s): str(n) for s, n in zip(d["stamps"], d["names"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise BagError(f"{path}: malformed {CUSTOM_FRAMES_KEY} metadata: {exc}") from None


def bag_info(path: os.PathLike | str) -> Dict[str, object]:
    """Storage, duration, message counts per topic (from the metadata, no full scan)."""
    with open_bag(path) as reader:
        topics = {name: {"type": info.msgtype, "count": int(info.msgcount)}
                  for name, info in sorted(reader.topics.items())}
        n = int(reader.message_count)
        return {
            "path": str(path),
            "storage": ",".join(sorted({Path(str(getattr(f, "path", f))).suffix or "?" for f in
                                        getattr(reader.storage, "storages", [])}) or [Path(str(path)).suffix]),
            "messages": n,
            "start_ns": int(reader.start_time) if n else None,
            "end_ns": int(reader.end_time) if n else None,
            "duration_s": (int(reader.duration) - 1) / 1e9 if n else 0.0,
            "topics": topics,
            "custom_data_keys": sorted(bag_custom_data(reader)),
        }


class TfTimeline:
    """All transforms of a bag (static and timed) with lookups at a stamp.

    Timed edges are interpolated (linear translation, quaternion slerp) between the two samples around
    the stamp when they are at most ``max_gap_ns`` apart; outside the sampled range a lookup succeeds
    only within ``tolerance_ns`` of the nearest sample. Static edges hold at all times.
    """

    def __init__(self, max_gap_ns: int = 500_000_000, tolerance_ns: int = 0):
        self.static: Dict[str, Tuple[str, np.ndarray]] = {}
        self._timed: Dict[str, Tuple[str, List[int], List[np.ndarray]]] = {}
        self.max_gap_ns = int(max_gap_ns)
        self.tolerance_ns = int(tolerance_ns)
        self.rejected = 0

    def add(self, msg, static: bool) -> None:
        for tr in msg.transforms:
            parent, child = tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")
            try:
                T = transform_to_matrix(tr.transform)
            except ValueError:
                self.rejected += 1
                continue
            if static:
                self.static[child] = (parent, T)
                continue
            entry = self._timed.setdefault(child, (parent, [], []))
            if entry[0] != parent:          # re-parented frame: keep the first parent, count the rest
                self.rejected += 1
                continue
            t = stamp_to_ns(tr.header.stamp)
            k = bisect.bisect_left(entry[1], t)
            if k < len(entry[1]) and entry[1][k] == t:
                entry[2][k] = T
            else:
                entry[1].insert(k, t)
                entry[2].insert(k, T)

    def _edge(self, child: str, t: int) -> Optional[Tuple[str, np.ndarray]]:
        if child in self.static:
            return self.static[child]
        entry = self._timed.get(child)
        if entry is None:
            return None
        parent, stamps, mats = entry
        k = bisect.bisect_left(stamps, t)
        if k < len(stamps) and stamps[k] == t:
            return parent, mats[k]
        if 0 < k < len(stamps):
            t0, t1 = stamps[k - 1], stamps[k]
            if t1 - t0 <= self.max_gap_ns:
                return parent, interpolate_pose(mats[k - 1], mats[k], (t - t0) / (t1 - t0))
        near = [j for j in (k - 1, k) if 0 <= j < len(stamps)]
        if near:
            j = min(near, key=lambda j: abs(stamps[j] - t))
            if abs(stamps[j] - t) <= self.tolerance_ns:
                return parent, mats[j]
        return None

    def lookup(self, target: str, source: str, t: int) -> Optional[np.ndarray]:
        """Pose of ``source`` in ``target`` (T_target_source) at ``t``, or None when not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        T = np.eye(4)
        frame = source
        for _ in range(64):
            if frame == target:
                return T
            edge = self._edge(frame, t)
            if edge is None:
                return None
            frame, T_parent_child = edge
            T = T_parent_child @ T
        return None


@dataclass
class ReadCounters:
    images: int = 0
    frames: int = 0
    no_camera_info: int = 0
    no_pose: int = 0
    bad_messages: int = 0
    gt_unmatched: int = 0


def read_frames(path: os.PathLike | str, *, topics: BagTopics = BagTopics(), world_frame: str = "odom",
                camera_frame: Optional[str] = None, tf_tolerance_ns: int = 0, tf_max_gap_ns: int = 0,
                counters: Optional[ReadCounters] = None) -> Iterator[Frame]:
    """The bag's camera stream as ``Frame``s (in image-stamp order).

    Pose = TF ``world_frame`` <- the image's ``header.frame_id`` (or ``camera_frame``) at the image
    stamp; ``None`` when TF cannot answer (counted). By default only a transform at exactly the image
    stamp counts (a converted dataset has one per posed frame, and a frame whose pose was lost must stay
    pose-less); for recorded bags with asynchronous TF pass ``tf_max_gap_ns`` (interpolate between
    samples at most that far apart) and/or ``tf_tolerance_ns``. ``K`` from the camera_info with the image's
    stamp, else the latest earlier one; images with no camera_info yet are skipped (counted). Ground
    truth from the depth topic at exactly the image stamp. Names from the bag's frame list when it has
    one, else the stamp. Corrupt bags raise BagError naming the file.
    """
    c = counters if counters is not None else ReadCounters()
    ts = typestore()
    names = frame_names(path)
    tf = TfTimeline(max_gap_ns=tf_max_gap_ns, tolerance_ns=tf_tolerance_ns)
    gts: Dict[int, np.ndarray] = {}
    infos: List[Tuple[int, np.ndarray]] = []
    images: List[Tuple[int, object]] = []
    wanted = [topics.image, topics.camera_info, topics.depth_gt, topics.tf, topics.tf_static]
    with open_bag(path) as reader:
        for conn, _, raw in iter_messages(reader, path, wanted):
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                if conn.topic in (topics.tf, topics.tf_static):
                    tf.add(msg, static=conn.topic == topics.tf_static)
                elif conn.topic == topics.camera_info:
                    infos.append((stamp_to_ns(msg.header.stamp), camera_info_K(msg)))
                elif conn.topic == topics.depth_gt:
                    gts[stamp_to_ns(msg.header.stamp)] = decode_depth(msg)
                else:
                    images.append((stamp_to_ns(msg.header.stamp), msg))
            except Exception as exc:  # noqa: BLE001 - one bad message must not end the read
                c.bad_messages += 1
                log.warning("%s: skipping a bad message on %s: %s", path, conn.topic, exc)
    infos.sort(key=lambda x: x[0])
    info_stamps = [s for s, _ in infos]
    images.sort(key=lambda x: x[0])
    used_gt = set()
    for stamp, msg in images:
        c.images += 1
        k = bisect.bisect_right(info_stamps, stamp)
        if k == 0:
            c.no_camera_info += 1
            continue
        try:
            rgb = decode_image(msg)
        except ValueError as exc:
            c.bad_messages += 1
            log.warning("%s: skipping image at %d: %s", path, stamp, exc)
            continue
        cam = camera_frame or msg.header.frame_id
        T = tf.lookup(world_frame, cam, stamp)
        if T is None:
            c.no_pose += 1
        gt = gts.get(stamp)
        if gt is not None and gt.shape != rgb.shape[:2]:
            c.bad_messages += 1
            gt = None
        if gt is not None:
            used_gt.add(stamp)
        c.frames += 1
        yield Frame(image=rgb, K=infos[k - 1][1], T_world_cam=T, stamp=stamp, frame_id=cam,
                    name=names.get(stamp, str(stamp)), depth_gt=gt)
    c.gt_unmatched = len(set(gts) - used_gt)


# ------------------------------------------------------------------------------------------------ CLI
def _frames_from_args(args) -> Tuple[Iterable[Frame], str]:
    if args.synthetic:
        from .synthetic import render_sequence
        seq = render_sequence(n_frames=args.frames or 20, width=args.width, height=args.height, seed=args.seed)
        return seq.frames, f"synthetic(frames={args.frames or 20}, {args.width}x{args.height}, seed={args.seed})"
    from .scenes import load_scene, load_tum_pair
    if (Path(args.scene) / "cam.txt").is_file():      # a TUM / DeMoN two-view pair folder
        pair = load_tum_pair(args.scene)
        for f in pair:
            f.name = Path(f.name).name
        return pair[: args.frames or None], f"TUM pair {Path(args.scene).resolve()}"
    scene = load_scene(args.scene)
    stop = min(len(scene), args.frames) if args.frames else None
    return scene.frames(0, stop), str(Path(args.scene).resolve())


def print_info(info: Dict[str, object]) -> None:
    print(f"bag:      {info['path']}")
    print(f"storage:  {info['storage']}")
    print(f"messages: {info['messages']}   duration: {info['duration_s']:.3f} s")
    if info["start_ns"] is not None:
        s0, e0 = divmod(int(info["start_ns"]), 10**9), divmod(int(info["end_ns"]) - 1, 10**9)
        print(f"start:    {s0[0]}.{s0[1]:09d} s   end: {e0[0]}.{e0[1]:09d} s")
    width = max([5] + [len(t) for t in info["topics"]])
    for name, t in info["topics"].items():
        print(f"  {name:<{width}}  {t['count']:>7}  {t['type']}")


def add_bag_cli(prog: str, description: str,
                convert_help: str) -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser shared by ``mvs-depth bag`` and ``mvs-depth stereo-bag``: an ``info`` command and a ``convert``
    command with the output options (``--out``, ``--rate``, ``--start``, ``--storage``, ``--frames``) already added;
    returns ``(parser, convert)`` for the caller's source options."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help=convert_help)
    c.add_argument("--out", type=Path, required=True, help="output bag folder (must not exist)")
    c.add_argument("--rate", type=float, default=10.0, help="rate of the stamps in Hz (default 10)")
    c.add_argument("--start", type=float, default=DEFAULT_START_NS / 1e9, help="stamp of the first message, s")
    c.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    i = sub.add_parser("info", help="topics, message counts and duration of a bag")
    i.add_argument("bag", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON")
    return p, c


def run_bag_cli(parser: argparse.ArgumentParser, args: argparse.Namespace, convert: Callable[[], None]) -> int:
    """Run the parsed command of :func:`add_bag_cli`'s parser: ``info`` here, ``convert`` by ``convert()``
    (which prints its summary); a bag or input problem is one line on stderr and exit status 1."""
    try:
        if args.cmd == "info":
            info = bag_info(args.bag)
            print(json.dumps(info, indent=2)) if args.json else print_info(info)
            return 0
        if args.frames < 0:
            parser.error("--frames must be >= 0")
        convert()
        return 0
    except BagError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:   # SceneError / MiddleburyError are ValueErrors and name their file
        print(f"{parser.prog} {args.cmd}: {exc}", file=sys.stderr)
        return 1


def cli_main(argv: Optional[List[str]] = None) -> int:
    p, c = add_bag_cli("mvs-depth bag", "Convert datasets to rosbag2 and inspect bags.",
                       "DeepVideoMVS scene folder or synthetic sequence -> rosbag2")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", type=Path, help="scene folder (images/, depth/, poses.txt, K.txt) or a TUM/DeMoN "
                     "pair folder (cam.txt, poses.txt, 0000.jpg, 0001.jpg, *.npy)")
    src.add_argument("--synthetic", action="store_true", help="render a synthetic sequence with exact depth")
    c.add_argument("--frames", type=int, default=0, help="number of frames (0 = all; synthetic default 20)")
    c.add_argument("--width", type=int, default=320, help="synthetic image width")
    c.add_argument("--height", type=int, default=240, help="synthetic image height")
    c.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    c.add_argument("--world-frame", default=BagFrames.world)
    c.add_argument("--camera-frame", default=BagFrames.camera, help="optical frame of the images")
    c.add_argument("--mount-frame", default=BagFrames.mount,
                   help="camera body frame: /tf goes world->mount, /tf_static mount->optical ('' = none)")
    c.add_argument("--topics", default="/camera", help="prefix of image_raw, camera_info, depth_gt")
    c.add_argument("--image-topic", default="", help="image topic ('' = PREFIX/image_raw), e.g. /camera/color/image_raw")
    c.add_argument("--camera-info-topic", default="", help="camera_info topic ('' = PREFIX/camera_info)")
    c.add_argument("--depth-topic", default="", help="ground-truth depth topic ('' = PREFIX/depth_gt), e.g. "
                   "/camera/aligned_depth_to_color/image_raw")
    args = p.parse_args(argv)

    def convert() -> None:
        frames, source = _frames_from_args(args)
        s = write_bag(frames, args.out, rate=args.rate, storage=args.storage,
                      topics=BagTopics.from_prefix(args.topics).with_(**{
                          k: v for k, v in (("image", args.image_topic), ("camera_info", args.camera_info_topic),
                                            ("depth_gt", args.depth_topic)) if v}),
                      tf_frames=BagFrames(world=args.world_frame, camera=args.camera_frame, mount=args.mount_frame),
                      start_ns=int(round(args.start * 1e9)), source=source)
        print(f"wrote {s.path}: {s.frames} frames ({s.poses} posed, {s.depth_gt} with ground truth) "
              f"at {args.rate:g} Hz, storage {args.storage}")
        print_info(bag_info(s.path))

    return run_bag_cli(p, args, convert)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
