"""Training from scratch on the synthetic renderer: does a short CPU budget measurably reduce depth error
on held-out synthetic frames?

    python benchmarks/bench_train.py [--model patchmatchnet] [--budget-s 300] [--width 64 --height 64]
        [--train-frames 60] [--eval-frames 40] [--losses supervised,self-supervised] [--threads 2]
    python benchmarks/bench_train.py --model dvmvs_fusionnet --losses supervised --sequence-length 4

Training data: one rendered sequence (scene seed 0), keyframes and measurement frames chosen by the
inference keyframe buffer. Held-out data: another scene (seed 1: other box positions and textures),
never trained on. For each loss, a network is initialised from the same seed, evaluated, trained for
``--budget-s`` seconds of wall time (steps counted and printed), saved in the official format, re-loaded
through ``create_model`` (the inference path) and evaluated again: abs_rel / a1 against the exact
ground truth and the photometric error. The self-supervised run never sees ground truth.

fusionnet trains on subsequences of ``--sequence-length`` consecutive keyframes (one step = ``batch``
subsequences, loss summed over their keyframes) and is evaluated recurrently: the held-out keyframes in
stream order with the state carried, as the node runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mvs_depth_ros.models.registry import create_model
from mvs_depth_ros.train.adapters import TRAINABLE
from mvs_depth_ros.train.data import frames_from_synthetic, keyframe_samples, strip_ground_truth
from mvs_depth_ros.train.loop import TrainConfig, Trainer, evaluate_estimator


def run_one(loss, train_samples, eval_samples, args, out_dir):
    cfg = TrainConfig(model=args.model, out_dir=str(out_dir), loss=loss, steps=10 ** 9, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, device=args.device, progress=False,
                      min_depth=args.min_depth, max_depth=args.max_depth, sequence_length=args.sequence_length)
    trainer = Trainer(cfg, train_samples)
    init = trainer.save()   # the step-0 weights, through the same save/load path as the trained ones
    clip = (args.min_depth, args.max_depth)
    before = evaluate_estimator(create_model(args.model, checkpoint=str(init), device=args.device,
                                             min_depth=args.min_depth, max_depth=args.max_depth), eval_samples, clip)
    t0 = time.perf_counter()
    losses = []
    while time.perf_counter() - t0 < args.budget_s:
        row = trainer.train_step(trainer.step)
        trainer.step += 1
        losses.append(row["loss"])
        if trainer.step % 10 == 0:
            print(f"  [{loss}] step {trainer.step} loss {sum(losses[-10:]) / len(losses[-10:]):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t0
    ckpt = trainer.save()
    after = evaluate_estimator(create_model(args.model, checkpoint=str(ckpt), device=args.device,
                                            min_depth=args.min_depth, max_depth=args.max_depth), eval_samples, clip)
    return {"loss": loss, "steps": trainer.step, "train_seconds": elapsed, "train_items": len(trainer.samples),
            "before": before, "after": after,
            "first_loss": losses[0] if losses else None, "last10_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="patchmatchnet", choices=list(TRAINABLE))
    ap.add_argument("--losses", default="supervised,self-supervised")
    ap.add_argument("--budget-s", type=float, default=300.0, help="training wall time per loss")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--train-frames", type=int, default=60)
    ap.add_argument("--eval-frames", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-depth", type=float, default=0.25)
    ap.add_argument("--max-depth", type=float, default=20.0)
    ap.add_argument("--sequence-length", type=int, default=4, help="fusionnet: keyframes per subsequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = keyframe_samples(frames_from_synthetic(args.train_frames, args.width, args.height, seed=0),
                             args.width, args.height, 2)
    held = keyframe_samples(frames_from_synthetic(args.eval_frames, args.width, args.height, seed=1),
                            args.width, args.height, 2)
    print(f"{args.model} {args.width}x{args.height}: {len(train)} training keyframes (scene seed 0), "
          f"{len(held)} held-out keyframes (scene seed 1); {args.budget_s:.0f} s budget per loss, "
          f"batch {args.batch_size}, lr {args.lr:g}, {args.threads} threads", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses.split(","):
            samples = strip_ground_truth_samples(train) if loss == "self-supervised" else train
            r = run_one(loss, samples, held, args, Path(tmp) / loss)
            results.append(r)
            b, a = r["before"], r["after"]
            unit = f" of {args.batch_size}x{args.sequence_length} keyframes" if args.model == "dvmvs_fusionnet" else ""
            print(f"{loss:16s} {r['steps']} steps{unit} in {r['train_seconds']:.0f} s: held-out abs_rel "
                  f"{b['depth']['abs_rel']:.4f} -> {a['depth']['abs_rel']:.4f}, a1 {b['depth']['a1']:.4f} -> "
                  f"{a['depth']['a1']:.4f}, photometric {b['photometric']:.4f} -> {a['photometric']:.4f}; "
                  f"train loss {r['first_loss']:.4f} -> {r['last10_loss']:.4f} (mean of last 10)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def strip_ground_truth_samples(samples):
    """Copies of the samples whose frames carry no ground truth (self-supervised training)."""
    from mvs_depth_ros.train.data import TrainingSample
    out = []
    for s in samples:
        frames = strip_ground_truth(s.frames)
        out.append(TrainingSample(frames[0], frames[1:], s.segment))
    return out


if __name__ == "__main__":
    sys.exit(main())
