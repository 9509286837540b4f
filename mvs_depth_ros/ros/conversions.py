"""ROS messages <-> numpy / core objects. No per-pixel Python anywhere.

Payloads are read with ``np.frombuffer`` (zero copy, honouring ``step`` and ``is_bigendian``) and written
as one ``array.array('B')`` filled from the array's buffer (one memcpy): rclpy's generated setters keep an
``array.array`` of type code ``'B'`` as is, while a numpy array or memoryview is converted element by
element (~200-300 ms for a 640x480 rgb8 image, see benchmarks/bench_conversions.py), and ``bytes`` are
checked element by element when field checks are on.

Conventions: images are HxW[xC] arrays; depth is float32 metres with NaN invalid (REP 118 ``32FC1``), or
uint16 millimetres with 0 invalid (``16UC1``); poses are 4x4 float64 matrices; stamps are int nanoseconds.
"""
from __future__ import annotations

import array
import sys
from typing import Optional, Sequence, Tuple

import numpy as np
import transforms3d.quaternions as tq
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, Quaternion, Transform, TransformStamped, Vector3, Point
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..core.geometry import backproject_into

#: encoding -> (numpy dtype, channels)
ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
#: encodings a colour pipeline accepts (everything else is rejected with a reason)
COLOR_ENCODINGS = ("rgb8", "bgr8", "mono8")
_HOST_BIG_ENDIAN = sys.byteorder == "big"


class ConversionError(ValueError):
    """A message that cannot be converted; the text says why (for a rate-limited log line)."""


class UnsupportedEncoding(ConversionError):
    pass


# ---------------------------------------------------------------------------------------------------
# time and headers
# ---------------------------------------------------------------------------------------------------

def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(stamp, frame_id: str) -> Header:
    """Header from a ``Time`` or int nanoseconds."""
    if not isinstance(stamp, Time):
        stamp = ns_to_stamp(stamp)
    return Header(stamp=stamp, frame_id=frame_id)


_ALLOCATOR_TUNED = False


def tune_allocator_for_large_messages(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep multi-megabyte message buffers on glibc's heap instead of fresh ``mmap`` pages.

    Every image / point cloud allocates a few MB (numpy arrays, the ``array.array`` payload, rclpy's
    serialisation buffer). Above glibc's mmap threshold each of those is a new mapping whose pages fault
    in on first touch and are unmapped on free: on a loaded machine that alone costs 10-50 ms per
    640x480 PointCloud2 (see benchmarks/bench_conversions.py). Raising the threshold (and the trim
    threshold) lets the heap reuse the same pages. Process-wide, idempotent; the nodes' ``main`` and the
    launch runner call it. Returns False where it does not apply (not glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


_LIBC = None


def trim_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``); False where it does not apply.

    With :func:`tune_allocator_for_large_messages` the heap keeps freed multi-MB buffers for reuse (its trim
    threshold is high), so RSS ratchets up to the highest number of image / cloud buffers ever alive at once
    (threads overlapping: DDS receiving while the worker publishes) and stays there: a soak sees growth in
    steps that looks like a leak. The nodes call this every ``trim_period`` seconds, which keeps RSS at the
    live working set; between calls the heap still reuses its pages.
    """
    global _LIBC
    try:
        if _LIBC is None:
            import ctypes
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _bytes_array(arr: np.ndarray) -> array.array:
    """One copy of ``arr``'s bytes into the type rclpy's uint8[] setter accepts without validation."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return out


def _payload(nbytes: int) -> Tuple[array.array, np.ndarray]:
    """A message payload of ``nbytes`` and a writable uint8 numpy view of the same memory: fill the view
    in place, then assign the array to ``msg.data`` of a message made by :func:`_new_message` (no copy at all)."""
    buf = array.array("B", b"\0") * int(nbytes)
    return buf, np.frombuffer(buf, dtype=np.uint8)


_CHECKED_CONSTRUCTOR: dict = {}


def _new_message(cls):
    """``cls()`` built with ``check_fields=True`` where the generator supports it (Jazzy and newer).

    Why: with unchecked fields the generated ``uint8[]`` setter copies its value (``array.array('B', value)``),
    ~1.5 ms more per 5 MB point cloud; the checked setter stores an ``array.array('B')`` as is. The checks on the
    few scalar fields cost microseconds. Older generators (Humble) always check and take no such argument."""
    ok = _CHECKED_CONSTRUCTOR.get(cls)
    if ok is None:
        try:
            msg = cls(check_fields=True)
            _CHECKED_CONSTRUCTOR[cls] = True
            return msg
        except (AssertionError, TypeError):
            _CHECKED_CONSTRUCTOR[cls] = ok = False
    return cls(check_fields=True) if ok else cls()


# ---------------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------------

def image_to_array(msg: Image) -> np.ndarray:
    """The pixels of ``msg`` as an (H, W) or (H, W, C) array (a read-only view when possible).

    Honours ``step`` (row padding) and ``is_bigendian``. Raises :class:`UnsupportedEncoding` or
    :class:`ConversionError` (size mismatch, corrupt buffer).
    """
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise UnsupportedEncoding(f"unsupported image encoding {enc!r} (supported: {', '.join(ENCODINGS)})")
    dtype, ch = ENCODINGS[enc]
    dt = np.dtype(dtype)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"empty image {w}x{h}")
    row = w * ch * dt.itemsize
    if step < row:
        raise ConversionError(f"step {step} < width*channels*itemsize = {row} for {w}x{h} {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * (h - 1) + row:
        raise ConversionError(f"data has {buf.size} bytes, {w}x{h} {enc} with step {step} needs {step * h}")
    if dt.itemsize > 1 and bool(msg.is_bigendian) != _HOST_BIG_ENDIAN:
        dt = dt.newbyteorder()
    if step == row:
        out = buf[: h * row].view(dt).reshape(h, w, ch)
    else:
        out = np.lib.stride_tricks.as_strided(buf, shape=(h, row), strides=(step, 1))
        out = np.ascontiguousarray(out).view(dt).reshape(h, w, ch)
    if dt.byteorder not in ("=", "|") and dt != np.dtype(dtype):
        out = out.astype(dtype)  # swap to native order (copy)
    return out[:, :, 0] if ch == 1 else out


def image_to_rgb(msg: Image) -> np.ndarray:
    """An rgb8 / bgr8 / mono8 image as (H, W, 3) uint8 RGB; other encodings raise UnsupportedEncoding."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise UnsupportedEncoding(f"image encoding {msg.encoding!r} is not a colour input; send one of "
                                  f"{', '.join(COLOR_ENCODINGS)}")
    a = image_to_array(msg)
    if msg.encoding == "rgb8":
        return a
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(a[:, :, ::-1])
    return np.repeat(a[:, :, None], 3, axis=2)


def array_to_image(arr: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """Image message from an array (one copy). ``arr`` dtype/channels must match ``encoding``."""
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(f"unsupported image encoding {encoding!r}")
    dtype, ch = ENCODINGS[encoding]
    a = np.asarray(arr)
    if a.dtype != dtype:
        raise ConversionError(f"{encoding} needs {np.dtype(dtype).name}, got {a.dtype}")
    if not ((ch == 1 and a.ndim == 2) or (a.ndim == 3 and a.shape[2] == ch)):
        raise ConversionError(f"{encoding} needs {ch} channel(s), got shape {a.shape}")
    h, w = a.shape[:2]
    msg = _new_message(Image)
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.is_bigendian = int(_HOST_BIG_ENDIAN and a.dtype.itemsize > 1)
    msg.step = w * ch * a.dtype.itemsize
    msg.data = _bytes_array(a)
    return msg


def depth_to_image(depth: np.ndarray, header: Optional[Header] = None, encoding: str = "32FC1") -> Image:
    """REP 118 depth image: ``32FC1`` metres with NaN invalid, or ``16UC1`` millimetres with 0 invalid."""
    d = np.asarray(depth, dtype=np.float32)
    if encoding == "32FC1":
        return array_to_image(d, "32FC1", header)
    if encoding == "16UC1":
        mm = d * np.float32(1000.0)
        ok = np.isfinite(mm) & (mm >= 0.5) & (mm < 65535.5)
        return array_to_image(np.where(ok, np.rint(np.where(ok, mm, 0)), 0).astype(np.uint16), "16UC1", header)
    raise UnsupportedEncoding(f"depth encoding must be 32FC1 or 16UC1, got {encoding!r}")


def image_to_depth(msg: Image) -> np.ndarray:
    """float32 metres with NaN invalid from a ``32FC1`` (m) or ``16UC1`` / ``mono16`` (mm, 0 invalid) image."""
    a = image_to_array(msg)
    if msg.encoding == "32FC1":
        return a
    if msg.encoding in ("16UC1", "mono16"):
        d = a.astype(np.float32) * np.float32(0.001)
        d[a == 0] = np.nan
        return d
    raise UnsupportedEncoding(f"depth image encoding must be 32FC1 or 16UC1, got {msg.encoding!r}")


# ---------------------------------------------------------------------------------------------------
# CameraInfo
# ---------------------------------------------------------------------------------------------------

#: physical bounds of what a camera / pose message can mean; beyond them a message is rejected, not used
MAX_FOCAL_PX = 1e6         # a 1 Mpx-wide sensor behind a 0.06 degree lens; fx = 1e300 is a broken driver
MAX_TRANSLATION_M = 1e6    # 1000 km from the world frame's origin: no robot's odometry frame is that large


def camera_info_to_K(msg: CameraInfo) -> Tuple[np.ndarray, Tuple[int, int], np.ndarray]:
    """``(K 3x3 float64, (width, height), D)``. Raises ConversionError for a zero / non-finite K, focal
    lengths beyond :data:`MAX_FOCAL_PX` or a principal point that far outside the image. ``D`` is returned
    as is (NaN included): the node flags it, rectified input ignores it."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0:
        raise ConversionError(f"camera_info has no valid K (fx, fy > 0, K[2,2] = 1): {K.ravel().tolist()}")
    if max(K[0, 0], K[1, 1], abs(K[0, 2]), abs(K[1, 2]), abs(K[0, 1])) > MAX_FOCAL_PX:
        raise ConversionError(f"camera_info K is beyond physical bounds (fx, fy, |cx|, |cy|, |skew| <= "
                              f"{MAX_FOCAL_PX:.0e} px): fx={K[0, 0]:.6g} fy={K[1, 1]:.6g} cx={K[0, 2]:.6g} "
                              f"cy={K[1, 2]:.6g}")
    return K, (int(msg.width), int(msg.height)), np.asarray(msg.d, dtype=np.float64)


def make_camera_info(K: np.ndarray, width: int, height: int, header: Optional[Header] = None,
                     D: Optional[Sequence[float]] = None, distortion_model: str = "plumb_bob") -> CameraInfo:
    """CameraInfo of a rectified (or distortion-free) pinhole camera: R = I, P = [K | 0]."""
    K = np.asarray(K, dtype=np.float64)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = distortion_model
    msg.d = [float(x) for x in (D if D is not None else (0.0,) * 5)]
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = P.reshape(-1).tolist()
    return msg


# ---------------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------------

def _rt_to_matrix(tx, ty, tz, qw, qx, qy, qz) -> np.ndarray:
    """Rigid 4x4 from a translation and a quaternion of any scale. The quaternion is divided by its largest
    component before the norm is taken, so (1e200, 1e200, 0, 0) or (1e-200, 0, 0, 0) normalise exactly
    instead of overflowing / underflowing the norm; non-finite values, a zero quaternion and translations
    beyond :data:`MAX_TRANSLATION_M` raise ConversionError."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    t = np.array([tx, ty, tz], dtype=np.float64)
    what = f"t=({tx}, {ty}, {tz}) q=({qw}, {qx}, {qy}, {qz})"
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise ConversionError(f"non-finite pose: {what}")
    m = float(np.max(np.abs(q)))
    if m == 0.0:
        raise ConversionError(f"zero quaternion: {what}")
    q = q / m
    q /= np.linalg.norm(q)
    if float(np.max(np.abs(t))) > MAX_TRANSLATION_M:
        raise ConversionError(f"translation beyond physical bounds (|x|, |y|, |z| <= {MAX_TRANSLATION_M:.0e} m): {what}")
    T = np.eye(4)
    T[:3, :3] = tq.quat2mat(q)
    T[:3, 3] = t
    return T


def transform_to_matrix(t: Transform) -> np.ndarray:
    """4x4 float64 from a geometry_msgs/Transform (quaternion normalised; NaN / zero -> ConversionError)."""
    return _rt_to_matrix(t.translation.x, t.translation.y, t.translation.z,
                         t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z)


def pose_to_matrix(p: Pose) -> np.ndarray:
    return _rt_to_matrix(p.position.x, p.position.y, p.position.z,
                         p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z)


def _matrix_to_rt(T: np.ndarray):
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ConversionError(f"need a finite 4x4 matrix, got shape {T.shape}")
    q = tq.mat2quat(T[:3, :3])  # w, x, y, z
    return T[:3, 3], q


def matrix_to_transform(T: np.ndarray) -> Transform:
    t, q = _matrix_to_rt(T)
    return Transform(translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                     rotation=Quaternion(w=float(q[0]), x=float(q[1]), y=float(q[2]), z=float(q[3])))


def matrix_to_pose(T: np.ndarray) -> Pose:
    t, q = _matrix_to_rt(T)
    return Pose(position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=Quaternion(w=float(q[0]), x=float(q[1]), y=float(q[2]), z=float(q[3])))


def make_transform_stamped(T: np.ndarray, parent: str, child: str, stamp) -> TransformStamped:
    return TransformStamped(header=make_header(stamp, parent), child_frame_id=child,
                            transform=matrix_to_transform(T))


def make_pose_stamped(T: np.ndarray, frame_id: str, stamp) -> PoseStamped:
    return PoseStamped(header=make_header(stamp, frame_id), pose=matrix_to_pose(T))


# ---------------------------------------------------------------------------------------------------
# PointCloud2
# ---------------------------------------------------------------------------------------------------

_FLOAT32 = PointField.FLOAT32


def pointcloud_dtype(with_rgb: bool, with_confidence: bool) -> np.dtype:
    names, formats = ["x", "y", "z"], [np.float32] * 3
    if with_rgb:
        names.append("rgb")
        formats.append(np.float32)
    if with_confidence:
        names.append("confidence")
        formats.append(np.float32)
    return np.dtype({"names": names, "formats": formats})


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bits are 0x00RRGGBB (the PCL / RViz ``rgb`` field)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    # little-endian bytes B, G, R, 0 of a uint32 are 0x00RRGGBB
    bgr0 = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    bgr0[..., 0] = rgb[..., 2]
    bgr0[..., 1] = rgb[..., 1]
    bgr0[..., 2] = rgb[..., 0]
    packed = bgr0.view("<u4")[..., 0]
    return packed.astype(np.uint32, copy=False).view(np.float32)


def _pack_rgb_into(rgb: np.ndarray, field: np.ndarray) -> None:
    """:func:`pack_rgb` written straight into ``field`` ((H, W, 1) float32 view of a point buffer): the four
    bytes of each packed value are set in place (no temporary arrays; ~4x faster at 640x480)."""
    b = field.view(np.uint8)                        # (H, W, 4): bytes of the float32 field
    if _HOST_BIG_ENDIAN:                            # 0x00RRGGBB in host order
        b[..., 0] = 0
        b[..., 1:4] = rgb
    else:
        b[..., 0] = rgb[..., 2]
        b[..., 1] = rgb[..., 1]
        b[..., 2] = rgb[..., 0]
        b[..., 3] = 0


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=-1).astype(np.uint8)


def depth_to_pointcloud2(depth: np.ndarray, K: np.ndarray, header: Optional[Header] = None,
                         rgb: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None,
                         dense: bool = False, stride: int = 1, max_range: float = 0.0) -> PointCloud2:
    """PointCloud2 of ``depth`` (H, W float32 m, NaN invalid) back-projected with ``K``, in the camera frame.

    Fields ``x y z`` (+ ``rgb`` packed float32 when ``rgb`` (H, W, 3) uint8 is given, + ``confidence`` when
    given). ``dense=False`` keeps the image organisation (height x width, NaN points, ``is_dense`` False);
    ``dense=True`` keeps only valid points (1 x N, ``is_dense`` True). ``stride`` keeps every stride-th
    pixel in both directions; ``max_range`` > 0 invalidates points farther than that along the optical axis.
    """
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ConversionError(f"depth must be 2-D, got {d.shape}")
    stride = max(1, int(stride))
    Ks = np.asarray(K, dtype=np.float64)
    if stride > 1:
        d = d[::stride, ::stride]
        Ks = Ks.copy()
        Ks[0, :] /= stride
        Ks[1, :] /= stride
        Ks[2] = (0, 0, 1)
        rgb = None if rgb is None else rgb[::stride, ::stride]
        confidence = None if confidence is None else confidence[::stride, ::stride]
    if max_range and max_range > 0:
        d = np.where(d <= max_range, d, np.float32(np.nan))
    dt = pointcloud_dtype(rgb is not None, confidence is not None)
    h, w = d.shape
    # one float32 (H, W, fields) buffer laid out exactly like the PointCloud2 points (all fields are
    # 4-byte floats), filled with whole-array writes
    if dense:
        cloud = np.empty((h, w, len(dt.names)), dtype=np.float32)
    else:  # organised: the points are built straight in the message payload (no copy afterwards)
        payload, view = _payload(h * w * dt.itemsize)
        cloud = view.view(np.float32).reshape(h, w, len(dt.names))
    backproject_into(d, Ks, cloud)   # x y z written in place, field by field
    k = 3
    if rgb is not None:
        if rgb.shape[:2] != (h, w):
            raise ConversionError(f"rgb {rgb.shape} does not match depth {d.shape}")
        _pack_rgb_into(rgb, cloud[..., k:k + 1])
        k += 1
    if confidence is not None:
        if confidence.shape != (h, w):
            raise ConversionError(f"confidence {confidence.shape} does not match depth {d.shape}")
        cloud[..., k] = confidence
    if dense:  # gather whole points (one void element each: a memcpy per point, not per float)
        pts_void = cloud.reshape(-1).view(np.dtype((np.void, dt.itemsize)))
        cloud = pts_void[np.isfinite(d).reshape(-1)].view(np.float32).reshape(1, -1, len(dt.names))
    msg = _new_message(PointCloud2)
    if header is not None:
        msg.header = header
    msg.height, msg.width = cloud.shape[:2]
    msg.fields = [PointField(name=n, offset=int(dt.fields[n][1]), datatype=_FLOAT32, count=1) for n in dt.names]
    msg.is_bigendian = _HOST_BIG_ENDIAN
    msg.point_step = dt.itemsize
    msg.row_step = dt.itemsize * msg.width
    msg.is_dense = bool(dense)
    msg.data = _bytes_array(cloud) if dense else payload
    return msg


_PF_DTYPES = {PointField.INT8: np.int8, PointField.UINT8: np.uint8, PointField.INT16: np.int16,
              PointField.UINT16: np.uint16, PointField.INT32: np.int32, PointField.UINT32: np.uint32,
              PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64}


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """Structured (height, width) array of a PointCloud2 (a view of its buffer)."""
    endian = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _PF_DTYPES:
            raise ConversionError(f"PointField {f.name!r} has unknown datatype {f.datatype}")
        names.append(f.name)
        base = np.dtype(_PF_DTYPES[f.datatype]).newbyteorder(endian)
        formats.append(base if f.count <= 1 else (base, (f.count,)))
        offsets.append(f.offset)
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < msg.row_step * msg.height or msg.row_step < msg.point_step * msg.width:
        raise ConversionError(f"PointCloud2 data has {buf.size} bytes for {msg.width}x{msg.height} points "
                              f"(point_step {msg.point_step}, row_step {msg.row_step})")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(msg.height, msg.point_step * msg.width),
                                           strides=(msg.row_step, 1))
    return np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width)
