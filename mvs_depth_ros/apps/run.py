"""``mvs-depth run``: depth for a posed sequence through the video pipeline, with metrics and pictures.

Output contract (other tools rely on it)::

    OUT/depth/<reference stem>.npy       float32 metres at the working resolution, NaN invalid (dense)
    OUT/confidence/<reference stem>.npy  float32 in [0, 1]
    OUT/metrics.json                     {"summary": {...dense/filtered aggregates, settings, timing},
                                          "per_frame": [{"name", "measurements", "dense", "filtered", "ms"}]}
    OUT/keyframes.txt                    DeepVideoMVS index format: "<reference> <measurement> ..." per line
    OUT/pictures/*.png                   input | prediction | GT | error | confidence panels + overview.png
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.frame import Frame
from ..core.fusion import FusionConfig, KeyframeDepth, fuse_offline
from ..core.keyframes import KeyframeConfig
from ..core.pipeline import PipelineConfig, StepResult, VideoPipeline
from ..data.paths import shared_path
from ..eval import metrics as M
from ..eval import report
from ..models.base import recommended_threshold
from ..models.registry import DEFAULT_MODEL, available_models, create_model, parse_model_options

log = logging.getLogger("mvs_depth_ros.run")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvs-depth run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--scene", help="DeepVideoMVS-layout scene folder (images/, depth/, poses.txt, K.txt) or a "
                     "TUM/DeMoN pair folder; default: a synthetic sequence rendered on the fly")
    src.add_argument("--bag", help="a rosbag2 written by `mvs-depth bag convert` (images, camera_info, /tf, GT depth): "
                     "exactly the input the ROS nodes see when it is played")
    src.add_argument("--hololens", action="store_true",
                     help="use the HoloLens sample from the shared data folder (MVS_DEPTH_SHARED or ../shared)")
    src.add_argument("--frames", type=int, default=None, help="use only the first N frames of the scene")
    src.add_argument("--synthetic-frames", type=int, default=60, help="length of the synthetic sequence")
    src.add_argument("--seed", type=int, default=0, help="seed of the synthetic sequence")
    src.add_argument("--keyframes", help="use this DeepVideoMVS keyframe index file instead of online selection")
    mdl = p.add_argument_group("estimator")
    mdl.add_argument("--model", default=DEFAULT_MODEL, choices=available_models())
    mdl.add_argument("--checkpoint", default=None, help="weights file/folder of a learned model")
    mdl.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    mdl.add_argument("--width", type=int, default=320)
    mdl.add_argument("--height", type=int, default=256)
    mdl.add_argument("--n-measurement-frames", type=int, default=2)
    mdl.add_argument("--min-depth", type=float, default=0.25)
    mdl.add_argument("--max-depth", type=float, default=20.0)
    mdl.add_argument("--confidence-threshold", type=float, default=None,
                     help="threshold for the 'filtered' numbers (default: the estimator's own)")
    mdl.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                     help="estimator-specific option, repeatable (e.g. n_planes=32, seed=1); values parsed as YAML")
    add_fusion_arguments(mdl, "causal")
    mdl.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="out/run", help="output folder")
    out.add_argument("--pictures", type=int, default=12, help="number of keyframes to draw (0: none)")
    out.add_argument("--min-gt", type=float, default=0.5, help="ground truth below this is not evaluated (m)")
    return p


# ------------------------------------------------------------------------------------------ sources
class _FrameSource:
    """Frames by index/name with a small cache, so a frame used by several keyframes is read once and
    keeps its identity (estimators cache features by ``Frame.uid``)."""

    def __init__(self, count: int, loader: Callable[[int], Frame], names: Sequence[str], cache: int = 48):
        self.count, self._loader, self.names = count, loader, list(names)
        self._cache: "OrderedDict[int, Frame]" = OrderedDict()
        self._cache_size = cache

    def get(self, i: int) -> Frame:
        f = self._cache.get(i)
        if f is None:
            f = self._loader(i)
            self._cache[i] = f
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return f

    def by_name(self, name: str) -> Frame:
        stem = Path(name).stem
        try:
            return self.get(self.names.index(stem))
        except ValueError:
            raise SystemExit(f"keyframe index names {name!r}, which is not in the scene") from None


def open_source(args) -> Tuple[_FrameSource, str, Optional[List[Tuple[str, List[str]]]]]:
    """(frames, description, keyframe lines or None)."""
    from ..data import scenes

    index = scenes.read_keyframe_index(args.keyframes) if args.keyframes else None
    scene_dir = args.scene
    if args.hololens:
        p = shared_path("data", "hololens-000")
        if p is None:
            raise SystemExit("--hololens: shared data not found (set MVS_DEPTH_SHARED or place ../shared beside the repo)")
        scene_dir = str(p)
    if args.bag:
        from ..data.bags import read_frames, recorded_topics

        frames = list(read_frames(args.bag, topics=recorded_topics(args.bag)))
        if args.frames is not None:
            frames = frames[:args.frames]
        return (_FrameSource(len(frames), lambda i: frames[i], [Path(f.name).stem for f in frames]),
                f"bag {args.bag} ({len(frames)} frames)", index)
    if scene_dir:
        root = Path(scene_dir)
        if (root / "cam.txt").is_file():  # a TUM/DeMoN two-view pair
            pair = scenes.load_tum_pair(root)
            names = [Path(f.name).name for f in pair]
            src = _FrameSource(len(pair), lambda i: pair[i], names)
            return src, f"TUM pair {root}", index or [(names[0], [names[1]])]
        scene = scenes.load_scene(root)
        n = len(scene) if args.frames is None else min(args.frames, len(scene))
        return _FrameSource(n, scene.frame, scene.names), f"scene {root} ({n} frames)", index
    from ..data.synthetic import render_sequence

    seq = render_sequence(n_frames=args.synthetic_frames, width=args.width, height=args.height, seed=args.seed)
    frames = list(seq.frames)
    return (_FrameSource(len(frames), lambda i: frames[i], [f.name for f in frames]),
            f"synthetic sequence ({len(frames)} frames, seed {args.seed})", index)


def iterate_steps(pipeline: VideoPipeline, source: _FrameSource,
                  index: Optional[List[Tuple[str, List[str]]]]) -> Iterator[StepResult]:
    if index is not None:
        for ref, meas in index:
            yield pipeline.process_keyframe(source.by_name(ref), [source.by_name(m) for m in meas])
    else:
        for i in range(source.count):
            yield pipeline.process(source.get(i))


def add_fusion_arguments(group, default: str) -> None:
    group.add_argument("--temporal-fusion", default=default, choices=("off", "causal", "offline"),
                       help="fuse each keyframe's depth with its neighbours' re-projected into it: causal = earlier "
                       "keyframes only (what the ROS node does), offline = earlier and later ones (recorded data)")
    group.add_argument("--fusion-window", type=int, default=FusionConfig.window,
                       help="keyframes fused into each one (offline: on each side)")
    group.add_argument("--fusion-prior", default="auto", choices=("auto", "on", "off"),
                       help="causal fusion: hand the last fused keyframe, re-projected, to the estimator as a depth "
                       "prior (auto = where the estimator's fusion defaults say so: the plane sweep)")


def make_pipeline(estimator, args) -> Tuple[VideoPipeline, FusionConfig]:
    """The video pipeline of ``args`` (size, measurement frames, temporal fusion) and its fusion settings.
    Offline fusion needs the whole sequence: the pipeline then predicts without it (see :func:`run_steps`)."""
    prior = {"on": True, "off": False}.get(getattr(args, "fusion_prior", "auto"))
    fusion = FusionConfig(mode=args.temporal_fusion, window=args.fusion_window,
                          prior=prior).resolved(estimator.fusion_defaults)
    pipeline = VideoPipeline(estimator, PipelineConfig(
        width=args.width, height=args.height, n_measurement_frames=args.n_measurement_frames,
        keyframes=KeyframeConfig(), fusion=replace(fusion, mode="off") if fusion.mode == "offline" else fusion))
    return pipeline, fusion


def run_steps(pipeline: VideoPipeline, source: "_FrameSource", index, fusion: FusionConfig,
              progress: bool = False) -> Iterator[StepResult]:
    """:func:`iterate_steps`, with a progress bar, fused offline at the end when ``fusion.mode == "offline"``."""
    steps = iterate_steps(pipeline, source, index)
    if progress:
        from tqdm import tqdm
        total = len(index) if index is not None else source.count
        steps = tqdm(steps, total=total, unit="frame" if index is None else "kf", disable=None, file=sys.stderr)
    return fused_offline(steps, fusion) if fusion.mode == "offline" else steps


def fused_offline(steps: Iterator[StepResult], config: FusionConfig) -> Iterator[StepResult]:
    """Non-causal temporal fusion: all steps are collected, then every keyframe's depth is fused with the
    keyframes before and after it within its continuous track (a tracking-loss reset starts a new one)."""
    steps = list(steps)
    tracks: List[List[StepResult]] = [[]]
    for step in steps:
        if step.reset and tracks[-1]:
            tracks.append([])
        if step.result is not None:
            tracks[-1].append(step)
    for track in tracks:
        fused = fuse_offline([KeyframeDepth(s.result.depth, s.result.confidence, s.result.K, s.frame.T_world_cam)
                              for s in track], config)
        for s, out in zip(track, fused):
            r = s.result
            s.result = replace(r, depth=out.depth, confidence=out.confidence, fused=out.n_keyframes > 0,
                               fusion_keyframes=out.n_keyframes,
                               info=dict(r.info, unfused_depth=r.depth, unfused_confidence=r.confidence))
    yield from steps


def parse_options(items: Sequence[str]) -> dict:
    """``["n_planes=32", "seed=1"]`` -> ``{"n_planes": 32, "seed": 1}`` (values parsed as YAML scalars)."""
    try:
        return parse_model_options(list(items))
    except ValueError as exc:
        raise SystemExit(f"--model-option expects KEY=VALUE: {exc}") from exc


def _peak_rss_mb() -> Optional[float]:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes
    except ImportError:  # pragma: no cover - not on Windows
        return None


# --------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    for sub in ("depth", "confidence", "pictures"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    source, description, index = open_source(args)
    estimator = create_model(args.model, checkpoint=args.checkpoint, device=args.device,
                             min_depth=args.min_depth, max_depth=args.max_depth, **parse_options(args.model_option))
    pipeline, fusion = make_pipeline(estimator, args)
    print(f"mvs-depth run: {description}; estimator {estimator.describe()}; "
          f"{args.width}x{args.height}, {args.n_measurement_frames} measurement frame(s), "
          f"{'keyframes from ' + args.keyframes if index is not None else 'online keyframe selection'}, "
          f"temporal fusion {args.temporal_fusion}", flush=True)
    steps = run_steps(pipeline, source, index, fusion, progress=True)

    per_frame, dense_rows, filt_rows, timings, panels, kf_lines = [], [], [], [], [], []
    threshold = args.confidence_threshold
    t_start = time.perf_counter()
    for step in steps:
        res = step.result
        if res is None:
            continue
        if threshold is None:
            threshold = recommended_threshold(res)
        ref = step.frame
        stem = Path(ref.name).stem
        np.save(out / "depth" / f"{stem}.npy", res.depth.astype(np.float32))
        np.save(out / "confidence" / f"{stem}.npy", res.confidence.astype(np.float32))
        meas_names = [Path(m.name).stem for m in step.measurements]
        kf_lines.append(" ".join(f"{n}.png" for n in [stem, *meas_names]))
        timings.append(step.compute_ms)
        row = {"name": stem, "measurements": meas_names, "ms": step.compute_ms, "fusion_ms": step.fusion_ms,
               "fusion_keyframes": res.fusion_keyframes}
        if ref.depth_gt is not None:
            clip = (estimator.min_depth, estimator.max_depth)
            dense = M.depth_metrics(res.depth, ref.depth_gt, min_gt=args.min_gt, clip=clip)
            filt = M.depth_metrics(res.filtered(threshold), ref.depth_gt, min_gt=args.min_gt, clip=clip)
            row.update(dense=dense, filtered=filt)
            dense_rows.append(dense)
            filt_rows.append(filt)
        per_frame.append(row)
        if args.pictures > 0:
            panels.append((stem, ref.image, res.depth, ref.depth_gt, res.confidence))
    wall = time.perf_counter() - t_start

    (out / "keyframes.txt").write_text("".join(line + "\n" for line in kf_lines))
    warm = timings[2:] if len(timings) > 4 else timings
    summary = {
        "model": estimator.name,
        "device": str(estimator.device),
        "source": description,
        "settings": {"width": args.width, "height": args.height, "n_measurement_frames": args.n_measurement_frames,
                     "temporal_fusion": args.temporal_fusion, "fusion_window": args.fusion_window,
                     "min_depth": args.min_depth, "max_depth": args.max_depth, "min_gt": args.min_gt,
                     "confidence_threshold": threshold, "keyframes": args.keyframes,
                     "checkpoint": args.checkpoint},
        "keyframes": len(per_frame),
        "pipeline": vars(pipeline.counters),
        "timing": {"ms_per_keyframe_median": statistics.median(warm) if warm else None,
                   "ms_per_keyframe_mean": float(np.mean(warm)) if warm else None, "wall_s": wall,
                   "peak_rss_mb": _peak_rss_mb()},
    }
    if dense_rows:
        summary["dense"] = M.aggregate(dense_rows)
        summary["filtered"] = M.aggregate(filt_rows)
    M.write_metrics_json(out / "metrics.json", summary, per_frame)

    if panels:
        pick = np.unique(np.linspace(0, len(panels) - 1, min(args.pictures, len(panels))).round().astype(int))
        drawn = []
        for i in pick:
            stem, img, depth, gt, conf = panels[i]
            panel = report.depth_panel(img, depth, gt, conf, (args.min_depth, args.max_depth), title=stem)
            report.save_rgb(out / "pictures" / f"{stem}.png", panel)
            drawn.append(panel)
        report.save_rgb(out / "pictures" / "overview.png", report.contact_sheet(drawn))

    print(f"\n{len(per_frame)} keyframes from {pipeline.counters.frames} frames; "
          f"median {summary['timing']['ms_per_keyframe_median'] or float('nan'):.0f} ms/keyframe "
          f"({estimator.device})")
    if dense_rows:
        print(M.format_table({"dense": summary["dense"],
                              f"conf>={threshold:g}": summary["filtered"]}))
    else:
        print("no ground truth: metrics not computed")
    print(f"wrote {out}/metrics.json, {out}/depth/*.npy, {out}/confidence/*.npy, {out}/keyframes.txt"
          + (f", {out}/pictures/overview.png" if panels else ""))
    return 0


def list_models(argv: Optional[List[str]] = None) -> int:
    for name in available_models():
        print(name)
    return 0
