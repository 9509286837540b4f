#!/usr/bin/env python3
"""What RViz shows with ``rviz/mvs_depth.rviz``, drawn from messages received over DDS (for machines without RViz).

    python tools/ros_snapshot.py [--scene ../shared/data/hololens-000 --frames 60 | --bag BAG] \
        [--keyframe 20] [--rate 0.05] [--out docs/ros_topics.jpg]

1. converts the scene to a dataset bag with ``mvs-depth bag convert`` (or takes ``--bag``);
2. starts ``mvs-depth launch eval-bag`` (``player_node`` -> ``mvs_node`` -> ``evaluator_node``, the same
   graph as ``launch/eval_bag.launch.py``) in its own process, through ``test/ros_helpers.NodeProcess``:
   discovery on this host only, the project's Fast DDS profile and a ROS_DOMAIN_ID of its own
   (``--domain-id`` or ``MVS_TEST_ROS_DOMAIN_ID`` to choose it);
3. subscribes, in this process (``test/ros_helpers.Probe``), to the topics of the RViz file's displays with
   the QoS reliability they ask for, plus ``<namespace>/depth_estimate`` for the pose of each cloud;
4. once the ``--keyframe``-th depth map has arrived with its confidence, cloud, estimate and input image
   (all matched by header stamp), checks every RViz topic against the publishers in the graph (type,
   reliability), stops the graph and draws a 2x2 panel in the RViz layout's terms:

   * the input image; depth and confidence as RViz's Image display draws 32FC1 (grey, linear between the
     display's Min Value and Max Value, NaN black);
   * the PointCloud2 clouds whose stamps lie within the display's Decay Time before the shown one, in the
     Fixed Frame with the DepthEstimate pose of each, RGB8 colours, Size (Pixels) square points, the
     RViz background, the optical frame axes (TF display) and the camera path; seen from behind and above
     the cameras (recon/render.default_view: the dataset's "up" need not be odom's z);

   each captioned with topic, type, stamp and frame_id from the received headers.

Nothing is computed from the dataset or the offline pipeline: the picture is only the received messages.
Exit status: 0 ok, 1 no complete keyframe received or an RViz topic without a matching publisher, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))  # ros_helpers: NodeProcess, Probe, the DDS environment of the tests

from mvs_depth_ros.eval.report import colorize  # noqa: E402
from mvs_depth_ros.recon.render import default_view, render_points  # noqa: E402

SHARED = REPO.parent / "shared"
TYPES = {"rviz_default_plugins/Image": "sensor_msgs/msg/Image",
         "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2"}
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ---------------------------------------------------------------------------------------------------
# the RViz layout
# ---------------------------------------------------------------------------------------------------

@dataclass
class Display:
    name: str
    cls: str
    topic: str
    reliability: str                     # "Reliable" | "Best Effort"
    props: dict

    @property
    def msg_type(self) -> str:
        return TYPES[self.cls]


@dataclass
class Layout:
    image: Display
    depth: Display
    confidence: Display
    points: Display
    fixed_frame: str
    background: Tuple[int, int, int]
    tf_scale: float

    def displays(self) -> List[Display]:
        return [self.image, self.depth, self.confidence, self.points]


def load_layout(path: Path, image: str, depth: str, confidence: str, points: str) -> Layout:
    """The four displays (by Name) and global options of an RViz config file."""
    cfg = yaml.safe_load(path.read_text())
    vm = cfg["Visualization Manager"]
    displays = {d["Name"]: d for d in vm["Displays"]}

    def get(name: str) -> Display:
        if name not in displays:
            raise SystemExit(f"{path}: no display named {name!r} (displays: {', '.join(displays)})")
        d = displays[name]
        if d.get("Class") not in TYPES:
            raise SystemExit(f"{path}: display {name!r} is a {d.get('Class')}, not one of {', '.join(TYPES)}")
        return Display(name, d["Class"], d["Topic"]["Value"], d["Topic"].get("Reliability Policy", "Reliable"), d)

    bg = tuple(int(x) for x in str(vm["Global Options"].get("Background Color", "48; 48; 48")).split(";"))
    tf = next((d for d in vm["Displays"] if d.get("Class") == "rviz_default_plugins/TF"), {})
    return Layout(get(image), get(depth), get(confidence), get(points), vm["Global Options"]["Fixed Frame"],
                  bg, float(tf.get("Marker Scale", 0.3)) if tf.get("Enabled", True) else 0.0)


def rviz_qos(display: Display, depth: int = 50):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    best_effort = display.reliability.strip().lower().replace(" ", "_") == "best_effort"
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)


# ---------------------------------------------------------------------------------------------------
# receiving
# ---------------------------------------------------------------------------------------------------

def type_name(msg) -> str:
    return f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"


def by_stamp(box: list) -> Dict[int, object]:
    from mvs_depth_ros.ros.conversions import stamp_to_ns
    return {stamp_to_ns(m.header.stamp): m for _, m in list(box)}


def check_topics(node, layout: Layout) -> Tuple[List[str], Dict[str, str]]:
    """(one line per RViz display: its topic's publishers in the graph, problems starting with 'MISMATCH';
    topic -> publishing node names)."""
    from rclpy.qos import ReliabilityPolicy
    lines, names = [], {}
    for d in layout.displays():
        pubs = node.get_publishers_info_by_topic(d.topic)
        names[d.topic] = ", ".join(sorted({f"{p.node_namespace.rstrip('/')}/{p.node_name}" for p in pubs}))
        desc = ", ".join(f"{p.node_namespace.rstrip('/')}/{p.node_name} ({p.topic_type}, "
                         f"{p.qos_profile.reliability.name.lower()})" for p in pubs) or "no publisher"
        problems = []
        if not pubs:
            problems.append("nothing publishes it")
        if pubs and not any(p.topic_type == d.msg_type for p in pubs):
            problems.append(f"type is not {d.msg_type}")
        if (pubs and d.reliability.lower() == "reliable"
                and not any(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)):
            problems.append("display asks Reliable, publishers are best effort")
        state = "MISMATCH: " + "; ".join(problems) if problems else "ok"
        lines.append(f"{state:10s} {d.name!r:15s} {d.topic:20s} <- {desc}")
    return lines, names


# ---------------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------------

def fit(img: np.ndarray, width: int, height: int, background: Sequence[int], nearest: bool) -> np.ndarray:
    """``img`` scaled to fit (width, height), centred on ``background`` (nearest: keep pixels visible)."""
    h, w = img.shape[:2]
    s = min(width / w, height / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = background
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def text_strip(lines: Sequence[str], width: int, line_h: int = 19, scale: float = 0.47,
               bg=(30, 30, 30), fg=(235, 235, 235)) -> np.ndarray:
    """A dark strip with one line of text per entry (shrunk to fit the width)."""
    out = np.empty((line_h * len(lines) + 6, width, 3), np.uint8)
    out[:] = bg
    for i, t in enumerate(lines):
        s = scale
        while s > 0.3 and cv2.getTextSize(t, FONT, s, 1)[0][0] > width - 12:
            s -= 0.02
        cv2.putText(out, t, (6, 4 + line_h * (i + 1) - 5), FONT, s, fg, 1, cv2.LINE_AA)
    return out


def stamp_text(msg) -> str:
    return f"stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}  frame_id {msg.header.frame_id}"


def panel(body: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    return np.concatenate([text_strip(lines, body.shape[1]), body], axis=0)


def grey_image(values: np.ndarray, display: Display) -> np.ndarray:
    """32FC1 as RViz's Image display draws it: grey, linear from Min Value (black) to Max Value (white),
    or the image's own min..max with Normalize Range; NaN black."""
    p = display.props
    finite = np.isfinite(values)
    if p.get("Normalize Range", True):
        lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    else:
        lo, hi = float(p.get("Min Value", 0.0)), float(p.get("Max Value", 1.0))
    out = colorize(values, lo, hi, "gray")
    out[~finite] = 0
    return out


def axes_points(T: np.ndarray, length: float, n: int = 120) -> Tuple[np.ndarray, np.ndarray]:
    """Points along the x (red), y (green), z (blue) axes of the frame ``T`` (world <- frame)."""
    t = np.linspace(0.0, length, n)[:, None]
    pts = np.concatenate([T[:3, 3] + t * T[:3, i] for i in range(3)])
    cols = np.repeat(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8), n, axis=0)
    return pts, cols


def cloud_picture(clouds: List[Tuple[object, np.ndarray]], layout: Layout, path: List[np.ndarray],
                  width: int, height: int) -> Tuple[np.ndarray, int]:
    """The clouds (PointCloud2, world <- cloud frame) in the fixed frame, RViz style; (picture, points)."""
    from mvs_depth_ros.ros.conversions import pointcloud2_to_array, unpack_rgb
    pts, cols = [], []
    for msg, T in clouds:
        a = pointcloud2_to_array(msg).reshape(-1)
        xyz = np.stack([a["x"], a["y"], a["z"]], axis=1).astype(np.float64)
        ok = np.all(np.isfinite(xyz), axis=1)
        pts.append(xyz[ok] @ T[:3, :3].T + T[:3, 3])
        if layout.points.props.get("Color Transformer") == "RGB8" and "rgb" in a.dtype.names:
            cols.append(unpack_rgb(a["rgb"][ok]))
        else:
            cols.append(np.full((int(ok.sum()), 3), 255, np.uint8))
    P, Cc = np.concatenate(pts), np.concatenate(cols)
    K, view = default_view(P, [T for _, T in clouds], width, height, elevation=0.6, distance=1.3)
    extra_p, extra_c = [], []
    if layout.tf_scale > 0:   # TF display: the axes of the shown keyframe's optical frame
        p, c = axes_points(clouds[-1][1], layout.tf_scale)
        extra_p.append(p)
        extra_c.append(c)
    allp = np.concatenate([P] + extra_p)
    allc = np.concatenate([Cc] + extra_c)
    size = int(layout.points.props.get("Size (Pixels)", 2))
    img = render_points(allp, allc, K, view, width, height, splat=size, background=layout.background, shade=False)
    # the camera path (the DepthEstimate poses so far): dots on top
    if path and layout.tf_scale > 0:
        Tcw = np.linalg.inv(view)
        for T in path:
            x = Tcw[:3, :3] @ T[:3, 3] + Tcw[:3, 3]
            if x[2] > 1e-3:
                u, v = int(round(K[0, 0] * x[0] / x[2] + K[0, 2])), int(round(K[1, 1] * x[1] / x[2] + K[1, 2]))
                cv2.circle(img, (u, v), 3, (255, 220, 0), -1, cv2.LINE_AA)
    return img, len(P)


def encode_jpeg(rgb: np.ndarray, max_kb: float) -> Tuple[bytes, int]:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for q in range(90, 40, -5):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        if ok and len(buf) <= max_kb * 1024:
            return buf.tobytes(), q
    return buf.tobytes(), q


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--scene", type=Path, default=SHARED / "data" / "hololens-000",
                     help="scene folder to convert with `mvs-depth bag convert` (default: shared hololens-000)")
    src.add_argument("--bag", type=Path, help="a dataset bag written by `mvs-depth bag convert` (no conversion)")
    ap.add_argument("--frames", type=int, default=60, help="frames of --scene to convert")
    ap.add_argument("--dataset", default="hololens", help="config/datasets/<dataset>.yaml for eval-bag")
    ap.add_argument("--model", default="planesweep", help="mvs_node's estimator (eval-bag model:=)")
    ap.add_argument("--rate", type=float, default=0.05,
                    help="playback speed factor: slow, so that a busy 2-core CPU keeps up (mvs_node drops the frames "
                         "that arrive while it computes)")
    ap.add_argument("--keyframe", type=int, default=20, help="show the N-th depth map received (warm pipeline)")
    ap.add_argument("--rviz", type=Path, default=REPO / "rviz" / "mvs_depth.rviz")
    ap.add_argument("--displays", default="Input image,Depth (m),Confidence,Points",
                    help="names of the image, depth, confidence and point-cloud displays in --rviz")
    ap.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (0 = one chosen at random in 1..100)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the keyframe")
    ap.add_argument("--panel", default="640x512", help="size of each of the four panels, WxH")
    ap.add_argument("--max-kb", type=float, default=290.0, help="JPEG quality is lowered until the file fits")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "ros_topics.jpg")
    a = ap.parse_args(argv)
    if a.keyframe < 1 or a.rate <= 0 or a.frames < 0:
        ap.error("--keyframe >= 1, --rate > 0 and --frames >= 0 please")
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if a.domain_id:
        os.environ["MVS_TEST_ROS_DOMAIN_ID"] = str(a.domain_id)
    import pytest
    import ros_helpers as RH
    try:
        RH.require_rclpy()
    except pytest.skip.Exception as exc:
        print(f"ros_snapshot: {exc}", file=sys.stderr)
        return 2
    from sensor_msgs.msg import Image, PointCloud2
    from mvs_depth_ros.data.bags import cli_main as bag_cli
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros import interfaces
    DepthEstimate = interfaces.depth_estimate_type()
    if DepthEstimate is None:
        print(f"ros_snapshot: mvs_depth_ros/msg/DepthEstimate is not built ({interfaces.describe()})", file=sys.stderr)
        return 2
    layout = load_layout(a.rviz, *a.displays.split(","))
    estimate_topic = layout.depth.topic.rsplit("/", 1)[0] + "/depth_estimate"
    pw, ph = (int(x) for x in a.panel.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="ros_snapshot_") as tmp:
        bag = a.bag
        if bag is None:
            bag = Path(tmp) / "bag"
            rc = bag_cli(["convert", "--scene", str(a.scene), "--frames", str(a.frames), "--out", str(bag)])
            if rc:
                return rc
        probe = RH.Probe("ros_snapshot")
        print(f"ROS_DOMAIN_ID {RH.domain_id()}, Fast DDS profile {RH.DDS_PROFILE}, discovery LOCALHOST")
        boxes = {d.name: probe.subscribe(Image if d.msg_type.endswith("Image") else PointCloud2, d.topic, rviz_qos(d))
                 for d in layout.displays()}
        est_box = probe.subscribe(DepthEstimate, estimate_topic)
        launch = ["launch", "eval-bag", f"bag:={bag}", f"dataset:={a.dataset}", f"output_dir:={Path(tmp) / 'eval'}",
                  f"model:={a.model}", f"rate:={a.rate}", "--duration", str(int(a.timeout + 60))]
        print("graph: mvs-depth " + " ".join(launch))
        chosen: Optional[int] = None
        topic_lines: List[str] = []
        publishers: Dict[str, str] = {}
        try:
            with RH.NodeProcess("mvs_depth_ros.cli", args=launch) as proc:
                def complete() -> List[int]:
                    """Stamps of depth maps received with everything else the picture needs."""
                    others = [by_stamp(boxes[d.name]) for d in (layout.image, layout.confidence, layout.points)]
                    est = by_stamp(est_box)
                    return [s for _, m in list(boxes[layout.depth.name]) for s in [C.stamp_to_ns(m.header.stamp)]
                            if s in est and all(s in o for o in others)]
                t0 = time.monotonic()
                # the graph as RViz would meet it: checked once the first complete keyframe is out
                if probe.wait_for(lambda: len(complete()) >= 1, a.timeout, proc) and proc.alive():
                    topic_lines, publishers = check_topics(probe.node, layout)
                probe.wait_for(lambda: len(boxes[layout.depth.name]) >= a.keyframe
                               and C.stamp_to_ns(boxes[layout.depth.name][a.keyframe - 1][1].header.stamp) in complete(),
                               max(1.0, a.timeout - (time.monotonic() - t0)), proc)
                time.sleep(0.5)  # the keyframe's later messages, if any
                proc.stop()
                log = proc.output()
                metrics = Path(tmp) / "eval" / "metrics.json"
                if metrics.is_file():   # evaluator_node's numbers for the frames it saw (written at shutdown)
                    import json
                    summ = json.loads(metrics.read_text()).get("summary", {})
                    print("evaluator_node: " + json.dumps({k: summ.get(k) for k in ("keyframes", "dense", "evaluator")}))
                print(f"received after {time.monotonic() - t0:.1f} s: "
                      + ", ".join(f"{d.topic} {len(boxes[d.name])}" for d in layout.displays())
                      + f", {estimate_topic} {len(est_box)}")
                depth_seq = [C.stamp_to_ns(m.header.stamp) for _, m in list(boxes[layout.depth.name])]
                ok = complete()
                if len(depth_seq) >= a.keyframe and depth_seq[a.keyframe - 1] in ok:
                    chosen = depth_seq[a.keyframe - 1]
                elif ok:
                    chosen = ok[-1]
                    print(f"WARNING: depth map #{a.keyframe} not received complete; showing #{depth_seq.index(chosen) + 1}")
                if chosen is None:
                    print("no complete keyframe received; graph log:\n" + log[-4000:], file=sys.stderr)
                    return 1
        finally:
            probe.close()

    # -------------------------------------------------------------------------------------- picture
    depth_msgs, conf_msgs = by_stamp(boxes[layout.depth.name]), by_stamp(boxes[layout.confidence.name])
    img_msgs, cloud_msgs, est_msgs = by_stamp(boxes[layout.image.name]), by_stamp(boxes[layout.points.name]), by_stamp(est_box)
    d_msg, c_msg, i_msg, e_msg = depth_msgs[chosen], conf_msgs[chosen], img_msgs[chosen], est_msgs[chosen]
    keyframe_no = [C.stamp_to_ns(m.header.stamp) for _, m in boxes[layout.depth.name]].index(chosen) + 1
    decay = float(layout.points.props.get("Decay Time", 0) or 0)
    window = [s for s in sorted(cloud_msgs) if s <= chosen and chosen - s <= decay * 1e9 and s in est_msgs]
    poses = {s: C.pose_to_matrix(m.pose.pose) for s, m in est_msgs.items() if s <= chosen}
    frames = {m.pose.header.frame_id for m in est_msgs.values()}
    if frames != {layout.fixed_frame}:
        print(f"WARNING: DepthEstimate poses are in {sorted(frames)}, the RViz Fixed Frame is {layout.fixed_frame!r}")
    path = [poses[s] for s in sorted(poses)]
    clouds = [(cloud_msgs[s], poses[s]) for s in window]
    cloud_img, n_points = cloud_picture(clouds, layout, path, pw, ph)

    depth = C.image_to_depth(d_msg)
    conf = C.image_to_array(c_msg)
    dp, cp = layout.depth.props, layout.confidence.props
    rng = lambda p: "own min..max" if p.get("Normalize Range", True) else f"{p.get('Min Value')}..{p.get('Max Value')}"  # noqa: E731
    bg = layout.background
    frm = lambda t: f"  from {publishers[t]}" if publishers.get(t) else ""  # noqa: E731
    tiles = [
        panel(fit(C.image_to_rgb(i_msg), pw, ph, bg, nearest=False),
              [f"{layout.image.name}: {layout.image.topic}  {type_name(i_msg)}{frm(layout.image.topic)}",
               f"{stamp_text(i_msg)}  {i_msg.width}x{i_msg.height} {i_msg.encoding}",
               "the frame the depth map was computed from (same stamp)"]),
        panel(fit(grey_image(depth, layout.depth), pw, ph, bg, nearest=True),
              [f"{layout.depth.name}: {layout.depth.topic}  {type_name(d_msg)}{frm(layout.depth.topic)}",
               f"{stamp_text(d_msg)}  {d_msg.width}x{d_msg.height} {d_msg.encoding}",
               f"grey {rng(dp)} m (black..white), NaN black; {np.isfinite(depth).mean() * 100:.0f}% valid"]),
        panel(fit(grey_image(conf, layout.confidence), pw, ph, bg, nearest=True),
              [f"{layout.confidence.name}: {layout.confidence.topic}  {type_name(c_msg)}{frm(layout.confidence.topic)}",
               f"{stamp_text(c_msg)}  {c_msg.width}x{c_msg.height} {c_msg.encoding}",
               f"grey {rng(cp)} (black..white); recommended threshold {e_msg.confidence_threshold:.2f}"]),
        panel(cloud_img,
              [f"{layout.points.name}: {layout.points.topic}  {type_name(cloud_msgs[chosen])}{frm(layout.points.topic)}",
               f"{stamp_text(cloud_msgs[chosen])} -> Fixed Frame {layout.fixed_frame}",
               f"{len(clouds)} clouds within Decay Time {decay:g} s, {n_points} points; "
               f"optical axes + path from {estimate_topic}"]),
    ]
    grid = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    title = text_strip([f"Received over DDS from `mvs-depth launch eval-bag` (player_node -> mvs_node, {e_msg.model}, "
                        f"{d_msg.width}x{d_msg.height}): depth map #{keyframe_no} received; "
                        f"displays of {a.rviz.name}"], grid.shape[1], line_h=22, scale=0.55, bg=(15, 15, 15))
    picture = np.concatenate([title, grid], axis=0)
    data, quality = encode_jpeg(picture, a.max_kb)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(data)
    print(f"wrote {a.out} ({picture.shape[1]}x{picture.shape[0]}, {len(data) / 1024:.0f} KB, JPEG quality {quality}): "
          f"depth map #{keyframe_no} at stamp {chosen // 10**9}.{chosen % 10**9:09d}, {len(clouds)} clouds, {n_points} points")
    print("RViz topics vs the graph's publishers:")
    for line in topic_lines or ["(graph already stopped: not checked)"]:
        print("  " + line)
    return 1 if any(line.startswith("MISMATCH") for line in topic_lines) else 0


if __name__ == "__main__":
    sys.exit(main())
