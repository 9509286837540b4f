"""Stereo datasets <-> rosbag2 (mcap or sqlite3), built on the helpers of :mod:`.bags`.

Writing (``mvs-depth stereo-bag convert``): a stream of rectified
:class:`~mvs_depth_ros.core.frame.StereoFrame` (the synthetic stereo video or a Middlebury pair) becomes

* ``<prefix>/left/image_rect``    ``sensor_msgs/msg/Image`` ``rgb8`` (header frame: the left optical frame)
* ``<prefix>/right/image_rect``   ``sensor_msgs/msg/Image`` ``rgb8`` (the right optical frame)
* ``<prefix>/left/camera_info``   ``sensor_msgs/msg/CameraInfo``: K, R = I, P = [K | 0]
* ``<prefix>/right/camera_info``  the right camera: ``cx`` moved by ``doffs``, P with ``Tx = -fx * baseline``
  (the ROS stereo convention that ``stereo_image_proc`` / ``image_geometry`` read)
* ``<prefix>/left/disparity_gt``  ``32FC1`` exact left disparity in pixels (``x_l - x_r``), NaN unknown
* ``<prefix>/left/depth_gt``      ``32FC1`` metres along the optical axis (REP 118), NaN unknown
* ``/tf``                         world -> rig body (``mount``) for every posed pair
* ``/tf_static``                  rig body -> left optical (REP 103 rotation), left optical -> right optical
  (``+baseline`` along x); offered transient-local

every message of a pair stamped ``start + i / rate`` (strictly increasing), header stamp == bag time.
Pair names and stamps go to the bag's ``custom_data`` (same key as :func:`.bags.write_bag`).

Reading: :func:`read_stereo_frames` turns such a bag (or any bag with the four stereo topics) back into
``StereoFrame``\\ s: images paired by exact stamp, ``K`` from the left camera_info's P, baseline from the
right P's ``Tx``, ``doffs`` from the two principal points, pose from TF and ground truth disparity.
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..core.frame import StereoFrame
from ..core.stereo import disparity_to_depth
from .bag_topics import CUSTOM_FRAMES_KEY, CUSTOM_SOURCE_KEY, T_link_optical
from .bags import (CAMERA_INFO_T, DEFAULT_START_NS, IMAGE_T, TF_T, BagError, TfTimeline, add_bag_cli, bag_info,
                   bag_qos, camera_info_msg, decode_depth, decode_image, frame_names, image_msg, iter_messages,
                   open_bag, open_writer, print_info, run_bag_cli, stamp_to_ns, tf_message, transform_stamped, typestore)

log = logging.getLogger(__name__)

#: custom_data key marking a stereo bag (JSON: baseline, frames, topics)
CUSTOM_STEREO_KEY = "mvs_depth_ros.stereo"


@dataclass(frozen=True)
class StereoBagTopics:
    """Topic names of a converted stereo bag (``from_prefix('/cam')`` moves the camera topics)."""

    left_image: str = "/stereo/left/image_rect"
    right_image: str = "/stereo/right/image_rect"
    left_info: str = "/stereo/left/camera_info"
    right_info: str = "/stereo/right/camera_info"
    disparity_gt: str = "/stereo/left/disparity_gt"
    depth_gt: str = "/stereo/left/depth_gt"
    tf: str = "/tf"
    tf_static: str = "/tf_static"

    @classmethod
    def from_prefix(cls, prefix: str) -> "StereoBagTopics":
        p = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return cls(left_image=f"{p}/left/image_rect", right_image=f"{p}/right/image_rect",
                   left_info=f"{p}/left/camera_info", right_info=f"{p}/right/camera_info",
                   disparity_gt=f"{p}/left/disparity_gt", depth_gt=f"{p}/left/depth_gt")


@dataclass(frozen=True)
class StereoBagFrames:
    """TF frames: ``world`` (REP 105), the rig body ``mount`` ('' = none: /tf goes straight to the left
    optical frame), and the two optical frames (REP 103)."""

    world: str = "odom"
    left: str = "stereo_left_optical_frame"
    right: str = "stereo_right_optical_frame"
    mount: str = "stereo_link"


def stereo_camera_infos(K: np.ndarray, width: int, height: int, baseline: float, doffs: float, stamp_ns: int,
                        frames: StereoBagFrames = StereoBagFrames()):
    """``(left, right)`` rosbags CameraInfo of a rectified pair: right ``cx += doffs``, ``P[0, 3] = -fx * B``."""
    K = np.asarray(K, dtype=np.float64)
    left = camera_info_msg(K, width, height, stamp_ns, frames.left)
    K_r = K.copy()
    K_r[0, 2] += float(doffs)
    right = camera_info_msg(K_r, width, height, stamp_ns, frames.right)
    P = right.p.reshape(3, 4).copy()
    P[0, 3] = -K[0, 0] * float(baseline)
    right.p = P.reshape(-1)
    return left, right


@dataclass
class StereoWriteSummary:
    path: Path
    frames: int = 0
    poses: int = 0
    ground_truth: int = 0
    stamps: List[int] = field(default_factory=list)
    names: List[str] = field(default_factory=list)


def write_stereo_bag(frames: Iterable[StereoFrame], out: os.PathLike | str, *, rate: float = 10.0,
                     storage: str = "mcap", topics: StereoBagTopics = StereoBagTopics(),
                     tf_frames: StereoBagFrames = StereoBagFrames(), start_ns: int = DEFAULT_START_NS,
                     source: str = "") -> StereoWriteSummary:
    """Write rectified pairs to a new rosbag2 folder ``out`` (must not exist); see the module docstring.

    Pairs without a valid ``T_world_cam`` get no ``/tf`` entry; pairs without ``disparity_gt`` no ground
    truth. The static transforms use the first pair's baseline (a rig does not change it mid-bag; a pair
    with another baseline is an error).
    """
    out = Path(out)
    writer = open_writer(out, storage, rate)
    ts = typestore()
    summary = StereoWriteSummary(path=out)
    T_mount_opt = T_link_optical()
    T_opt_mount = np.linalg.inv(T_mount_opt)
    baseline: Optional[float] = None
    try:
        conn = {}
        conn["static"] = writer.add_connection(topics.tf_static, TF_T, typestore=ts,
                                               offered_qos_profiles=[bag_qos(True, 1)])
        conn["tf"] = writer.add_connection(topics.tf, TF_T, typestore=ts, offered_qos_profiles=[bag_qos(False, 100)])
        for key, topic, mtype in (("li", topics.left_info, CAMERA_INFO_T), ("ri", topics.right_info, CAMERA_INFO_T),
                                  ("l", topics.left_image, IMAGE_T), ("r", topics.right_image, IMAGE_T),
                                  ("disp", topics.disparity_gt, IMAGE_T), ("depth", topics.depth_gt, IMAGE_T)):
            conn[key] = writer.add_connection(topic, mtype, typestore=ts, offered_qos_profiles=[bag_qos(False, 10)])

        def put(key, stamp, msg, msgtype):
            writer.write(conn[key], stamp, ts.serialize_cdr(msg, msgtype))

        for i, f in enumerate(frames):
            stamp = start_ns + int(round(i * 1e9 / rate))
            if baseline is None:
                baseline = float(f.baseline)
                T_left_right = np.eye(4)
                T_left_right[0, 3] = baseline
                statics = [transform_stamped(T_left_right, stamp, tf_frames.left, tf_frames.right)]
                if tf_frames.mount:
                    statics.insert(0, transform_stamped(T_mount_opt, stamp, tf_frames.mount, tf_frames.left))
                put("static", stamp, tf_message(statics), TF_T)
            elif abs(f.baseline - baseline) > 1e-9:
                raise ValueError(f"pair {f.name!r}: baseline {f.baseline} differs from the first pair's {baseline}")
            if f.T_world_cam is not None and np.all(np.isfinite(f.T_world_cam)):
                if tf_frames.mount:
                    tr = transform_stamped(f.T_world_cam @ T_opt_mount, stamp, tf_frames.world, tf_frames.mount)
                else:
                    tr = transform_stamped(f.T_world_cam, stamp, tf_frames.world, tf_frames.left)
                put("tf", stamp, tf_message([tr]), TF_T)
                summary.poses += 1
            h, w = f.left.shape[:2]
            li, ri = stereo_camera_infos(f.K, w, h, f.baseline, f.doffs, stamp, tf_frames)
            put("li", stamp, li, CAMERA_INFO_T)
            put("ri", stamp, ri, CAMERA_INFO_T)
            put("l", stamp, image_msg(f.left, stamp, tf_frames.left), IMAGE_T)
            put("r", stamp, image_msg(f.right, stamp, tf_frames.right), IMAGE_T)
            if f.disparity_gt is not None:
                disp = np.asarray(f.disparity_gt, dtype=np.float32)
                depth = disparity_to_depth(disp, f.K[0, 0], f.baseline, f.doffs)
                put("disp", stamp, image_msg(disp, stamp, tf_frames.left), IMAGE_T)
                put("depth", stamp, image_msg(depth, stamp, tf_frames.left), IMAGE_T)
                summary.ground_truth += 1
            summary.frames += 1
            summary.stamps.append(stamp)
            summary.names.append(f.name or str(i))
        writer.set_custom_data(CUSTOM_FRAMES_KEY, json.dumps({"names": summary.names, "stamps": summary.stamps}))
        writer.set_custom_data(CUSTOM_SOURCE_KEY, json.dumps({
            "source": source, "rate_hz": rate, "world_frame": tf_frames.world, "camera_frame": tf_frames.left,
            "mount_frame": tf_frames.mount, "topics": topics.__dict__}))
        writer.set_custom_data(CUSTOM_STEREO_KEY, json.dumps({
            "baseline_m": baseline, "left_frame": tf_frames.left, "right_frame": tf_frames.right,
            "topics": topics.__dict__}))
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - already failing; leave the partial bag for inspection
            pass
        raise
    return summary


# ------------------------------------------------------------------------------------------- reading
def stereo_geometry(left_info, right_info) -> Tuple[np.ndarray, float, float]:
    """``(K 3x3 of the rectified left image, baseline m, doffs px)`` from the two CameraInfos (rosbags or
    rclpy messages), the ``image_geometry.StereoCameraModel`` way: K from the left P, baseline
    ``-Tx / fx`` from the right P, ``doffs = cx_right - cx_left``. ValueError when P has no baseline."""
    Pl = np.asarray(left_info.p, dtype=np.float64).reshape(3, 4)
    Pr = np.asarray(right_info.p, dtype=np.float64).reshape(3, 4)
    if not (np.all(np.isfinite(Pl)) and np.all(np.isfinite(Pr))):
        raise ValueError("camera_info P is not finite")
    if Pl[0, 0] <= 0 or Pl[1, 1] <= 0:   # no projection matrix: fall back to K (an unrectified driver)
        K = np.asarray(left_info.k, dtype=np.float64).reshape(3, 3)
    else:
        K = Pl[:, :3].copy()
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"left camera_info has no focal length (P {Pl.reshape(-1).tolist()})")
    if Pr[0, 0] <= 0:
        raise ValueError(f"right camera_info has no projection matrix P ({Pr.reshape(-1).tolist()})")
    baseline = -Pr[0, 3] / Pr[0, 0]
    if not baseline > 0:
        raise ValueError(f"right camera_info P has Tx = {Pr[0, 3]:g}: need Tx = -fx * baseline < 0 "
                         f"(the right camera of a rectified pair, baseline > 0)")
    return K, float(baseline), float(Pr[0, 2] - K[0, 2])


@dataclass
class StereoReadCounters:
    pairs: int = 0
    unpaired_images: int = 0
    no_camera_info: int = 0
    bad_calibration: int = 0
    no_pose: int = 0
    bad_messages: int = 0


def read_stereo_frames(path: os.PathLike | str, *, topics: StereoBagTopics = StereoBagTopics(),
                       world_frame: str = "odom", tf_tolerance_ns: int = 0, tf_max_gap_ns: int = 0,
                       counters: Optional[StereoReadCounters] = None) -> Iterator[StereoFrame]:
    """The bag's rectified pairs as ``StereoFrame``\\ s in stamp order (left and right paired by exact stamp).

    Calibration from the camera_infos with the pair's stamp, else the latest earlier ones; pose = TF
    ``world_frame`` <- left image frame at the stamp (None when TF cannot answer, counted);
    ``disparity_gt`` from the disparity topic at exactly the stamp. Corrupt bags raise BagError.
    """
    c = counters if counters is not None else StereoReadCounters()
    ts = typestore()
    names = frame_names(path)
    tf = TfTimeline(max_gap_ns=tf_max_gap_ns, tolerance_ns=tf_tolerance_ns)
    left: Dict[int, object] = {}
    right: Dict[int, object] = {}
    infos: Dict[str, List[Tuple[int, object]]] = {"l": [], "r": []}
    gts: Dict[int, np.ndarray] = {}
    wanted = [topics.left_image, topics.right_image, topics.left_info, topics.right_info, topics.disparity_gt,
              topics.tf, topics.tf_static]
    with open_bag(path) as reader:
        for conn, _, raw in iter_messages(reader, path, wanted):
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                if conn.topic in (topics.tf, topics.tf_static):
                    tf.add(msg, static=conn.topic == topics.tf_static)
                    continue
                stamp = stamp_to_ns(msg.header.stamp)
                if conn.topic == topics.left_info:
                    infos["l"].append((stamp, msg))
                elif conn.topic == topics.right_info:
                    infos["r"].append((stamp, msg))
                elif conn.topic == topics.disparity_gt:
                    gts[stamp] = decode_depth(msg)
                elif conn.topic == topics.left_image:
                    left[stamp] = msg
                else:
                    right[stamp] = msg
            except Exception as exc:  # noqa: BLE001 - one bad message must not end the read
                c.bad_messages += 1
                log.warning("%s: skipping a bad message on %s: %s", path, conn.topic, exc)
    for side in infos.values():
        side.sort(key=lambda x: x[0])
    c.unpaired_images += len(set(left) ^ set(right))

    def info_at(side: str, stamp: int):
        lst = infos[side]
        k = bisect.bisect_right([s for s, _ in lst], stamp)
        return lst[k - 1][1] if k else None

    for stamp in sorted(set(left) & set(right)):
        li, ri = info_at("l", stamp), info_at("r", stamp)
        if li is None or ri is None:
            c.no_camera_info += 1
            continue
        try:
            K, baseline, doffs = stereo_geometry(li, ri)
        except ValueError as exc:
            c.bad_calibration += 1
            log.warning("%s: pair at %d skipped: %s", path, stamp, exc)
            continue
        try:
            L, R = decode_image(left[stamp]), decode_image(right[stamp])
        except ValueError as exc:
            c.bad_messages += 1
            log.warning("%s: pair at %d skipped: %s", path, stamp, exc)
            continue
        cam = left[stamp].header.frame_id
        T = tf.lookup(world_frame, cam, stamp)
        if T is None:
            c.no_pose += 1
        gt = gts.get(stamp)
        if gt is not None and gt.shape != L.shape[:2]:
            c.bad_messages += 1
            gt = None
        try:
            frame = StereoFrame(left=L, right=R, K=K, baseline=baseline, stamp=stamp, frame_id=cam,
                                name=names.get(stamp, str(stamp)), T_world_cam=T, disparity_gt=gt, doffs=doffs)
        except ValueError as exc:   # left/right sizes differ
            c.bad_messages += 1
            log.warning("%s: pair at %d skipped: %s", path, stamp, exc)
            continue
        c.pairs += 1
        yield frame


# ------------------------------------------------------------------------------------------------ CLI
def _frames_from_args(args) -> Tuple[List[StereoFrame], str]:
    if args.middlebury:
        from .middlebury import load_middlebury
        pair = load_middlebury(args.middlebury)
        n = max(1, args.frames or 1)
        # the same pair repeated: a still rig (a node test input); each copy gets its own stamp on writing
        f = pair.frame
        frames = [StereoFrame(left=f.left, right=f.right, K=f.K, baseline=f.baseline, frame_id=f.frame_id,
                              name=f"{f.name}_{i:03d}" if n > 1 else f.name, disparity_gt=f.disparity_gt,
                              doffs=f.doffs)
                  for i in range(n)]
        return frames, f"Middlebury {Path(args.middlebury).resolve()} x{n}"
    from .synthetic import render_stereo_sequence
    n = args.frames or 20
    frames = render_stereo_sequence(n, args.width, args.height, baseline=args.baseline, seed=args.seed,
                                    moving_object=args.moving_object)
    return frames, (f"synthetic stereo(frames={n}, {args.width}x{args.height}, baseline={args.baseline}, "
                    f"seed={args.seed}, moving_object={args.moving_object})")


def cli_main(argv: Optional[List[str]] = None) -> int:
    """``mvs-depth stereo-bag convert|info``."""
    p, c = add_bag_cli("mvs-depth stereo-bag",
                       "Convert stereo datasets (synthetic stereo video, Middlebury) to rosbag2.", "synthetic stereo video or a Middlebury pair -> rosbag2")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="render a rectified stereo video with exact disparity")
    src.add_argument("--middlebury", type=Path, help="Middlebury 2014 scene folder (im0.png, im1.png, calib.txt, "
                     "disp0GT.pfm)")
    c.add_argument("--frames", type=int, default=0, help="pairs (synthetic default 20; Middlebury: copies, default 1)")
    c.add_argument("--width", type=int, default=320)
    c.add_argument("--height", type=int, default=256)
    c.add_argument("--baseline", type=float, default=0.1, help="synthetic baseline, metres")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--moving-object", action="store_true", help="synthetic: a box moving in the scene")
    c.add_argument("--prefix", default="/stereo", help="topic prefix of left/..., right/...")
    c.add_argument("--world-frame", default=StereoBagFrames.world)
    c.add_argument("--left-frame", default=StereoBagFrames.left)
    c.add_argument("--right-frame", default=StereoBagFrames.right)
    c.add_argument("--mount-frame", default=StereoBagFrames.mount, help="rig body frame ('' = none)")
    args = p.parse_args(argv)

    def convert() -> None:
        frames, source = _frames_from_args(args)
        s = write_stereo_bag(frames, args.out, rate=args.rate, storage=args.storage,
                             topics=StereoBagTopics.from_prefix(args.prefix),
                             tf_frames=StereoBagFrames(args.world_frame, args.left_frame, args.right_frame,
                                                       args.mount_frame),
                             start_ns=int(round(args.start * 1e9)), source=source)
        print(f"wrote {s.path}: {s.frames} pairs ({s.poses} posed, {s.ground_truth} with ground truth) at "
              f"{args.rate:g} Hz, storage {args.storage}")
        print_info(bag_info(s.path))

    return run_bag_cli(p, args, convert)


__all__ = ["StereoBagFrames", "StereoBagTopics", "StereoReadCounters", "StereoWriteSummary", "cli_main",
           "read_stereo_frames", "stereo_camera_infos", "stereo_geometry", "write_stereo_bag"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
