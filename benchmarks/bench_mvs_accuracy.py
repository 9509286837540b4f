"""Accuracy and speed of the learned MVS models with their published weights on the HoloLens sample.

    python benchmarks/bench_mvs_accuracy.py [--models itermvs-blendedmvs,itermvs-dtu,patchmatchnet]
        [--frames N] [--threads 2] [--float-resize] [--shared DIR]

Protocol of the reference figures (shared/README.md): the 146 keyframes of the official
``nmeas+2`` index (reference + 2 measurement frames), frames stretched to 320x256, depth range
0.25-20 m, prediction clipped to the range, ground truth nearest-resized and valid where >= 0.5 m,
metrics per frame averaged over frames. Runs through ``VideoPipeline.process_keyframe``, the path the
CLI and the ROS node use.

``--float-resize`` attaches the un-rounded float resize to each frame (``Frame.image_float``), the image
the official loaders feed (they never round the resized image back to uint8).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
from mvs_depth_ros.data.paths import shared_path
from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index
from mvs_depth_ros.eval.metrics import aggregate, depth_metrics
from mvs_depth_ros.models.registry import create_model

INDEX = "keyframe+hololens-dataset+000+nmeas+2"
MODELS = {  # name -> (registry model, checkpoint under shared/, official abs_rel, official a1)
    "itermvs-blendedmvs": ("itermvs", ("weights", "itermvs", "blendedmvs", "model_000015.ckpt"), 0.0970, 0.8934),
    "itermvs-dtu": ("itermvs", ("weights", "itermvs", "dtu", "model_000015.ckpt"), 0.1460, 0.8464),
    "patchmatchnet": ("patchmatchnet", ("weights", "patchmatchnet", "params_000007.ckpt"), 0.3359, 0.7675),
}


def load_frames(scene, names, width, height, float_resize):
    frames = {}
    for n in names:
        f = scene.frame(scene.index_of(n))
        small = f.resized(width, height)          # GT depth: metres, NaN = none, nearest-resized
        if float_resize:
            small.image_float = cv2.resize(f.image.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        frames[n] = small
    return frames


def hololens_root(shared_arg: Optional[str]) -> Optional[Path]:
    """The HoloLens sample folder (``--shared`` or MVS_DEPTH_SHARED / ../shared), or None with a message."""
    shared = Path(shared_arg) if shared_arg else shared_path()
    root = shared / "data" / "hololens-000" if shared else None
    if root is None or not root.is_dir():
        print("HoloLens sample not found (set MVS_DEPTH_SHARED or pass --shared)", file=sys.stderr)
        return None
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--shared", default=None)
    ap.add_argument("--frames", type=int, default=0, help="first N keyframes only (0 = all 146)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--float-resize", action="store_true")
    ap.add_argument("--progress", type=int, default=0, help="print running means every N keyframes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = hololens_root(args.shared)
    if root is None:
        return 2
    shared = root.parents[1]                 # <shared>/data/hololens-000
    scene = load_scene(root)
    index = read_keyframe_index(root / "indices" / INDEX)
    if args.frames:
        index = index[:args.frames]
    names = sorted({Path(n).stem for ref, meas in index for n in (ref, *meas)})
    frames = load_frames(scene, names, args.width, args.height, args.float_resize)

    for key in args.models.split(","):
        model, ck_parts, off_rel, off_a1 = MODELS[key]
        est = create_model(model, checkpoint=str(shared.joinpath(*ck_parts)), device=args.device,
                           min_depth=0.25, max_depth=20.0)
        pipe = VideoPipeline(est, PipelineConfig(width=args.width, height=args.height, n_measurement_frames=2))
        for ref, meas in index[:args.warmup]:          # warm-up on separate frame objects (no cache hits)
            est.estimate(*_copies(frames, ref, meas))
        rows, times = [], []
        for ref, meas in index:
            step = pipe.process_keyframe(frames[Path(ref).stem], [frames[Path(m).stem] for m in meas])
            times.append(step.compute_ms)
            rows.append(depth_metrics(step.result.depth, step.frame.depth_gt, min_gt=0.5, clip=(0.25, 20.0)))
            if args.progress and len(rows) % args.progress == 0:
                part = aggregate(rows)
                print(f"  {key} {len(rows)}/{len(index)}: abs_rel {part['abs_rel']:.4f} a1 {part['a1']:.4f} "
                      f"median {statistics.median(times):.0f} ms", flush=True)
        agg = aggregate(rows)
        rel = (agg["abs_rel"] - off_rel) / off_rel
        print(f"{key:20s} {int(agg['frames'])} keyframes {args.width}x{args.height} {args.threads} threads "
              f"{'float' if args.float_resize else 'uint8'} resize: abs_rel {agg['abs_rel']:.4f} "
              f"(official {off_rel:.4f}, {rel * 100:+.2f} %)  a1 {agg['a1']:.4f} (official {off_a1:.4f})  "
              f"median {statistics.median(times):.0f} ms/keyframe (p10 {np.percentile(times, 10):.0f}, "
              f"p90 {np.percentile(times, 90):.0f}); feature cache hits {est.cache.hits}", flush=True)
    return 0


def _copies(frames, ref, meas):
    """Fresh Frame objects (new uids) for warm-up, so the measured run starts with a cold cache."""
    from mvs_depth_ros.core.frame import Frame
    out = []
    for n in (ref, *meas):
        f = frames[Path(n).stem]
        c = Frame(image=f.image, K=f.K, T_world_cam=f.T_world_cam, name=f.name)
        if hasattr(f, "image_float"):
            c.image_float = f.image_float
        out.append(c)
    return out[0], out[1:]


if __name__ == "__main__":
    sys.exit(main())
