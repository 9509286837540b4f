#!/usr/bin/env python3
"""Stereo benchmark: classical SGBM on Middlebury Motorcycle-Q, and per-frame vs temporal on synthetic video.

Prints:

1. Middlebury 2014 Motorcycle (quarter resolution, shared data): EPE / bad-1/2/3 / D1 / coverage on all
   and non-occluded GT pixels, depth abs_rel, and EPE vs coverage at a few confidence thresholds.
2. A synthetic rectified stereo video (``render_stereo_sequence``, default 60 frames 320x256, baseline
   0.1 m): TEPE and EPE of per-frame SGBM vs the same SGBM with the temporal stage, each on its own
   valid pixels and on the pixels both methods cover, plus the pose-free temporal variant and the
   moving-object scene. Target: the temporal stage lowers TEPE by >= 30 % without raising EPE by > 5 %.

Timings are medians per frame on this machine, wall clock and CPU (process) time (noisy on shared
CPUs; compare within one run).

    .venv/bin/python benchmarks/bench_stereo.py [--frames 60] [--width 320 --height 256] [--skip-middlebury]
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List, Sequence

import numpy as np

from mvs_depth_ros.core.frame import StereoFrame
from mvs_depth_ros.core.stereo import StereoPipeline, StereoEstimator
from mvs_depth_ros.data.middlebury import load_middlebury, middlebury_num_disparities
from mvs_depth_ros.data.paths import shared_path
from mvs_depth_ros.data.synthetic import render_stereo_sequence
from mvs_depth_ros.eval.stereo_metrics import (coverage_at_confidence, depth_abs_rel, disparity_metrics,
                                               temporal_epe)
from mvs_depth_ros.models.stereo import build


def _fmt(m: Dict[str, float]) -> str:
    return (f"EPE {m['epe']:.3f}  bad1 {m['bad1']:.2f}%  bad2 {m['bad2']:.2f}%  bad3 {m['bad3']:.2f}%  "
            f"D1 {m['d1']:.2f}%  coverage {100 * m['coverage']:.1f}%")


def bench_middlebury(block_size: int, repeats: int) -> None:
    root = shared_path("data", "middlebury-2014-motorcycle-q")
    if root is None:
        print("Middlebury: shared data/middlebury-2014-motorcycle-q not found, skipped")
        return
    pair = load_middlebury(root)
    f = pair.frame
    nd = middlebury_num_disparities(pair.calib)
    est = build(num_disparities=nd, block_size=block_size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = est.estimate(f)
        times.append(time.perf_counter() - t0)
    print(f"== Middlebury 2014 Motorcycle-Q {f.left.shape[1]}x{f.left.shape[0]}: {est.describe()}")
    print(f"   all GT    : {_fmt(disparity_metrics(r.disparity, f.disparity_gt))}")
    print(f"   non-occ.  : {_fmt(disparity_metrics(r.disparity, f.disparity_gt, pair.nonocc))}")
    print(f"   depth abs_rel (non-occ.) {depth_abs_rel(r.depth, pair.depth_gt, pair.nonocc):.4f}   "
          f"median {1000 * np.median(times):.0f} ms/pair")
    for th in (0.0, 0.5, 0.75, 1.0):
        c = coverage_at_confidence(r.disparity, r.confidence, f.disparity_gt, th, pair.nonocc)
        print(f"   confidence >= {th:.2f}: coverage {100 * c['coverage']:.1f}%  EPE {c['epe']:.3f}  "
              f"bad2 {c['bad2']:.2f}%")


def _run(est: StereoEstimator, pairs: Sequence[StereoFrame]):
    """Disparities, median wall ms and median CPU ms (process time, all threads) per frame."""
    pl = StereoPipeline(est)
    out, wall, cpu = [], [], []
    for p in pairs:
        t0, c0 = time.perf_counter(), time.process_time()
        out.append(pl.process(p).disparity)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, (1000 * float(np.median(wall)), 1000 * float(np.median(cpu)))


def _summary(disps: List[np.ndarray], gts: List[np.ndarray], masks=None) -> Dict[str, float]:
    ms = [disparity_metrics(d, g, None if masks is None else m) for d, g, m in
          zip(disps, gts, masks if masks is not None else [None] * len(disps))]
    return {"epe": float(np.mean([m["epe"] for m in ms])), "bad1": float(np.mean([m["bad1"] for m in ms])),
            "coverage": float(np.mean([m["coverage"] for m in ms])), "tepe": temporal_epe(disps, gts, masks)}


def bench_synthetic(n_frames: int, width: int, height: int, baseline: float, moving: bool) -> None:
    t0 = time.perf_counter()
    pairs = render_stereo_sequence(n_frames, width, height, baseline=baseline, seed=0, moving_object=moving)
    gts = [p.disparity_gt for p in pairs]
    dmax = max(float(np.nanmax(g)) for g in gts)
    nd = int(16 * np.ceil((dmax + 4) / 16))
    print(f"== synthetic stereo video: {n_frames} frames {width}x{height}, baseline {baseline} m, "
          f"GT disparity {min(float(np.nanmin(g)) for g in gts):.1f}-{dmax:.1f} px, "
          f"moving object: {moving} (rendered in {time.perf_counter() - t0:.1f} s); num_disparities {nd}")
    runs = {
        "per-frame SGBM": build(num_disparities=nd),
        "SGBM + temporal": build(num_disparities=nd, temporal=True),
        "SGBM + temporal, no poses": build(num_disparities=nd, temporal=True, temporal_use_poses=False),
    }
    results = {name: _run(est, pairs) for name, est in runs.items()}
    base, _ = results["per-frame SGBM"]
    rows = []
    for name, (disps, ms) in results.items():
        own = _summary(disps, gts)
        common = [np.isfinite(a) & np.isfinite(b) for a, b in zip(base, disps)]
        both = _summary(disps, gts, common)
        rows.append((name, own, both, ms))
    print(f"   {'':<27}{'TEPE':>8}{'EPE':>8}{'bad1%':>8}{'cover%':>8} | {'common pixels:':>14}"
          f"{'TEPE':>8}{'EPE':>8} | ms/frame wall, cpu")
    for name, own, both, (wall, cpu) in rows:
        print(f"   {name:<27}{own['tepe']:>8.4f}{own['epe']:>8.4f}{own['bad1']:>8.2f}{100 * own['coverage']:>8.1f} | "
              f"{'':>14}{both['tepe']:>8.4f}{both['epe']:>8.4f} | {wall:>6.0f} {cpu:>6.0f}")
    b_own, t_own = rows[0][1], rows[1][1]
    b_com, t_com = rows[0][2], rows[1][2]
    d_tepe = 100 * (1 - t_own["tepe"] / b_own["tepe"])
    d_epe = 100 * (t_own["epe"] / b_own["epe"] - 1)
    d_tepe_c = 100 * (1 - t_com["tepe"] / b_com["tepe"])
    d_epe_c = 100 * (t_com["epe"] / b_com["epe"] - 1)
    ok = d_tepe >= 30 and d_epe <= 5 and d_tepe_c >= 30 and d_epe_c <= 5
    print(f"   temporal vs per-frame: TEPE -{d_tepe:.1f}% (common pixels -{d_tepe_c:.1f}%), "
          f"EPE {d_epe:+.1f}% (common {d_epe_c:+.1f}%)  -> target (TEPE >= -30%, EPE <= +5%): "
          f"{'MET' if ok else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--baseline", type=float, default=0.1)
    ap.add_argument("--block-size", type=int, default=3, help="SGBM block size for Middlebury")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for Middlebury")
    ap.add_argument("--skip-middlebury", action="store_true")
    ap.add_argument("--skip-moving", action="store_true", help="skip the moving-object sequence")
    args = ap.parse_args()
    if not args.skip_middlebury:
        bench_middlebury(args.block_size, args.repeats)
    bench_synthetic(args.frames, args.width, args.height, args.baseline, moving=False)
    if not args.skip_moving:
        bench_synthetic(args.frames, args.width, args.height, args.baseline, moving=True)


if __name__ == "__main__":
    main()
