"""``mvs-depth reconstruct``: a dense coloured cloud and mesh from posed depth maps (TSDF fusion).

Depth comes from one of:

* the video pipeline run here (``--scene DIR``, ``--hololens``, or a synthetic sequence by default, with
  ``--model`` / ``--checkpoint`` as in ``mvs-depth run``);
* a previous ``mvs-depth run`` output folder (``--run OUTDIR``): its ``depth/*.npy`` and ``confidence/*.npy``
  at the working resolution in ``metrics.json``, with the frames (images, poses) read from its scene
  (``--scene`` overrides the scene named in ``metrics.json``).

Steps: confidence threshold + multi-view geometric consistency filter (``--no-consistency`` to skip) ->
TSDF fusion (open3d ``VoxelBlockGrid``) -> ``cloud.ply``, ``mesh.ply``, ``mesh.png``. ``--gt`` also fuses
the ground-truth depth of the same frames (``gt_cloud.ply``, ``gt_mesh.ply``, ``gt_mesh.png``,
``comparison.png``) and scores the reconstruction against it (accuracy, completeness, precision /
recall / F-score at ``--threshold``) in ``OUT/metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..core.frame import Frame
from ..eval import metrics as M
from ..eval import report
from ..recon import metrics as RM
from ..recon import render as RR
from ..recon.consistency import ConsistencyConfig, filter_depth_maps
from ..recon.tsdf import TSDFConfig, TSDFVolume
from .run import add_fusion_arguments

log = logging.getLogger("mvs_depth_ros.reconstruct")


@dataclass
class DepthView:
    """One keyframe's depth with what fusion needs (all at the working resolution)."""

    name: str
    depth: np.ndarray
    confidence: Optional[np.ndarray]
    K: np.ndarray
    T_world_cam: np.ndarray
    image: np.ndarray
    depth_gt: Optional[np.ndarray] = None


def build_parser() -> argparse.ArgumentParser:
    from ..models.registry import DEFAULT_MODEL, available_models
    p = argparse.ArgumentParser(prog="mvs-depth reconstruct", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--run", help="output folder of a previous `mvs-depth run` (depth/*.npy, metrics.json)")
    src.add_argument("--scene", help="DeepVideoMVS-layout scene folder; default: a synthetic sequence")
    src.add_argument("--bag", help="a rosbag2 written by `mvs-depth bag convert`")
    src.add_argument("--hololens", action="store_true", help="the HoloLens sample from the shared data folder")
    src.add_argument("--frames", type=int, default=None, help="use only the first N frames of the scene")
    src.add_argument("--synthetic-frames", type=int, default=40, help="length of the synthetic sequence")
    src.add_argument("--seed", type=int, default=0, help="seed of the synthetic sequence")
    src.add_argument("--keyframes", help="DeepVideoMVS keyframe index file instead of online selection")
    mdl = p.add_argument_group("estimator (when the pipeline runs here)")
    mdl.add_argument("--model", default=DEFAULT_MODEL, choices=available_models())
    mdl.add_argument("--checkpoint", default=None)
    mdl.add_argument("--device", default="auto", help="torch device: auto | cpu | cuda[:N]")
    mdl.add_argument("--width", type=int, default=320)
    mdl.add_argument("--height", type=int, default=256)
    mdl.add_argument("--n-measurement-frames", type=int, default=2)
    mdl.add_argument("--min-depth", type=float, default=0.25)
    mdl.add_argument("--max-depth", type=float, default=20.0)
    mdl.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    # off by default: the consistency filter below checks each depth map against its neighbours', which fused
    # maps agree with by construction
    add_fusion_arguments(mdl, "off")
    flt = p.add_argument_group("filtering")
    flt.add_argument("--no-consistency", dest="consistency", action="store_false",
                     help="skip the multi-view consistency filter (confidence threshold still applies)")
    flt.add_argument("--min-confidence", type=float, default=None,
                     help="drop depth below this confidence (default: the estimator's own threshold)")
    flt.add_argument("--reproj-px", type=float, default=1.0, help="round-trip reprojection error limit, pixels")
    flt.add_argument("--rel-depth", type=float, default=0.01, help="relative depth difference limit")
    flt.add_argument("--min-views", type=int, default=2, help="consistent neighbouring views needed")
    flt.add_argument("--neighbors", type=int, default=4, help="neighbouring views checked per keyframe")
    tsdf = p.add_argument_group("TSDF")
    tsdf.add_argument("--voxel-size", type=float, default=0.02, help="metres")
    tsdf.add_argument("--trunc", type=float, default=None, help="truncation, metres (default 4 voxels)")
    tsdf.add_argument("--tsdf-max-depth", type=float, default=5.0, help="ignore depth beyond this (m)")
    tsdf.add_argument("--tsdf-device", default="cpu", help="open3d device: cpu | cuda[:N] | auto")
    tsdf.add_argument("--max-blocks", type=int, default=100_000, help="voxel-block memory budget")
    ev = p.add_argument_group("ground truth and output")
    ev.add_argument("--gt", action="store_true", help="also fuse the ground-truth depth and score against it")
    ev.add_argument("--compare-unfiltered", action="store_true",
                    help="with --gt: also score the fusion without the consistency filter")
    ev.add_argument("--threshold", type=float, default=0.05, help="distance threshold of precision/recall (m)")
    ev.add_argument("--eval-voxel", type=float, default=None,
                    help="down-sample both clouds to this grid before scoring (default: half the voxel size)")
    ev.add_argument("--out", default=None, help="output folder (default: RUN/reconstruction or out/reconstruct)")
    ev.add_argument("--picture-size", default="800x600", help="WxH of the rendered pictures")
    return p


# ---------------------------------------------------------------------------------------------- sources
_SCENE_RE = re.compile(r"^scene (?P<path>.+) \((?P<n>\d+) frames\)$")
_SYN_RE = re.compile(r"^synthetic sequence \((?P<n>\d+) frames, seed (?P<seed>-?\d+)\)$")
_BAG_RE = re.compile(r"^bag (?P<path>.+) \((?P<n>\d+) frames\)$")


def _source_args(args, **overrides) -> argparse.Namespace:
    """The namespace ``mvs-depth run``'s source functions expect: its defaults, then ours, then overrides."""
    from .run import build_parser as run_parser
    ns = run_parser().parse_args([])
    for k in ("scene", "bag", "hololens", "frames", "synthetic_frames", "seed", "keyframes", "width", "height"):
        if hasattr(args, k):
            setattr(ns, k, getattr(args, k))
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def views_from_run(run_dir: Path, args) -> tuple:
    """(views, description, settings) from an ``mvs-depth run`` output folder."""
    from ..apps.run import open_source
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise SystemExit(f"--run {run_dir}: no metrics.json (not an `mvs-depth run` output folder)")
    summary = json.loads(mpath.read_text())["summary"]
    settings = summary.get("settings", {})
    width, height = int(settings["width"]), int(settings["height"])
    source = str(summary.get("source", ""))
    ns = _source_args(args, keyframes=None, frames=None, width=width, height=height)
    if not (args.scene or args.hololens or args.bag):
        m, s, b = _SCENE_RE.match(source), _SYN_RE.match(source), _BAG_RE.match(source)
        if m:
            ns.scene = m.group("path")
        elif b:
            ns.bag = b.group("path")
        elif s:
            ns.synthetic_frames, ns.seed = int(s.group("n")), int(s.group("seed"))
        else:
            raise SystemExit(f"--run {run_dir}: cannot tell the scene from metrics.json source {source!r}; "
                             f"pass --scene")
    frames, description, _ = open_source(ns)
    stems = sorted(p.stem for p in (run_dir / "depth").glob("*.npy"))
    if not stems:
        raise SystemExit(f"--run {run_dir}: no depth/*.npy")
    views = []
    for stem in stems:
        f = frames.by_name(stem).resized(width, height)
        depth = np.load(run_dir / "depth" / f"{stem}.npy").astype(np.float32)
        cpath = run_dir / "confidence" / f"{stem}.npy"
        conf = np.load(cpath).astype(np.float32) if cpath.is_file() else None
        if depth.shape != (height, width):
            raise SystemExit(f"{run_dir}/depth/{stem}.npy is {depth.shape[::-1]}, metrics.json says {width}x{height}")
        if not f.has_pose:
            log.warning("%s has no valid pose: skipped", stem)
            continue
        views.append(DepthView(stem, depth, conf, f.K, f.T_world_cam, f.image, f.depth_gt))
    settings = dict(settings, confidence_threshold=settings.get("confidence_threshold"), model=summary.get("model"))
    return views, f"{description}; depth from {run_dir}", settings


def views_from_pipeline(args) -> tuple:
    """Run the video pipeline (as ``mvs-depth run`` does) and keep every keyframe's depth."""
    from ..models.registry import create_model
    from .run import make_pipeline, open_source, run_steps
    source, description, index = open_source(_source_args(args))
    est = create_model(args.model, checkpoint=args.checkpoint, device=args.device, min_depth=args.min_depth,
                       max_depth=args.max_depth)
    pipe, fusion = make_pipeline(est, args)
    print(f"mvs-depth reconstruct: {description}; estimator {est.describe()}; temporal fusion {fusion.mode}",
          flush=True)
    views, threshold, ms = [], None, []
    for step in run_steps(pipe, source, index, fusion):
        res = step.result
        if res is None or not step.frame.has_pose:
            continue
        if threshold is None:
            threshold = float(res.info.get("confidence_threshold", 0.5))
        ms.append(step.compute_ms)
        f = step.frame
        views.append(DepthView(Path(f.name).stem, res.depth, res.confidence, res.K, f.T_world_cam, f.image,
                               f.depth_gt))
    settings = {"width": args.width, "height": args.height, "min_depth": args.min_depth,
                "max_depth": args.max_depth, "confidence_threshold": threshold, "model": est.name,
                "ms_per_keyframe_median": statistics.median(ms) if ms else None}
    return views, description, settings


# ---------------------------------------------------------------------------------------------- steps
def fuse_views(views: List[DepthView], depths: List[np.ndarray], config: TSDFConfig) -> tuple:
    vol = TSDFVolume(config)
    ms, skipped = [], 0
    for v, d in zip(views, depths):
        st = vol.integrate(d, v.K, v.T_world_cam, v.image)
        if st.integrated:
            ms.append(st.ms)
        else:
            skipped += 1
            log.info("%s not integrated: %s", v.name, st.reason)
    return vol, {"frames": len(ms), "skipped": skipped, "blocks": vol.n_blocks,
                 "memory_mb": vol.memory_bytes / 1e6, "budget_reached": vol.budget_reached,
                 "ms_per_frame_median": statistics.median(ms) if ms else None}


def save_outputs(vol: TSDFVolume, out: Path, prefix: str, poses, size, view=None) -> tuple:
    counts = vol.save(out / f"{prefix}cloud.ply", out / f"{prefix}mesh.ply")
    mesh = vol.mesh()
    pts = np.asarray(mesh.vertices)
    if view is None and len(pts):
        view = RR.default_view(pts, poses, *size)
    img = RR.render_mesh_picture(mesh, poses, *size, view=view)
    report.save_rgb(out / f"{prefix}mesh.png", img)
    return counts, view, img


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        pw, ph = (int(x) for x in args.picture_size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--picture-size must be WxH, got {args.picture_size!r}") from None
    run_dir = Path(args.run) if args.run else None
    out = Path(args.out) if args.out else (run_dir / "reconstruction" if run_dir else Path("out/reconstruct"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    views, description, settings = views_from_run(run_dir, args) if run_dir else views_from_pipeline(args)
    if not views:
        print("mvs-depth reconstruct: no posed depth maps to fuse", file=sys.stderr)
        return 1
    min_conf = args.min_confidence if args.min_confidence is not None else (settings.get("confidence_threshold") or 0.0)
    ccfg = ConsistencyConfig(min_confidence=float(min_conf), max_reproj_px=args.reproj_px,
                             max_rel_depth=args.rel_depth, min_views=args.min_views if args.consistency else 0,
                             n_neighbors=args.neighbors)
    Ks, poses = [v.K for v in views], [v.T_world_cam for v in views]
    t_f = time.perf_counter()
    filt = filter_depth_maps([v.depth for v in views], Ks, poses, [v.confidence for v in views], ccfg)
    filter_s = time.perf_counter() - t_f
    cons = dict(filt.summary(), seconds=filter_s, **asdict(ccfg), enabled=args.consistency)
    print(f"{len(views)} keyframes; confidence >= {min_conf:g}"
          + (f" + consistency ({ccfg.min_views} of {ccfg.n_neighbors} views, {ccfg.max_reproj_px:g} px, "
             f"{ccfg.max_rel_depth:g} rel)" if args.consistency else "")
          + f": kept {100 * filt.kept_fraction:.1f} % of the depth pixels ({filter_s:.1f} s)", flush=True)

    tcfg = TSDFConfig(voxel_size=args.voxel_size, trunc=args.trunc or 4 * args.voxel_size, min_depth=0.0,
                      max_depth=args.tsdf_max_depth, max_blocks=args.max_blocks, device=args.tsdf_device)
    vol, fusion = fuse_views(views, filt.depths, tcfg)
    counts, view, img = save_outputs(vol, out, "", poses, (pw, ph))
    fusion.update(points=counts.get("cloud", 0), triangles=counts.get("mesh", 0))
    print(f"TSDF: {fusion['frames']} frames, {fusion['blocks']} blocks ({fusion['memory_mb']:.0f} MB), "
          f"{fusion['ms_per_frame_median'] or float('nan'):.1f} ms/frame median; {fusion['points']} points, "
          f"{fusion['triangles']} triangles", flush=True)
    if vol.budget_reached:
        print(f"WARNING: the voxel-block budget ({args.max_blocks}) was reached: the map is incomplete",
              file=sys.stderr)

    summary = {"source": description, "model": settings.get("model"), "keyframes": len(views),
               "settings": {"tsdf": asdict(tcfg), "threshold": args.threshold, "width": settings.get("width"),
                            "height": settings.get("height"), "run": str(run_dir) if run_dir else None},
               "consistency": cons, "fusion": fusion, "outputs": {"cloud": "cloud.ply", "mesh": "mesh.ply",
                                                                "picture": "mesh.png"}}
    per_frame = [{"name": v.name, "valid": filt.valid_in[i], "kept": filt.kept[i]} for i, v in enumerate(views)]
    if args.gt:
        have = [v.depth_gt is not None for v in views]
        if not any(have):
            print("--gt: the frames have no ground-truth depth; no comparison", file=sys.stderr)
        else:
            gviews = [v for v, h in zip(views, have) if h]
            gvol, gfusion = fuse_views(gviews, [v.depth_gt for v in gviews], tcfg)
            # one viewpoint for both pictures, framed on the (complete) ground truth
            gpts = np.asarray(gvol.mesh().vertices)
            view = RR.default_view(gpts, poses, pw, ph) if len(gpts) else view
            gcounts, _, gimg = save_outputs(gvol, out, "gt_", poses, (pw, ph), view=view)
            img = RR.render_mesh_picture(vol.mesh(), poses, pw, ph, view=view)
            report.save_rgb(out / "mesh.png", img)
            report.save_rgb(out / "comparison.png", np.concatenate([RR.caption(img, "reconstruction"),
                                                                    RR.caption(gimg, "ground truth")], 1))
            ev = args.eval_voxel if args.eval_voxel is not None else args.voxel_size / 2
            gt_pts = gvol.point_cloud()[0]
            rows = {"reconstruction": RM.reconstruction_metrics(vol.point_cloud()[0], gt_pts, args.threshold, ev)}
            if args.compare_unfiltered and args.consistency:
                ucfg = ConsistencyConfig(min_confidence=ccfg.min_confidence, min_views=0, n_neighbors=ccfg.n_neighbors)
                unf = filter_depth_maps([v.depth for v in views], Ks, poses, [v.confidence for v in views], ucfg)
                uvol, _ = fuse_views(views, unf.depths, tcfg)
                rows["without consistency"] = RM.reconstruction_metrics(uvol.point_cloud()[0], gt_pts,
                                                                        args.threshold, ev)
            summary["reconstruction"] = rows["reconstruction"]
            if "without consistency" in rows:
                summary["reconstruction_unfiltered"] = rows["without consistency"]
            summary["gt_fusion"] = dict(gfusion, points=gcounts.get("cloud", 0), triangles=gcounts.get("mesh", 0))
            summary["outputs"].update(gt_cloud="gt_cloud.ply", gt_mesh="gt_mesh.ply", gt_picture="gt_mesh.png",
                                      comparison="comparison.png")
            print(f"\nagainst the ground-truth fusion ({len(gviews)} frames), F-score at {args.threshold:g} m, "
                  f"distances in m (clouds on a {ev:g} m grid):")
            print(RM.format_metrics(rows))
    summary["wall_s"] = time.perf_counter() - t0
    M.write_metrics_json(out / "metrics.json", summary, per_frame)
    print(f"wrote {out}/cloud.ply, {out}/mesh.ply, {out}/mesh.png"
          + (f", {out}/gt_*.ply, {out}/comparison.png" if "reconstruction" in summary else "")
          + f", {out}/metrics.json")
    return 0
