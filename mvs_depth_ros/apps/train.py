"""``mvs-depth train`` and ``mvs-depth finetune``.

train: supervised and/or self-supervised training of a learned MVS model on keyframe samples from a scene
folder, the synthetic renderer or a rosbag2::

    mvs-depth train --synthetic 200 --model itermvs --loss supervised --steps 2000 --out runs/itermvs
    mvs-depth train --scene DIR --model dvmvs_pairnet --checkpoint WEIGHTS_DIR --freeze-features-steps 500 ...
    mvs-depth train --out runs/itermvs ... --resume          # continue where the run stopped

fusionnet trains on subsequences of consecutive keyframes (``--sequence-length``), DeepVideoMVS' way: start
from pairnet weights (``--checkpoint PAIRNET_DIR`` loads the shared modules), train only the ConvLSTM cell
and the decoder first (``--lstm-decoder-steps``), then everything (``--freeze-features-steps`` in between)::

    mvs-depth train --scene DIR --model dvmvs_fusionnet --checkpoint PAIRNET_DIR --sequence-length 8 \
        --lstm-decoder-steps 500 --freeze-features-steps 1000 --steps 5000 --out runs/fusionnet

finetune: self-supervised (ground truth never read for training) fine-tuning of published weights on the
first frames of a bag or scene, reporting on held-out frames the photometric error before/after and,
when ground truth exists, depth metrics before/after. Both evaluations go through ``create_model`` (the
node's path), so the fine-tuned checkpoint is proven to drop into the node::

    mvs-depth finetune --scene shared/data/hololens-000 --model itermvs \
        --checkpoint shared/weights/itermvs/blendedmvs/model_000015.ckpt --train-frames 0:100 \
        --eval-frames 100:200 --eval-index shared/data/hololens-000/indices/keyframe+hololens-dataset+000+nmeas+2
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import torch

from ..eval.metrics import format_table
from ..train.adapters import TRAINABLE
from ..train.data import (frames_from_bag, frames_from_scene, frames_from_synthetic, index_samples,
                          keyframe_samples, parse_range, strip_ground_truth)
from ..train.loop import LOSSES, TrainConfig, Trainer, evaluate_estimator

log = logging.getLogger(__name__)


def _source_args(ap: argparse.ArgumentParser, synthetic: bool = True) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", help="DeepVideoMVS-layout scene folder (images/, poses.txt, K.txt[, depth/])")
    src.add_argument("--bag", help="rosbag2 written by `mvs-depth bag convert` or recorded (image, camera_info, /tf)")
    if synthetic:
        src.add_argument("--synthetic", type=int, metavar="N", help="render N synthetic frames (exact ground truth)")
    ap.add_argument("--synthetic-seed", type=int, default=0, help=argparse.SUPPRESS if not synthetic else
                    "scene seed of --synthetic")
    ap.add_argument("--world-frame", default="odom", help="bag: TF frame the poses are expressed in")


def _common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--n-measurement", type=int, default=2, help="measurement frames per keyframe")
    ap.add_argument("--min-depth", type=float, default=0.25)
    ap.add_argument("--max-depth", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--freeze-features-steps", type=int, default=0,
                    help="two-stage schedule: feature extractor frozen for the first N steps, then trained")
    ap.add_argument("--lstm-decoder-steps", type=int, default=0,
                    help="fusionnet: train only the ConvLSTM cell and the decoder for the first N steps")
    ap.add_argument("--sequence-length", type=int, default=4,
                    help="fusionnet: consecutive keyframes per training subsequence (DeepVideoMVS: 8)")
    ap.add_argument("--sequence-stride", type=int, default=1, help="fusionnet: a subsequence every N keyframes")
    ap.add_argument("--hidden-depth", choices=["predicted", "ground_truth"], default="predicted",
                    help="fusionnet: depth the ConvLSTM hidden state is warped with (predicted: as at inference)")
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--smoothness", type=float, default=1e-3, help="self-supervised: edge-aware smoothness weight")
    ap.add_argument("--feature-metric", type=float, default=0.0, help="self-supervised: feature-metric weight")
    ap.add_argument("--no-automask", action="store_true", help="self-supervised: disable auto-masking")
    ap.add_argument("--photometric-scales", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on the CPU)")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--tensorboard", action="store_true", help="also log TensorBoard scalars (if installed)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def _frames(args, start: int = 0, stop: Optional[int] = None) -> list:
    if getattr(args, "synthetic", None):
        frames = frames_from_synthetic(args.synthetic, args.width, args.height, seed=args.synthetic_seed)
        return frames[start:stop]
    if args.scene:
        return frames_from_scene(args.scene, start, stop)
    return frames_from_bag(args.bag, start, stop, world_frame=args.world_frame)


def _config(args, model: str, loss: str, checkpoint: Optional[str], out: str, bn_train: bool) -> TrainConfig:
    return TrainConfig(model=model, init_checkpoint=checkpoint, out_dir=out, loss=loss, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       lr_schedule=args.lr_schedule, freeze_features_steps=args.freeze_features_steps,
                       lstm_decoder_steps=args.lstm_decoder_steps, sequence_length=args.sequence_length,
                       sequence_stride=args.sequence_stride, hidden_depth=args.hidden_depth,
                       grad_clip=args.grad_clip, min_depth=args.min_depth, max_depth=args.max_depth,
                       smoothness=args.smoothness, feature_metric=args.feature_metric, automask=not args.no_automask,
                       photometric_scales=args.photometric_scales, bn_train=bn_train, seed=args.seed,
                       device=args.device, amp=args.amp, save_every=args.save_every,
                       progress=not args.no_progress, tensorboard=args.tensorboard)


# ------------------------------------------------------------------------------------------------ train
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="mvs-depth train", description="Train a learned multi-view depth model.")
    _source_args(ap)
    ap.add_argument("--frames", default=None, help="frame range START:STOP of the source (default all)")
    ap.add_argument("--model", default="itermvs", choices=TRAINABLE)
    ap.add_argument("--checkpoint", default=None, help="official weights to start from (default: random init)")
    ap.add_argument("--loss", default="supervised", choices=LOSSES)
    ap.add_argument("--no-bn-train", action="store_true", help="keep batch-norm running statistics fixed")
    ap.add_argument("--out", required=True, help="run folder: checkpoints, train_state.pt, train_log.csv")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its train_state.pt")
    _common_args(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start, stop = parse_range(args.frames)
    frames = _frames(args, start, stop)
    if args.loss == "self-supervised":
        frames = strip_ground_truth(frames)
    samples = keyframe_samples(frames, args.width, args.height, args.n_measurement)
    if not samples:
        print(f"mvs-depth train: no keyframe with {args.n_measurement} measurement frames in {len(frames)} frames",
              file=sys.stderr)
        return 2
    if args.loss in ("supervised", "both") and not all(s.has_gt for s in samples):
        print("mvs-depth train: --loss supervised needs ground-truth depth for every keyframe; this source has "
              "none (use --loss self-supervised)", file=sys.stderr)
        return 2
    cfg = _config(args, args.model, args.loss, args.checkpoint, args.out, not args.no_bn_train)
    print(f"training {args.model} ({args.loss}) on {len(samples)} keyframes from {len(frames)} frames at "
          f"{args.width}x{args.height}, {args.steps} steps, device {args.device}", flush=True)
    result = Trainer(cfg, samples).run(resume=args.resume)
    hist = result["history"]
    if hist:
        print(f"loss {hist[0]['loss']:.4f} (step {hist[0]['step']}) -> {hist[-1]['loss']:.4f} "
              f"(step {hist[-1]['step']})")
    print(f"checkpoint: {result['checkpoint']}  (load with create_model({args.model!r}, checkpoint=...))")
    print(f"log: {Path(args.out) / 'train_log.csv'}; resumable state: {result['state']}")
    return 0


# --------------------------------------------------------------------------------------------- finetune
def _print_eval(title: str, ev: dict) -> None:
    line = (f"{title}: {ev['frames']} keyframes, photometric {ev['photometric']:.4f}, "
            f"reprojection {ev['reprojection']:.4f}")
    if "depth" in ev:
        d = ev["depth"]
        line += f", abs_rel {d['abs_rel']:.4f}, a1 {d['a1']:.4f}, rmse {d['rmse']:.4f}"
    print(line, flush=True)


def finetune_main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="mvs-depth finetune",
                                 description="Self-supervised fine-tuning of published weights on a bag or scene.")
    _source_args(ap, synthetic=True)
    ap.add_argument("--model", default="itermvs", choices=TRAINABLE)
    ap.add_argument("--checkpoint", required=True, help="published weights to fine-tune")
    ap.add_argument("--train-frames", default="0:100", help="frames to fine-tune on (START:STOP)")
    ap.add_argument("--eval-frames", default="100:200", help="held-out frames to report on (START:STOP)")
    ap.add_argument("--eval-index", default=None,
                    help="scene only: official keyframe index file; its lines inside --eval-frames are the "
                         "held-out keyframes (default: keyframes chosen by the keyframe buffer)")
    ap.add_argument("--bn-train", action="store_true", help="update batch-norm statistics (default: frozen)")
    ap.add_argument("--out", required=True)
    _common_args(ap)
    ap.set_defaults(steps=100, lr=1e-5)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..models.registry import create_model
    t0, t1 = parse_range(args.train_frames)
    e0, e1 = parse_range(args.eval_frames)
    inf = 1 << 62
    if t0 < (inf if e1 is None else e1) and e0 < (inf if t1 is None else t1):
        print("mvs-depth finetune: --train-frames and --eval-frames must not overlap", file=sys.stderr)
        return 2
    train_frames = strip_ground_truth(_frames(args, t0, t1))          # never read GT for training
    train = keyframe_samples(train_frames, args.width, args.height, args.n_measurement)
    if args.eval_index:
        if not args.scene:
            print("mvs-depth finetune: --eval-index needs --scene", file=sys.stderr)
            return 2
        held = index_samples(args.scene, args.eval_index, args.width, args.height, e0, e1)
    else:
        held = keyframe_samples(_frames(args, e0, e1), args.width, args.height, args.n_measurement)
    if not train or not held:
        print(f"mvs-depth finetune: {len(train)} training and {len(held)} held-out keyframes; need >= 1 of each",
              file=sys.stderr)
        return 2
    clip = (args.min_depth, args.max_depth)
    build = dict(device=args.device, min_depth=args.min_depth, max_depth=args.max_depth)
    print(f"fine-tuning {args.model} from {args.checkpoint}: {len(train)} training keyframes (frames "
          f"{args.train_frames}, no ground truth), {len(held)} held-out keyframes (frames {args.eval_frames})",
          flush=True)
    before = evaluate_estimator(create_model(args.model, checkpoint=args.checkpoint, **build), held, clip,
                                progress=not args.no_progress)
    _print_eval("before", before)
    cfg = _config(args, args.model, "self-supervised", args.checkpoint, args.out, args.bn_train)
    result = Trainer(cfg, train).run()
    after = evaluate_estimator(create_model(args.model, checkpoint=result["checkpoint"], **build), held, clip,
                               progress=not args.no_progress)
    _print_eval("after", after)
    report = {"model": args.model, "checkpoint": args.checkpoint, "finetuned": result["checkpoint"],
              "train_keyframes": len(train), "eval_keyframes": len(held), "steps": args.steps,
              "train_seconds": sum(r["seconds"] for r in result["history"]),
              "before": before, "after": after}
    out = Path(args.out) / "finetune_report.json"
    out.write_text(json.dumps(report, indent=2))
    if "depth" in before:
        print(format_table({"before": before["depth"], "after": after["depth"]}))
    print(f"fine-tuned checkpoint: {result['checkpoint']}; report: {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
