"""Soak: a long live stream through mvs_node (another process) over DDS; memory growth and latency creep.

    .venv/bin/python benchmarks/bench_soak.py [--frames 10000 --rate 30 --size 160x128 --n-planes 16]

This process plays a camera driver + odometry: Image + CameraInfo + /tf at ``--rate`` Hz, stamped with the
wall clock (a live robot), the synthetic camera moving back and forth along a rendered trajectory so the
node keeps making keyframes and depth. It subscribes to ``depth`` and ``points`` (so the node builds and
publishes both) and records, per depth map, the latency publish -> depth received. Every ``--sample``
seconds it reads the node's RSS (``/proc/<pid>/status``) and its ``images`` counter (``/diagnostics``).

Printed at the end (and written to ``--json``):

* RSS after warm-up (``--warmup`` frames) and its growth per 1,000 frames (least-squares slope over the
  samples after warm-up, and last - first);
* latency percentiles (p50 / p90 / p99 / max) per minute, to see creep;
* the node's counters (frames received, processed, dropped by the latest-frame-wins slot, predictions).
"""
import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from ros_helpers import NodeProcess, Probe  # noqa: E402  (shared DDS environment helpers)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def slope_per_1000(xs, ys) -> float:
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0] * 1000.0)


def percentiles(v):
    a = np.asarray(v, float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--n-planes", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2000, help="frames before growth is measured")
    ap.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--param", action="append", default=[], help="extra node parameter k:=v")
    ap.add_argument("--env", action="append", default=[], help="extra node environment K=V")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from mvs_depth_ros.data.synthetic import render_sequence
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros import interfaces
    from mvs_depth_ros.ros.diagnostics import status_values
    from mvs_depth_ros.ros.qos import make_qos

    seq = render_sequence(n_frames=40, width=width, height=height, supersample=1, step=0.03)
    path = list(seq.frames) + list(seq.frames[-2:0:-1])       # back and forth: continuous motion
    TFMessage = interfaces.tf_message_type()
    params = dict(device="cpu", width=width, height=height, n_planes=args.n_planes, keyframe_pose_distance=0.05,
                  tf_timeout=0.1, diagnostics_period=1.0, warn_period=5.0, world_frame="odom")
    for kv in args.param:
        k, v = kv.split(":=", 1)
        params[k] = v
    env = dict(kv.split("=", 1) for kv in args.env)
    with NodeProcess("mvs_depth_ros.ros.mvs_node", params, env=env) as proc:
        probe = Probe("bench_soak")
        try:
            node = probe.node
            sent = {}                     # stamp -> publish time (monotonic), removed when its depth arrives
            lat, lock = [], threading.Lock()
            last_diag = {}
            n_points = [0]

            def on_depth(msg):
                t = time.monotonic()
                with lock:
                    t0 = sent.pop(C.stamp_to_ns(msg.header.stamp), None)
                    if t0 is not None:
                        lat.append((t, (t - t0) * 1e3))

            def on_points(msg):
                n_points[0] += 1

            def on_diag(msg):
                for st in msg.status:
                    if "video MVS" in st.name:
                        last_diag.clear()
                        last_diag.update(status_values(st))

            qos = make_qos("reliable", 5)
            node.create_subscription(Image, "depth", on_depth, qos)
            node.create_subscription(PointCloud2, "points", on_points, qos)
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
            pub_img, pub_info = probe.publisher(Image, "image"), probe.publisher(CameraInfo, "camera_info")
            pub_tf = probe.publisher(TFMessage, "/tf")
            for p in (pub_img, pub_info, pub_tf):
                if not probe.wait_matched(p, timeout=60):
                    raise RuntimeError("node did not subscribe:\n" + proc.output()[-2000:])
            if not probe.wait_for(lambda: bool(last_diag), 60, proc):
                raise RuntimeError("no /diagnostics:\n" + proc.output()[-2000:])
            pid = proc.proc.pid
            samples = []                  # (elapsed s, frames sent, node images counter, RSS MiB)
            period = 1.0 / args.rate
            t_start = time.monotonic()
            next_sample = t_start
            print(f"soak: {args.frames} frames at {args.rate:g} Hz, {width}x{height}, planesweep {args.n_planes} "
                  f"planes, node pid {pid}", flush=True)
            for i in range(args.frames):
                f = path[i % len(path)]
                stamp = time.time_ns()
                pub_tf.publish(TFMessage(transforms=[C.make_transform_stamped(f.T_world_cam, "odom", "camera", stamp)]))
                pub_info.publish(C.make_camera_info(seq.K, width, height, C.make_header(stamp, "camera")))
                with lock:
                    sent[stamp] = time.monotonic()
                    if len(sent) > 1000:      # frames the node dropped never come back
                        for s in sorted(sent)[:500]:
                            del sent[s]
                pub_img.publish(C.array_to_image(f.image, "rgb8", C.make_header(stamp, "camera")))
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - t_start, i + 1, int(last_diag.get("images", 0)), rss_mib(pid)))
                    next_sample = now + args.sample
                    if len(samples) % 30 == 1:
                        s = samples[-1]
                        print(f"  t={s[0]:6.0f}s sent={s[1]:6d} node images={s[2]:6d} RSS={s[3]:7.1f} MiB "
                              f"depth={len(lat)}", flush=True)
                if not proc.alive():
                    raise RuntimeError("the node died:\n" + proc.output()[-3000:])
                time.sleep(max(0.0, t_start + (i + 1) * period - time.monotonic()))
            time.sleep(2.0)
            samples.append((time.monotonic() - t_start, args.frames, int(last_diag.get("images", 0)), rss_mib(pid)))
            diag = dict(last_diag)
        finally:
            probe.close()

    after = [s for s in samples if s[2] >= args.warmup]
    xs, ys = [s[2] for s in after], [s[3] for s in after]
    res = {"frames_sent": args.frames, "rate_hz": args.rate, "size": args.size, "n_planes": args.n_planes,
           "node_images": int(diag.get("images", 0)), "processed": int(diag.get("processed", 0)),
           "dropped": int(diag.get("dropped", 0)), "predictions": int(diag.get("predictions", 0)),
           "depth_received": len(lat), "points_received": n_points[0],
           "compute_ms_mean": float(diag.get("compute_ms_mean", "nan")),
           "heap_trim_ms_max": float(diag.get("heap_trim_ms_max", "nan")),
           "rss_start_mib": samples[0][3], "rss_after_warmup_mib": ys[0] if ys else None,
           "rss_end_mib": samples[-1][3],
           "growth_mib_per_1000_frames_fit": slope_per_1000(xs, ys),
           "growth_mib_after_warmup": (ys[-1] - ys[0]) if ys else None,
           "frames_after_warmup": (xs[-1] - xs[0]) if xs else 0,
           "rss_samples": samples, "latency_per_minute": {}}
    for minute in range(int(samples[-1][0] // 60) + 1):
        v = [ms for t, ms in lat if minute * 60 <= t - t_start < (minute + 1) * 60]
        if v:
            res["latency_per_minute"][minute] = percentiles(v)
    print(f"\nnode: {res['node_images']} images received, {res['processed']} processed, {res['dropped']} dropped "
          f"(latest frame wins), {res['predictions']} depth maps; here: {res['depth_received']} depth, "
          f"{res['points_received']} points; model {res['compute_ms_mean']:.1f} ms/frame (mean of the last 100), "
          f"heap trim {res['heap_trim_ms_max']:.1f} ms (max of the last 10)")
    print(f"RSS: start {res['rss_start_mib']:.1f} MiB, after {args.warmup} frames {res['rss_after_warmup_mib']:.1f} MiB, "
          f"end {res['rss_end_mib']:.1f} MiB")
    print(f"growth after warm-up: {res['growth_mib_per_1000_frames_fit']:+.3f} MiB / 1000 frames (fit), "
          f"{res['growth_mib_after_warmup']:+.1f} MiB over {res['frames_after_warmup']} frames")
    print("latency publish -> depth received, ms, per minute:")
    for minute, p in res["latency_per_minute"].items():
        print(f"  min {minute:2d}: n={p['n']:5d} p50={p['p50']:7.1f} p90={p['p90']:7.1f} p99={p['p99']:7.1f} "
              f"max={p['max']:7.1f}")
    if len(res["latency_per_minute"]) >= 2:
        p50 = [p["p50"] for p in res["latency_per_minute"].values()]
        print(f"latency creep (last minute p50 - first minute p50): {p50[-1] - p50[0]:+.1f} ms; "
              f"median of minutes {statistics.median(p50):.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
