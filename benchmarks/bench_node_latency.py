"""End-to-end latency of mvs_node (another process) and the node's own overhead beyond the model.

    .venv/bin/python benchmarks/bench_node_latency.py [--sizes 320x256 640x480 --frames 12 --n-planes 32]

For each size the node runs at that working resolution (no resize) with every posed frame a keyframe.
This process publishes Image + CameraInfo + /tf over DDS (Fast DDS profile, LOCALHOST discovery) one frame
at a time and waits for the depth and points of that frame. Printed per size (medians):

* ``e2e``: image publish -> both depth and points received here;
* ``model``: the estimator's compute time (node's /diagnostics ``compute_ms_mean``);
* ``node overhead``: the node's own work around the model per frame (decode, resize, conversions,
  publishing; /diagnostics ``node_overhead_ms_mean``), the target being <= 10 ms;
* ``transport+wait``: e2e - model - node overhead (DDS both ways, executor wake-ups, TF wait).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from ros_helpers import NodeProcess, Probe  # noqa: E402  (shared DDS environment helpers)


def frames_at(width, height, n):
    from mvs_depth_ros.core.frame import scale_intrinsics
    from mvs_depth_ros.data.synthetic import render_sequence
    seq = render_sequence(n_frames=n, width=320, height=256, supersample=1, step=0.05)
    out = []
    for f in seq.frames:
        img = f.image if (width, height) == (320, 256) else cv2.resize(f.image, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append((img, scale_intrinsics(f.K, width / 320, height / 256), f.T_world_cam, f.stamp))
    return out


def run_size(width, height, n_frames, n_planes, timeout):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros import interfaces
    from mvs_depth_ros.ros.diagnostics import status_values

    TFMessage = interfaces.tf_message_type()
    params = dict(device="cpu", width=width, height=height, n_planes=n_planes, keyframe_pose_distance=0.0,
                  tf_timeout=0.5, diagnostics_period=0.5, warn_period=1.0)
    frames = frames_at(width, height, n_frames)
    with NodeProcess("mvs_depth_ros.ros.mvs_node", params) as proc:
        probe = Probe(f"bench_{width}x{height}")
        try:
            depth = probe.subscribe(Image, "depth")
            DepthEstimate = interfaces.depth_estimate_type()
            est = probe.subscribe(DepthEstimate, "depth_estimate") if DepthEstimate else None
            points = probe.subscribe(PointCloud2, "points")
            diag = probe.subscribe(DiagnosticArray, "/diagnostics")
            pub_img, pub_info = probe.publisher(Image, "image"), probe.publisher(CameraInfo, "camera_info")
            pub_tf = probe.publisher(TFMessage, "/tf")
            for p in (pub_img, pub_info, pub_tf):
                if not probe.wait_matched(p, timeout=60):
                    raise RuntimeError("node did not subscribe:\n" + proc.output()[-2000:])
            def node_images():
                vals = [status_values(m.status[0]) for _, m in diag if m.status]
                return int(vals[-1]["images"]) if vals else 0
            # warm-up: the first best-effort sample can go out before the node's reader has matched us
            img0, K0, T0, s0 = frames[0]
            for k in range(10):
                stamp0 = s0 - (10 - k) * 10_000_000
                pub_tf.publish(TFMessage(transforms=[C.make_transform_stamped(T0, "odom", "camera", stamp0)]))
                pub_info.publish(C.make_camera_info(K0, width, height, C.make_header(stamp0, "camera")))
                pub_img.publish(C.array_to_image(img0, "rgb8", C.make_header(stamp0, "camera")))
                if probe.wait_for(lambda: node_images() >= 1, 2.0, proc):
                    break
            e2e = []
            for i, (img, K, T, stamp) in enumerate(frames):
                pub_tf.publish(TFMessage(transforms=[C.make_transform_stamped(T, "odom", "camera", stamp),
                                                     C.make_transform_stamped(T, "odom", "camera", stamp + 1_000_000)]))
                pub_info.publish(C.make_camera_info(K, width, height, C.make_header(stamp, "camera")))
                time.sleep(0.05)  # TF and camera_info in place, as with a real driver running ahead
                msg = C.array_to_image(img, "rgb8", C.make_header(stamp, "camera"))
                t0 = time.monotonic()
                pub_img.publish(msg)
                if i == 0:  # the first frame only starts the keyframe buffer
                    time.sleep(0.5)
                    continue
                def arrived(box, stamp=stamp):
                    return next((t for t, m in reversed(box) if C.stamp_to_ns(m.header.stamp) == stamp), None)
                ok = probe.wait_for(lambda: arrived(depth) is not None and arrived(points) is not None, timeout, proc)
                if not ok:
                    print(f"  frame {i}: no output within {timeout}s", file=sys.stderr)
                    continue
                t1 = max(arrived(depth), arrived(points))
                compute = None
                if est is not None and probe.wait_for(lambda: arrived(est) is not None, 2.0):
                    compute = next(m.compute_ms for _, m in est if C.stamp_to_ns(m.header.stamp) == stamp)
                e2e.append(((t1 - t0) * 1e3, compute))
            time.sleep(1.0)
            vals = [status_values(m.status[0]) for _, m in diag if m.status]
            d = vals[-1]
        finally:
            probe.close()
    return e2e, d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["320x256", "640x480"])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--n-planes", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    print(f"mvs_node end-to-end latency: planesweep ({a.n_planes} planes) on cpu, every frame a keyframe, "
          f"{a.frames} frames per size; medians in ms")
    for size in a.sizes:
        w, h = (int(x) for x in size.split("x"))
        e2e, d = run_size(w, h, a.frames, a.n_planes, a.timeout)
        if not e2e:
            print(f"  {size}: no output")
            continue
        med = statistics.median(x for x, _ in e2e)
        per_frame = [x - c for x, c in e2e if c is not None]
        beyond = statistics.median(per_frame) if per_frame else float("nan")
        model = statistics.median(c for _, c in e2e if c is not None) if per_frame else float(d["compute_ms_mean"])
        ovh = float(d["node_overhead_ms_mean"])
        print(f"  {size}: e2e {med:7.1f}  model {model:7.1f}  e2e-model (per frame) {beyond:6.1f}  of which node "
              f"overhead {ovh:5.1f} (publish {float(d['publish_ms_mean']):.1f}, max {float(d['node_overhead_ms_max']):.1f})"
              f"  n={len(e2e)} dropped {d['dropped']} errors {d['errors']}")


if __name__ == "__main__":
    main()
