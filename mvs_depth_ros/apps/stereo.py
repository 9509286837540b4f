"""``mvs-depth stereo``: stereo depth on a Middlebury pair, a synthetic stereo video or a stereo bag, with metrics.

The pairs run through the same :class:`~mvs_depth_ros.core.stereo.StereoPipeline` the ``stereo_node`` uses
(registry estimator, optional temporal filter, state reset on stamp gaps), so the numbers printed here are
the numbers the robot gets.

Output contract (other tools rely on it)::

    OUT/disparity/<name>.npy    float32 left disparity in pixels (x_l - x_r), NaN invalid
    OUT/depth/<name>.npy        float32 metres along the optical axis, NaN invalid
    OUT/confidence/<name>.npy   float32 in [0, 1]
    OUT/metrics.json            {"summary": {means of the per-pair metrics, tepe, timing, settings},
                                 "per_frame": [{"name", "stamp", "epe", "bad1", "bad2", "bad3", "d1",
                                                "coverage", "abs_rel", "ms", ["nonocc": {...}], ["filtered": {...}]}]}
    OUT/pictures/<name>.png     left | disparity | GT disparity | |error| (0-3 px) | confidence; + overview.png

Metric definitions: :mod:`mvs_depth_ros.eval.stereo_metrics` (EPE and bad-N in px on the pixels where both
GT and prediction exist, D1 = error > 3 px and > 5 %, coverage = fraction of GT pixels predicted, TEPE =
temporal EPE over consecutive pairs, abs_rel on depth).
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core.frame import StereoFrame
from ..core.stereo import StereoPipeline, StereoPipelineConfig, disparity_to_depth
from ..data.paths import shared_path
from ..eval import report
from ..eval.metrics import write_metrics_json
from ..eval.stereo_metrics import coverage_at_confidence, depth_abs_rel, disparity_metrics, temporal_epe
from ..models.registry import DEFAULT_STEREO_MODEL, available_stereo_models, create_stereo_model

log = logging.getLogger("mvs_depth_ros.stereo")

_KEYS = ("epe", "bad1", "bad2", "bad3", "d1", "coverage", "abs_rel")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvs-depth stereo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (default: a synthetic rectified stereo video with exact disparity)")
    src.add_argument("--middlebury", nargs="?", const="shared", default=None, metavar="DIR",
                     help="Middlebury 2014 scene folder (im0/im1.png, calib.txt, disp0GT.pfm); without DIR the "
                          "Motorcycle-Q pair of the shared data folder")
    src.add_argument("--bag", help="a stereo rosbag2 written by `mvs-depth stereo-bag convert`")
    src.add_argument("--frames", type=int, default=30, help="synthetic video length (bag: first N pairs, 0 = all)")
    src.add_argument("--width", type=int, default=320, help="synthetic image width")
    src.add_argument("--height", type=int, default=256, help="synthetic image height")
    src.add_argument("--baseline", type=float, default=0.1, help="synthetic baseline, metres")
    src.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    src.add_argument("--moving-object", action="store_true", help="synthetic: a box moving in the scene")
    mdl = p.add_argument_group("estimator")
    mdl.add_argument("--model", default=DEFAULT_STEREO_MODEL, choices=available_stereo_models())
    mdl.add_argument("--checkpoint", default=None, help="weights of a learned stereo model (none: SGBM)")
    mdl.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    mdl.add_argument("--num-disparities", type=int, default=0,
                     help="SGBM search range (multiple of 16; 0 = from calib.txt ndisp or the GT range)")
    mdl.add_argument("--block-size", type=int, default=5, help="SGBM block size (odd)")
    mdl.add_argument("--temporal", action="store_true", help="recursive pose-aware temporal filter")
    mdl.add_argument("--no-poses", action="store_true", help="temporal filter without the camera poses")
    mdl.add_argument("--max-gap", type=float, default=1.0, help="reset the temporal state after this gap, s")
    mdl.add_argument("--confidence-threshold", type=float, default=0.0,
                     help="also report 'filtered' metrics on pixels with at least this confidence (0: off)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="out/stereo", help="output folder")
    out.add_argument("--pictures", type=int, default=6, help="number of pairs to draw (0: none)")
    return p


# ------------------------------------------------------------------------------------------ sources
def load_pairs(args) -> Tuple[List[StereoFrame], Optional[np.ndarray], str, Optional[int]]:
    """``(pairs, non-occluded mask or None, description, ndisp hint or None)``."""
    if args.middlebury and args.bag:
        raise ValueError("choose one of --middlebury and --bag")
    if args.middlebury:
        from ..data.middlebury import load_middlebury, middlebury_num_disparities
        shared = args.middlebury == "shared"
        root = shared_path("data", "middlebury-2014-motorcycle-q") if shared else Path(args.middlebury)
        if root is None:
            raise FileNotFoundError("shared data/middlebury-2014-motorcycle-q not found (set MVS_DEPTH_SHARED or "
                                    "pass --middlebury DIR)")
        pair = load_middlebury(root)
        return [pair.frame], pair.nonocc, f"Middlebury {Path(root).resolve()}", middlebury_num_disparities(pair.calib)
    if args.bag:
        from ..data.stereo_bags import StereoReadCounters, read_stereo_frames
        c = StereoReadCounters()
        pairs = []
        for f in read_stereo_frames(args.bag, counters=c):
            pairs.append(f)
            if args.frames and len(pairs) >= args.frames:
                break
        if not pairs:
            raise ValueError(f"{args.bag}: no stereo pair could be read ({c})")
        return pairs, None, f"stereo bag {Path(args.bag).resolve()}", None
    from ..data.synthetic import render_stereo_sequence
    if args.frames < 1:
        raise ValueError("--frames must be >= 1 for the synthetic video")
    pairs = render_stereo_sequence(args.frames, args.width, args.height, baseline=args.baseline, seed=args.seed,
                                   moving_object=args.moving_object)
    return pairs, None, (f"synthetic stereo video ({args.frames} pairs {args.width}x{args.height}, baseline "
                         f"{args.baseline} m, seed {args.seed}, moving object {args.moving_object})"), None


def _auto_num_disparities(pairs: List[StereoFrame], hint: Optional[int]) -> int:
    if hint:
        return hint
    gts = [f.disparity_gt for f in pairs if f.disparity_gt is not None and np.isfinite(f.disparity_gt).any()]
    if not gts:
        return 64
    dmax = max(float(np.nanmax(g)) for g in gts)
    return int(16 * math.ceil((dmax + 4) / 16))


# ------------------------------------------------------------------------------------------ pictures
def stereo_panel(left: np.ndarray, disparity: np.ndarray, gt: Optional[np.ndarray], confidence: np.ndarray,
                 title: str = "", max_error: float = 3.0) -> np.ndarray:
    """One row: left | disparity | GT disparity | |error| (0..max_error px) | confidence (RGB uint8)."""
    ref = gt if gt is not None and np.isfinite(gt).any() else disparity
    fin = ref[np.isfinite(ref)]
    lo, hi = (float(np.percentile(fin, 1)), float(np.percentile(fin, 99))) if fin.size else (0.0, 1.0)
    tiles = [report.label(left, title or "left"),
             report.label(report.colorize(disparity, lo, hi, "turbo"), "disparity")]
    if gt is not None:
        tiles.append(report.label(report.colorize(gt, lo, hi, "turbo"), "ground truth"))
        tiles.append(report.label(report.colorize(np.abs(disparity - gt), 0.0, max_error, "inferno"),
                                   f"|error| (0-{max_error:g} px)"))
    tiles.append(report.label(report.colorize(confidence, 0.0, 1.0, "viridis"), "confidence"))
    return np.concatenate(tiles, axis=1)


# ------------------------------------------------------------------------------------------ main
def _mean(rows: List[Dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def _frame_metrics(f: StereoFrame, disp: np.ndarray, depth: np.ndarray, mask: Optional[np.ndarray]) -> Dict[str, float]:
    m = disparity_metrics(disp, f.disparity_gt, mask)
    gt_depth = disparity_to_depth(f.disparity_gt, f.K[0, 0], f.baseline, f.doffs)
    try:
        m["abs_rel"] = depth_abs_rel(depth, gt_depth, mask)
    except ValueError:
        m["abs_rel"] = float("nan")
    return m


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pairs, nonocc, source, ndisp_hint = load_pairs(args)
    except (ValueError, OSError, RuntimeError) as exc:   # MiddleburyError, BagError: they name their file
        print(f"mvs-depth stereo: {exc}", file=sys.stderr)
        return 1
    nd = args.num_disparities or _auto_num_disparities(pairs, ndisp_hint)
    options = {}
    if args.model == DEFAULT_STEREO_MODEL or not args.checkpoint:
        options = dict(num_disparities=nd, block_size=args.block_size)
    if args.temporal:
        options["temporal"] = True
        if args.no_poses:
            options["temporal_use_poses"] = False
    try:
        est = create_stereo_model(args.model, args.checkpoint, args.device, **options)
        pipeline = StereoPipeline(est, StereoPipelineConfig(max_gap_s=args.max_gap))
    except (ValueError, RuntimeError) as exc:
        print(f"mvs-depth stereo: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for sub in ("disparity", "depth", "confidence"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    print(f"{source}: {len(pairs)} pair(s) {pairs[0].left.shape[1]}x{pairs[0].left.shape[0]}; {est.describe()}")

    per_frame, disps, gts, panels, times = [], [], [], [], []
    names_seen: Dict[str, int] = {}
    for i, f in enumerate(pairs):
        t0 = time.perf_counter()
        res = pipeline.process(f)
        ms = 1000.0 * (time.perf_counter() - t0)
        times.append(ms)
        name = f.name or f"{i:05d}"
        if name in names_seen:       # a bag may repeat a pair name: keep every output file
            names_seen[name] += 1
            name = f"{name}_{names_seen[name]}"
        else:
            names_seen[name] = 0
        np.save(out / "disparity" / f"{name}.npy", res.disparity.astype(np.float32))
        np.save(out / "depth" / f"{name}.npy", res.depth.astype(np.float32))
        np.save(out / "confidence" / f"{name}.npy", res.confidence.astype(np.float32))
        row: Dict[str, object] = {"name": name, "stamp": int(f.stamp), "ms": ms,
                                  "pipeline_reset": bool(res.info.get("pipeline_reset", False))}
        if f.disparity_gt is not None:
            row.update(_frame_metrics(f, res.disparity, res.depth, None))
            if nonocc is not None:
                row["nonocc"] = _frame_metrics(f, res.disparity, res.depth, nonocc)
            if args.confidence_threshold > 0:
                row["filtered"] = coverage_at_confidence(res.disparity, res.confidence, f.disparity_gt,
                                                         args.confidence_threshold, nonocc)
            disps.append(res.disparity)
            gts.append(f.disparity_gt)
        per_frame.append(row)
        if args.pictures:
            panels.append((name, f.left, res.disparity, f.disparity_gt, res.confidence))

    summary: Dict[str, object] = {
        "source": source, "pairs": len(pairs), "model": args.model, "estimator": est.describe(),
        "num_disparities": nd, "temporal": bool(args.temporal), "use_poses": not args.no_poses,
        "width": int(pairs[0].left.shape[1]), "height": int(pairs[0].left.shape[0]),
        "baseline_m": float(pairs[0].baseline), "doffs_px": float(pairs[0].doffs),
        "ms_median": statistics.median(times), "ms_mean": float(np.mean(times)),
        "pipeline_resets": pipeline.counters.resets,
    }
    evaluated = [r for r in per_frame if "epe" in r]
    if evaluated:
        summary.update({k: _mean(evaluated, k) for k in _KEYS})
        summary["tepe"] = temporal_epe(disps, gts) if len(disps) > 1 else float("nan")
        if nonocc is not None:
            summary["nonocc"] = {k: _mean([r["nonocc"] for r in evaluated], k) for k in _KEYS}
        if args.confidence_threshold > 0:
            f_rows = [r["filtered"] for r in evaluated]
            summary["filtered"] = {"threshold": args.confidence_threshold, "epe": _mean(f_rows, "epe"),
                                   "bad2": _mean(f_rows, "bad2"), "coverage": _mean(f_rows, "coverage")}
    write_metrics_json(out / "metrics.json", summary, per_frame)

    if panels:
        pick = np.unique(np.linspace(0, len(panels) - 1, min(args.pictures, len(panels))).round().astype(int))
        drawn = []
        for i in pick:
            name, left, disp, gt, conf = panels[i]
            panel = stereo_panel(left, disp, gt, conf, title=name)
            report.save_rgb(out / "pictures" / f"{name}.png", panel)
            drawn.append(panel)
        report.save_rgb(out / "pictures" / "overview.png", report.contact_sheet(drawn))

    if evaluated:
        print(f"{'':<10}{'EPE px':>9}{'bad1 %':>9}{'bad2 %':>9}{'bad3 %':>9}{'D1 %':>9}{'cover %':>9}{'abs_rel':>9}"
              f"{'TEPE px':>9}")
        rows = [("all", summary)] + ([("non-occ", summary["nonocc"])] if nonocc is not None else [])
        for label, s in rows:
            tepe = summary["tepe"] if label == "all" else float("nan")
            print(f"{label:<10}{s['epe']:>9.3f}{s['bad1']:>9.2f}{s['bad2']:>9.2f}{s['bad3']:>9.2f}{s['d1']:>9.2f}"
                  f"{100 * s['coverage']:>9.1f}{s['abs_rel']:>9.4f}{tepe:>9.4f}")
        if args.confidence_threshold > 0:
            s = summary["filtered"]
            print(f"confidence >= {args.confidence_threshold:g}: EPE {s['epe']:.3f} px, bad2 {s['bad2']:.2f} %, "
                  f"coverage {100 * s['coverage']:.1f} %")
    else:
        print("no ground truth: nothing to evaluate (outputs written)")
    print(f"median {summary['ms_median']:.0f} ms/pair; wrote {out}/metrics.json, {out}/disparity|depth|confidence/*.npy"
          + (f", {out}/pictures/overview.png" if panels else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    sys.exit(main())
