"""Accuracy and speed of the classical plane sweep on the HoloLens sample (146 official keyframes).

    python benchmarks/bench_planesweep.py [--shared DIR] [--frames N] [--threads 2] [--option key=value ...]

Prints dense abs_rel / a1 (every valid-GT pixel with a finite prediction), the same at the default
confidence threshold with its coverage of valid-GT pixels, and the median ms per keyframe after warm-up.
Metrics are per frame, averaged over frames; GT resized with nearest neighbour, valid where >= 0.5 m.
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.data.paths import shared_path
from mvs_depth_ros.models.planesweep import build

INDEX = "keyframe+hololens-dataset+000+nmeas+2"


def load_hololens(root: Path, width: int, height: int):
    """Frames by image name at ``width x height`` (inline reader until the package's scene reader lands)."""
    names = sorted(os.listdir(root / "images"))
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    K = np.loadtxt(root / "K.txt")
    if len(poses) != len(names):
        raise RuntimeError(f"{len(poses)} poses for {len(names)} images in {root}")
    frames = {}
    for i, n in enumerate(names):
        img = cv2.cvtColor(cv2.imread(str(root / "images" / n)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(root / "depth" / n), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        frames[n] = Frame(img, K, poses[i], stamp=i, name=n, depth_gt=gt).resized(width, height)
    return frames


def frame_metrics(pred: np.ndarray, gt: np.ndarray, min_gt: float, max_gt: float) -> dict:
    valid = np.isfinite(gt) & (gt >= min_gt) & (gt <= max_gt)
    ok = valid & np.isfinite(pred) & (pred > 0)
    n_valid = int(valid.sum())
    if ok.sum() == 0:
        return {"abs_rel": float("nan"), "a1": float("nan"), "coverage": 0.0}
    p, g = pred[ok], gt[ok]
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "a1": float(np.mean(ratio < 1.25)),
            "coverage": float(ok.sum() / max(n_valid, 1))}


def mean_of(rows, key):
    vals = [r[key] for r in rows if np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None, help="shared data folder (default: MVS_DEPTH_SHARED or ../shared)")
    ap.add_argument("--frames", type=int, default=0, help="use only the first N keyframes (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--option", action="append", default=[], help="planesweep option key=value")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = Path(args.shared) / "data" / "hololens-000" if args.shared else shared_path("data", "hololens-000")
    if root is None or not root.is_dir():
        print("HoloLens sample not found (set MVS_DEPTH_SHARED or pass --shared)", file=sys.stderr)
        return 2
    options = {}
    for kv in args.option:
        k, v = kv.split("=", 1)
        options[k] = ast.literal_eval(v)
    est = build(device=args.device, min_depth=0.25, max_depth=20.0, **options)
    frames = load_hololens(root, args.width, args.height)
    lines = [l.split() for l in (root / "indices" / INDEX).read_text().splitlines() if l.strip()]
    if args.frames:
        lines = lines[:args.frames]

    for names in lines[:args.warmup]:
        est.estimate(frames[names[0]], [frames[n] for n in names[1:]])
    dense, filt, times = [], [], []
    for names in lines:
        ref = frames[names[0]]
        t0 = time.perf_counter()
        res = est.estimate(ref, [frames[n] for n in names[1:]])
        if est.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        dense.append(frame_metrics(res.depth, ref.depth_gt, 0.5, 20.0))
        filt.append(frame_metrics(res.filtered(res.info["confidence_threshold"]), ref.depth_gt, 0.5, 20.0))
    thr = res.info["confidence_threshold"]
    print(f"planesweep {options or 'defaults'} on {est.device}, {len(lines)} keyframes at "
          f"{args.width}x{args.height}, {args.threads} threads")
    print(f"dense:    abs_rel {mean_of(dense, 'abs_rel'):.4f}  a1 {mean_of(dense, 'a1'):.4f}  "
          f"coverage {mean_of(dense, 'coverage'):.4f}")
    print(f"filtered (confidence >= {thr:g}): abs_rel {mean_of(filt, 'abs_rel'):.4f}  a1 {mean_of(filt, 'a1'):.4f}  "
          f"coverage {mean_of(filt, 'coverage'):.4f}")
    print(f"time: median {statistics.median(times):.1f} ms/keyframe  (min {min(times):.1f}, max {max(times):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
