"""Self-supervised fine-tuning of published weights on the HoloLens sample, judged on held-out frames.

    python benchmarks/bench_finetune.py [--model itermvs] [--weights blendedmvs|dtu] [--steps 30]
        [--lr 1e-5] [--threads 2] [--shared DIR] [--out DIR]

Protocol: fine-tune on the first 100 frames (00003 ... 00102; keyframes and measurement frames chosen by
the inference keyframe buffer, ground truth never loaded), evaluate on frames 101-200 (the official
``nmeas+2`` keyframe index restricted to lines whose reference and measurement frames all lie there),
320x256, depth range 0.25-20 m, prediction clipped to the range, ground truth >= 0.5 m; before and after,
through ``create_model`` (the node's path). Prints the photometric error and abs_rel / a1 before/after.
This is ``mvs-depth finetune`` with the protocol's arguments.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from mvs_depth_ros.apps.train import finetune_main
from mvs_depth_ros.data.paths import shared_path

WEIGHTS = {
    ("itermvs", "blendedmvs"): ("weights", "itermvs", "blendedmvs", "model_000015.ckpt"),
    ("itermvs", "dtu"): ("weights", "itermvs", "dtu", "model_000015.ckpt"),
    ("patchmatchnet", "dtu"): ("weights", "patchmatchnet", "params_000007.ckpt"),
}
INDEX = "keyframe+hololens-dataset+000+nmeas+2"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="itermvs", choices=["itermvs", "patchmatchnet"])
    ap.add_argument("--weights", default="blendedmvs", choices=["blendedmvs", "dtu"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--smoothness", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = Path(args.shared) if args.shared else shared_path()
    key = (args.model, "dtu" if args.model == "patchmatchnet" else args.weights)
    if (shared is None or not (shared / "data" / "hololens-000").is_dir()
            or not shared.joinpath(*WEIGHTS[key]).is_file()):
        print("HoloLens sample or weights not found (set MVS_DEPTH_SHARED or pass --shared)", file=sys.stderr)
        return 2
    scene = shared / "data" / "hololens-000"
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or str(Path(tmp) / "finetune")
        return finetune_main([
            "--scene", str(scene), "--model", args.model, "--checkpoint", str(shared.joinpath(*WEIGHTS[key])),
            "--train-frames", "0:100", "--eval-frames", "100:200",
            "--eval-index", str(scene / "indices" / INDEX),
            "--width", "320", "--height", "256", "--min-depth", "0.25", "--max-depth", "20",
            "--steps", str(args.steps), "--lr", str(args.lr), "--smoothness", str(args.smoothness),
            "--device", args.device, "--out", out, "--no-progress", "--seed", "0"])


if __name__ == "__main__":
    sys.exit(main())
