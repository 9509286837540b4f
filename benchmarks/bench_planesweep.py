"""Accuracy and speed of the classical plane sweep on the HoloLens sample (146 official keyframes).

    python benchmarks/bench_planesweep.py [--shared DIR] [--frames N] [--threads 2] [--option key=value ...]

Protocol (the one the other MVS benchmarks use): 320x256, official ``nmeas+2`` index, depth range
0.25-20 m, ground truth nearest-resized and valid where >= 0.5 m, metrics per frame averaged over frames,
run through ``VideoPipeline.process_keyframe``. Prints dense abs_rel / a1 (every valid-GT pixel with a
finite prediction), the same at the default confidence threshold with its coverage of valid-GT pixels,
coverage/abs_rel at a few other thresholds, and the median ms per keyframe after warm-up.
"""
from __future__ import annotations

import argparse
import ast
import statistics
import sys
from pathlib import Path

import torch

from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
from mvs_depth_ros.data.paths import shared_path
from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index
from mvs_depth_ros.eval.metrics import aggregate, depth_metrics
from mvs_depth_ros.models.planesweep import build

INDEX = "keyframe+hololens-dataset+000+nmeas+2"
MIN_DEPTH, MAX_DEPTH, MIN_GT = 0.25, 20.0, 0.5
EXTRA_THRESHOLDS = (0.3, 0.6)


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
    est = build(device=args.device, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, **options)
    scene = load_scene(root)
    frames = {f.name: f for f in scene.frames()}
    lines = read_keyframe_index(root / "indices" / INDEX)
    if args.frames:
        lines = lines[:args.frames]
    pipe = VideoPipeline(est, PipelineConfig(width=args.width, height=args.height))

    def run(ref: str, meas):
        return pipe.process_keyframe(frames[Path(ref).stem], [frames[Path(m).stem] for m in meas])

    for ref, meas in lines[:args.warmup]:
        run(ref, meas)
    thr = est.config.confidence_threshold
    thresholds = (thr,) + tuple(t for t in EXTRA_THRESHOLDS if t != thr)
    dense, filt, times = [], {t: [] for t in thresholds}, []
    for ref, meas in lines:
        step = run(ref, meas)
        if est.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(step.compute_ms)
        gt = step.frame.depth_gt
        dense.append(depth_metrics(step.result.depth, gt, min_gt=MIN_GT, clip=(MIN_DEPTH, MAX_DEPTH)))
        for t in thresholds:
            filt[t].append(depth_metrics(step.result.filtered(t), gt, min_gt=MIN_GT, clip=(MIN_DEPTH, MAX_DEPTH)))
    d = aggregate(dense)
    print(f"planesweep {options or 'defaults'} on {est.device}, {len(lines)} keyframes at "
          f"{args.width}x{args.height}, {args.threads} threads")
    print(f"dense:    abs_rel {d['abs_rel']:.4f}  a1 {d['a1']:.4f}  coverage {d['coverage']:.4f}")
    for t in thresholds:
        f = aggregate(filt[t])
        tag = "  (default)" if t == thr else ""
        print(f"filtered (confidence >= {t:g}): abs_rel {f['abs_rel']:.4f}  a1 {f['a1']:.4f}  "
              f"coverage {f['coverage']:.4f}{tag}")
    print(f"time: median {statistics.median(times):.1f} ms/keyframe  (min {min(times):.1f}, max {max(times):.1f}; "
          f"shared machines: expect +-15 % and more under load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
