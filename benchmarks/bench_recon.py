"""Dense reconstruction on the HoloLens sample (200 frames): accuracy / completeness / F-score of TSDF fusion
of the ground-truth depth and of estimated depth, with and without the multi-view consistency filter, and
TSDF integration time per frame.

    python benchmarks/bench_recon.py [--models planesweep,itermvs] [--threads 2] [--out out/bench_recon]

* keyframes: the official DeepVideoMVS index with 2 measurement frames (146 keyframes of the 200 frames),
  depth at 320x256 through ``VideoPipeline.process_keyframe`` (the same path as ``mvs-depth run
  --keyframes``), range 0.25-20 m;
* reference: the scene's surface samples, i.e. the ground-truth depth of all 200 frames (nearest-resized
  to 320x256, within the fusion's depth range) back-projected with the GT poses, on a 1 cm grid. Fusing
  the GT depth of the keyframes ("GT depth" rows) therefore measures what TSDF fusion itself costs (2 cm
  voxels, extraction, frames between keyframes), the estimator rows what the estimated depth adds;
* fusion: 2 cm voxels, 8 cm truncation, depth <= 5 m; both clouds on a 1 cm grid before scoring;
  precision / recall / F at 5 cm; accuracy = reconstruction -> reference distances, completeness =
  reference -> reconstruction (mean and median, metres);
* filters: "dense" = every depth pixel; "conf" = the estimator's own confidence threshold; "consistency" =
  the geometric check alone (1 px, 1 %, >= 2 of the 4 nearest keyframes by pose distance);
  "conf+consistency" = both (what ``mvs-depth reconstruct`` does by default);
* a second table scores the estimator rows against the TSDF of the GT depth of the same keyframes (the
  reference of earlier versions of this script and of ``mvs-depth reconstruct --gt``);
* integration time: median ms per ``TSDFVolume.integrate`` (GT depth + colour) at 640x480 and 320x256, CPU.

IterMVS runs when ``mvs_depth_ros.models.itermvs`` imports and the shared BlendedMVS checkpoint exists.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mvs_depth_ros.core.geometry import backproject, transform_points
from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
from mvs_depth_ros.data import scenes
from mvs_depth_ros.data.paths import shared_path
from mvs_depth_ros.eval.report import save_rgb
from mvs_depth_ros.models.registry import create_model
from mvs_depth_ros.recon import metrics as RM
from mvs_depth_ros.recon import render as RR
from mvs_depth_ros.recon.consistency import ConsistencyConfig, filter_depth_maps
from mvs_depth_ros.recon.tsdf import TSDFConfig, TSDFVolume

INDEX = "keyframe+hololens-dataset+000+nmeas+2"
W, H = 320, 256


def fuse(depths, views, cfg):
    vol = TSDFVolume(cfg)
    for d, (K, T, img) in zip(depths, views):
        vol.integrate(d, K, T, img)
    return vol


def surface_samples(scene, cfg, width, height, grid=0.01):
    """GT depth of every posed frame, back-projected to the world within ``cfg``'s depth range, on a ``grid``
    metre voxel grid: the scene's surface as the sensor saw it."""
    import open3d as o3d
    acc = o3d.geometry.PointCloud()
    for i in range(len(scene)):
        f = scene.frame(i)
        if f.depth_gt is None or not f.has_pose:
            continue
        f = f.resized(width, height)
        d = np.where((f.depth_gt >= cfg.min_depth) & (f.depth_gt <= cfg.max_depth), f.depth_gt, np.nan)
        pts = transform_points(f.T_world_cam, backproject(d.astype(np.float32), f.K)).reshape(-1, 3)
        pts = pts[np.all(np.isfinite(pts), axis=1)].astype(np.float64)
        acc += o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).voxel_down_sample(grid)
        if i % 20 == 19:
            acc = acc.voxel_down_sample(grid)
    return np.asarray(acc.voxel_down_sample(grid).points)


def integration_time(scene, cfg, width, height, n=40):
    vol = TSDFVolume(cfg)
    ms = []
    for i in range(n):
        f = scene.frame(i).resized(width, height)
        st = vol.integrate(f.depth_gt, f.K, f.T_world_cam, f.image)
        if st.integrated and i >= 3:
            ms.append(st.ms)
    return statistics.median(ms), vol.n_blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="planesweep,itermvs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--voxel", type=float, default=0.02)
    p.add_argument("--out", default="out/bench_recon")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--cache", action="store_true",
                   help="keep each model's depth maps in OUT/<model>_depth.npz and reuse them on the next run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = shared_path("data", "hololens-000")
    if root is None:
        print("shared data hololens-000 not found (MVS_DEPTH_SHARED or ../shared): nothing to do")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = scenes.load_scene(root)
    index = scenes.read_keyframe_index(root / "indices" / INDEX)
    cfg = TSDFConfig(voxel_size=args.voxel, trunc=4 * args.voxel, max_depth=5.0, max_blocks=200_000)
    ccfg = ConsistencyConfig(min_views=2, n_neighbors=4, max_reproj_px=1.0, max_rel_depth=0.01)
    print(f"HoloLens sample: {len(index)} keyframes at {W}x{H}; TSDF {args.voxel:g} m voxels, trunc "
          f"{cfg.trunc:g} m, depth <= {cfg.max_depth:g} m; F-score at 5 cm on a 1 cm grid; {args.threads} threads",
          flush=True)

    cache = {}

    def frame(name):
        i = scene.index_of(name)
        if i not in cache:
            cache[i] = scene.frame(i)
        return cache[i]

    refs = [frame(r).resized(W, H) for r, _ in index]
    views = [(f.K, f.T_world_cam, f.image) for f in refs]
    poses = [f.T_world_cam for f in refs]
    Ks = [v[0] for v in views]
    t0 = time.perf_counter()
    surface = surface_samples(scene, cfg, W, H)
    print(f"reference: {len(surface)} surface samples (1 cm grid) from the GT depth of {len(scene)} frames "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    gt_vol = fuse([f.depth_gt for f in refs], views, cfg)
    gt_pts = gt_vol.point_cloud()[0]
    print(f"GT fusion: {len(gt_pts)} points, {gt_vol.n_blocks} blocks ({time.perf_counter() - t0:.1f} s)", flush=True)
    gt_mesh = gt_vol.mesh()
    view = RR.default_view(np.asarray(gt_mesh.vertices), poses, 800, 600)
    save_rgb(out / "hololens_gt_mesh.png", RR.render_mesh_picture(gt_mesh, poses, 800, 600, view=view))
    gt_vol.save(out / "hololens_gt_cloud.ply", out / "hololens_gt_mesh.ply")

    rows, rows_vs_gt_tsdf = {}, {}

    def score(label, depths, confs, c):
        """Filter, fuse, score against the surface samples (and the GT TSDF); returns the volume."""
        t0, c0 = time.perf_counter(), time.process_time()
        filt = filter_depth_maps(depths, Ks, poses, confs, c)
        t_f, c_f = time.perf_counter() - t0, time.process_time() - c0
        vol = fuse(filt.depths, views, cfg)
        pts = vol.point_cloud()[0]
        m = RM.reconstruction_metrics(pts, surface, 0.05, voxel=0.01)
        m["kept_fraction"] = filt.kept_fraction
        rows[label] = m
        if not label.startswith("GT"):
            rows_vs_gt_tsdf[label] = RM.reconstruction_metrics(pts, gt_pts, 0.05, voxel=0.01)
        print(f"  {label}: kept {100 * filt.kept_fraction:.1f} % of depth pixels (filter {t_f:.1f} s wall, "
              f"{c_f:.1f} s CPU); F {m['fscore']:.3f} (P {m['precision']:.3f} R {m['recall']:.3f})", flush=True)
        return vol

    print("GT depth of the keyframes:", flush=True)
    gt_depths = [f.depth_gt for f in refs]
    score("GT depth", gt_depths, None, ConsistencyConfig(min_confidence=0.0, min_views=0))
    score("GT depth consistency", gt_depths, None, ccfg)

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        ckpt = None
        if name == "itermvs":
            ckpt = shared_path("weights", "itermvs", "blendedmvs", "model_000015.ckpt")
            try:
                import mvs_depth_ros.models.itermvs  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                print(f"itermvs: not available ({type(exc).__name__}: {exc}); skipped")
                continue
            if ckpt is None:
                print("itermvs: shared BlendedMVS checkpoint not found; skipped")
                continue
        cache_file = out / f"{name}_depth.npz"
        if args.cache and cache_file.is_file():
            z = np.load(cache_file)
            depths, confs, thr = list(z["depth"]), list(z["confidence"]), float(z["threshold"])
            print(f"{name}: {len(depths)} depth maps from {cache_file}", flush=True)
        else:
            est = create_model(name, checkpoint=str(ckpt) if ckpt else None, device="cpu", min_depth=0.25,
                               max_depth=20.0)
            pipe = VideoPipeline(est, PipelineConfig(width=W, height=H, n_measurement_frames=2))
            depths, confs, ms, thr = [], [], [], None
            t0 = time.perf_counter()
            for ref, meas in index:
                step = pipe.process_keyframe(frame(ref), [frame(m) for m in meas])
                depths.append(step.result.depth)
                confs.append(step.result.confidence)
                ms.append(step.compute_ms)
                if thr is None:
                    thr = float(step.result.info.get("confidence_threshold", 0.5))
            print(f"{est.describe()}: {len(depths)} keyframes, median {statistics.median(ms):.0f} ms/keyframe "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.cache:
                np.savez_compressed(cache_file, depth=np.stack(depths), confidence=np.stack(confs), threshold=thr)
        for label, c in ((f"{name} dense", ConsistencyConfig(min_confidence=0.0, min_views=0)),
                         (f"{name} conf>={thr:g}", ConsistencyConfig(min_confidence=thr, min_views=0)),
                         (f"{name} consistency", ConsistencyConfig(min_confidence=0.0, min_views=ccfg.min_views,
                                                                   n_neighbors=ccfg.n_neighbors)),
                         (f"{name} conf+consistency", ConsistencyConfig(min_confidence=thr, min_views=ccfg.min_views,
                                                                        n_neighbors=ccfg.n_neighbors))):
            vol = score(label, depths, confs, c)
            if label.endswith("conf+consistency"):
                mesh = vol.mesh()
                save_rgb(out / f"hololens_{name}_mesh.png", RR.render_mesh_picture(mesh, poses, 800, 600, view=view))
                vol.save(out / f"hololens_{name}_cloud.ply", out / f"hololens_{name}_mesh.ply")

    print(f"\nreconstruction vs the surface samples of all {len(scene)} frames' GT depth (distances in metres, "
          f"P/R/F at 5 cm, reference {len(surface)} points):")
    print(RM.format_metrics(rows))
    print("kept fraction of depth pixels: " + ", ".join(f"{k}: {v['kept_fraction']:.3f}" for k, v in rows.items()))
    if rows_vs_gt_tsdf:
        print("\nestimators vs the TSDF of the keyframes' GT depth (earlier reference; P/R/F at 5 cm):")
        print(RM.format_metrics(rows_vs_gt_tsdf))

    if not args.skip_timing:
        for w, h in ((640, 480), (320, 256)):
            med, blocks = integration_time(scene, cfg, w, h)
            print(f"TSDF integrate (CPU, {args.voxel:g} m voxels, depth+colour) at {w}x{h}: median {med:.1f} ms/frame "
                  f"({blocks} blocks after 40 frames)", flush=True)
    print(f"pictures and PLY files in {out}/ (hololens_gt_mesh.png, hololens_<model>_mesh.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
