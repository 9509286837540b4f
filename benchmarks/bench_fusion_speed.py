"""Time of the temporal fusion alone (``core.fusion``), per keyframe, on the HoloLens sample's real geometry.

    python benchmarks/bench_fusion_speed.py [--frames 146] [--threads 1] [--width 320 --height 256]
        [--windows 14] [--strides 1,2]

No estimator runs: each keyframe's "prediction" is its ground-truth depth (resized nearest to the working size)
with the holes of the sensor filled by 3 m and a pseudo-random confidence in [0, 1] (seeded): dense like the
networks' output, so every pixel is a point to re-project, and with as many pixels under a confidence gate as
a real estimator has roughly. The keyframes are the 146 reference frames of the official index, in order,
through ``TemporalFusion.step`` (causal: the ``window`` nearest of the last ``history`` keyframes), once per
setting: the default ``FusionConfig`` with each estimator's ``fusion_defaults`` (IterMVS / PatchmatchNet /
plane sweep), and the ``--windows`` x ``--strides`` variants of the default. Reported per setting: the median
wall-clock and process CPU milliseconds per keyframe over the keyframes that had a full window (the first
``window`` keyframes have fewer sources), and the load average before and after (shared machines: the CPU time
is the steadier figure; a machine with other work on it still slows it through the shared caches and cores).
The prior's re-projection (:meth:`TemporalFusion.prior`, plane sweep only) is timed as its own row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mvs_accuracy import hololens_root  # noqa: E402
from mvs_depth_ros.core.frame import scale_intrinsics  # noqa: E402
from mvs_depth_ros.core.fusion import FusionConfig, TemporalFusion  # noqa: E402
from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index  # noqa: E402

INDEX = "keyframe+hololens-dataset+000+nmeas+2"


def estimator_defaults():
    """``fusion_defaults`` of the estimators with real weights or none (read from the classes, no weights)."""
    from mvs_depth_ros.models.itermvs import IterMVSEstimator
    from mvs_depth_ros.models.patchmatchnet import PatchmatchNetEstimator
    from mvs_depth_ros.models.planesweep import PlaneSweepEstimator
    return {"itermvs": IterMVSEstimator.fusion_defaults, "patchmatchnet": PatchmatchNetEstimator.fusion_defaults,
            "planesweep": PlaneSweepEstimator.fusion_defaults}


def keyframes(root: Path, n: int, width: int, height: int):
    scene = load_scene(root)
    refs = [r for r, _ in read_keyframe_index(root / "indices" / INDEX)][: n or None]
    rng = np.random.default_rng(0)
    out = []
    for name in refs:
        f = scene.frame(scene.index_of(Path(name).stem))
        gt = cv2.resize(f.depth_gt, (width, height), interpolation=cv2.INTER_NEAREST)
        depth = np.where(np.isfinite(gt) & (gt > 0), gt, 3.0).astype(np.float32)
        conf = rng.random((height, width)).astype(np.float32)
        K = scale_intrinsics(f.K, width / f.width, height / f.height)
        out.append((depth, conf, K, f.T_world_cam))
    return out


def time_setting(kfs, config: FusionConfig, prior: bool = False):
    fusion = TemporalFusion(config)
    wall, cpu = [], []
    for i, (d, c, K, T) in enumerate(kfs):
        t0, c0 = time.perf_counter(), time.process_time()
        if prior:
            fusion.prior(K, T, *d.shape)
        else:
            fusion.step(d, c, K, T)
        t1, c1 = time.perf_counter(), time.process_time()
        if prior:
            fusion.step(d, c, K, T)               # the state the next prior comes from (not timed)
        if i >= config.window:
            wall.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu), len(wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--frames", type=int, default=0, help="first N keyframes (0 = all 146)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--windows", default="14", help="windows of the variant rows (default settings otherwise)")
    ap.add_argument("--strides", default="1,2", help="evidence_stride values of the variant rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = hololens_root(args.shared)
    if root is None:
        return 2
    kfs = keyframes(root, args.frames, args.width, args.height)
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                     "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"{len(kfs)} HoloLens keyframes at {args.width}x{args.height}, {args.threads} torch thread(s), "
          f"{cpu_model}, {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    base = FusionConfig(mode="causal")
    for name, defaults in estimator_defaults().items():
        cfg = base.resolved(defaults)
        rows.append((f"{name} defaults", *time_setting(kfs, cfg)))
        if cfg.prior:
            rows.append((f"{name}: prior re-projection only", *time_setting(kfs, cfg, prior=True)))
    for w in [int(x) for x in args.windows.split(",") if x]:
        for s in [int(x) for x in args.strides.split(",") if x]:
            cfg = replace(base.resolved(), window=w, evidence_stride=s)
            rows.append((f"default, window {w}, evidence_stride {s}", *time_setting(kfs, cfg)))
    width = max(len(r[0]) for r in rows)
    print(f"{'setting':<{width}} | wall ms | CPU ms | keyframes timed")
    for name, wall, cpu, n in rows:
        print(f"{name:<{width}} | {wall:7.1f} | {cpu:6.1f} | {n}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
