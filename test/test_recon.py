"""Dense reconstruction: consistency filter, TSDF fusion, reconstruction metrics, renderer, `mvs-depth reconstruct`.

Everything runs on the synthetic room (exact depth and poses), so the expected values are known.
"""
import json

import numpy as np
import pytest

o3d = pytest.importorskip("open3d", reason="open3d is needed for reconstruction (pip install open3d)")

from mvs_depth_ros.core.geometry import backproject, transform_points  # noqa: E402
from mvs_depth_ros.data.synthetic import render_sequence  # noqa: E402
from mvs_depth_ros.recon import metrics as RM  # noqa: E402
from mvs_depth_ros.recon import render as RR  # noqa: E402
from mvs_depth_ros.recon.consistency import (ConsistencyConfig, consistent_view_count,  # noqa: E402
                                             filter_depth_maps, select_neighbors)
from mvs_depth_ros.recon.tsdf import TSDFConfig, TSDFVolume  # noqa: E402


@pytest.fixture(scope="module")
def seq():
    # every other frame of a short video: ~7 cm between views, 128x96
    s = render_sequence(n_frames=16, width=128, height=96, seed=3)
    return s.frames[::2]


def gt_points(frames):
    pts = np.concatenate([transform_points(f.T_world_cam, backproject(f.depth_gt, f.K)).reshape(-1, 3) for f in frames])
    return pts[np.all(np.isfinite(pts), axis=1)]


# ------------------------------------------------------------------------------------- consistency
def test_consistency_removes_corrupted_pixels_and_keeps_good_ones(seq):
    rng = np.random.default_rng(0)
    depths, bad = [], []
    for f in seq:
        d = f.depth_gt.copy()
        m = rng.random(d.shape) < 0.05
        d[m] *= rng.uniform(1.15, 1.5, int(m.sum())).astype(np.float32)  # 15-50 % too far
        depths.append(d)
        bad.append(m)
    res = filter_depth_maps(depths, [f.K for f in seq], [f.T_world_cam for f in seq],
                            config=ConsistencyConfig(min_views=2, n_neighbors=4))
    kept_bad = sum(int(np.isfinite(r)[b].sum()) for r, b in zip(res.depths, bad))
    kept_good = sum(int(np.isfinite(r)[~b].sum()) for r, b in zip(res.depths, bad))
    n_bad, n_good = sum(int(b.sum()) for b in bad), sum(int((~b).sum()) for b in bad)
    assert kept_bad / n_bad < 0.01, f"{kept_bad} of {n_bad} corrupted pixels survived"
    # good pixels are lost only where no 2 neighbours see them (image borders) or next to a corrupted one
    assert kept_good / n_good > 0.8, f"only {kept_good / n_good:.3f} of the good pixels kept"
    assert res.kept_fraction == pytest.approx((kept_bad + kept_good) / (n_bad + n_good))
    # kept pixels are unchanged
    for r, d in zip(res.depths, depths):
        ok = np.isfinite(r)
        np.testing.assert_array_equal(r[ok], d[ok])


def test_consistency_counts_views_and_applies_confidence(seq):
    f0, f1 = seq[0], seq[1]
    # a view is consistent with itself everywhere it has depth
    c = consistent_view_count(f0.depth_gt, f0.K, f0.T_world_cam, [f0.depth_gt], [f0.K], [f0.T_world_cam])
    assert np.array_equal(c == 1, np.isfinite(f0.depth_gt))
    # a neighbour 7 cm away with exact depth agrees on most of the overlap; with depth scaled by 5 % never
    c1 = consistent_view_count(f0.depth_gt, f0.K, f0.T_world_cam, [f1.depth_gt, f1.depth_gt * 1.05],
                               [f1.K, f1.K], [f1.T_world_cam, f1.T_world_cam])
    assert (c1 == 1).mean() > 0.8 and c1.max() == 1
    # confidence threshold alone (min_views 0) drops exactly the unconfident pixels
    conf = np.random.default_rng(1).random(f0.depth_gt.shape).astype(np.float32)
    res = filter_depth_maps([f0.depth_gt], [f0.K], [f0.T_world_cam], [conf],
                            ConsistencyConfig(min_confidence=0.5, min_views=0, n_neighbors=0))
    assert np.array_equal(np.isfinite(res.depths[0]), np.isfinite(f0.depth_gt) & (conf >= 0.5))
    # NaN holes in a source view never count as agreement
    holes = f1.depth_gt.copy()
    holes[:, : holes.shape[1] // 2] = np.nan
    c2 = consistent_view_count(f0.depth_gt, f0.K, f0.T_world_cam, [holes], [f1.K], [f1.T_world_cam])
    assert c2.sum() < c1[..., ].astype(bool).sum() * 0.75


def test_select_neighbors_prefers_close_poses(seq):
    nb = select_neighbors([f.T_world_cam for f in seq], 2)
    assert nb[0] == [1, 2] and 3 not in nb[3] and len(nb[3]) == 2


def test_select_neighbors_causal_takes_only_earlier_poses(seq):
    poses = [f.T_world_cam for f in seq]
    nb = select_neighbors(poses, 2, causal=True)
    assert nb[0] == [] and nb[1] == [0] and all(len(nb[i]) == 2 for i in range(2, len(poses)))
    for i in range(len(poses)):
        assert all(j < i for j in nb[i])
        # the same choice as the non-causal selection restricted to the earlier poses
        assert nb[i] == select_neighbors(poses[:i + 1], 2)[i]


# ------------------------------------------------------------------------------------- TSDF
def test_tsdf_with_exact_depth_matches_the_scene_within_a_voxel(seq):
    voxel = 0.03
    vol = TSDFVolume(TSDFConfig(voxel_size=voxel, trunc=4 * voxel, max_depth=6.0))
    for f in seq:
        st = vol.integrate(f.depth_gt, f.K, f.T_world_cam, f.image)
        assert st.integrated and st.valid_pixels > 0
    pts, cols = vol.point_cloud()
    assert len(pts) > 2000 and cols.shape == pts.shape and cols.dtype == np.uint8
    gt = gt_points(seq)
    d = RM.nearest_distances(pts, gt)   # every surface point lies on a real surface
    assert np.median(d) < voxel / 2 and np.percentile(d, 95) < voxel, (np.median(d), np.percentile(d, 95))
    m = RM.reconstruction_metrics(pts, gt, threshold=0.05, voxel=0.01)
    assert m["precision"] > 0.97 and m["recall"] > 0.95, m
    # colours come from the images: the fused colour of a point ~ the pixel colour it projects to
    f = seq[0]
    T_cw = np.linalg.inv(f.T_world_cam)
    Xc = pts @ T_cw[:3, :3].T + T_cw[:3, 3]
    uv = (Xc @ f.K.T)[:, :2] / Xc[:, 2:3]
    ui, vi = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (Xc[:, 2] > 0) & (ui >= 0) & (ui < f.width) & (vi >= 0) & (vi < f.height)
    vis = inside.copy()
    vis[inside] = np.abs(f.depth_gt[vi[inside], ui[inside]] - Xc[inside, 2]) < voxel
    diff = np.abs(cols[vis].astype(int) - f.image[vi[vis], ui[vis]].astype(int)).mean()
    assert vis.sum() > 500 and diff < 30, (vis.sum(), diff)
    mesh = vol.mesh()
    assert len(mesh.triangles) > 1000 and mesh.has_vertex_colors()


def test_tsdf_budget_bad_input_and_reset(seq, tmp_path):
    f = seq[0]
    vol = TSDFVolume(TSDFConfig(voxel_size=0.02, trunc=0.08, max_blocks=50))
    st = vol.integrate(f.depth_gt, f.K, f.T_world_cam, f.image)
    assert st.integrated and st.dropped_blocks > 0 and vol.budget_reached and vol.n_blocks == 50
    n = vol.n_blocks
    vol.integrate(seq[1].depth_gt, seq[1].K, seq[1].T_world_cam)      # no growth past the budget
    assert vol.n_blocks == n
    for depth, T, why in [(f.depth_gt, None, "pose"), (f.depth_gt, np.full((4, 4), np.nan), "pose"),
                          (np.full_like(f.depth_gt, np.nan), f.T_world_cam, "depth"),
                          (np.zeros((0, 0), np.float32), f.T_world_cam, "2-D"),
                          (np.where(np.arange(f.depth_gt.size).reshape(f.depth_gt.shape) == 700, f.depth_gt, np.nan),
                           f.T_world_cam, "touches no voxel block")]:   # open3d would abort on this one
        st = vol.integrate(depth, f.K, T)
        assert not st.integrated and why in st.reason
    out = vol.save(tmp_path / "c.ply", tmp_path / "m.ply")
    assert out["cloud"] > 0 and (tmp_path / "c.ply").stat().st_size > 0
    assert len(o3d.io.read_point_cloud(str(tmp_path / "c.ply")).points) == out["cloud"]
    vol.reset()
    assert vol.n_blocks == 0 and not vol.budget_reached and vol.point_cloud()[0].shape == (0, 3)


# ------------------------------------------------------------------------------------- metrics
def test_reconstruction_metric_definitions():
    g = np.stack(np.meshgrid(np.arange(0, 1, 0.01), np.arange(0, 1, 0.01), [0.0]), -1).reshape(-1, 3)
    p = g + [0, 0, 0.03]                          # every point 3 cm off the surface
    m = RM.reconstruction_metrics(p, g, threshold=0.05)
    assert m["accuracy_mean"] == pytest.approx(0.03) and m["completeness_median"] == pytest.approx(0.03)
    assert m["precision"] == 1 and m["recall"] == 1 and m["fscore"] == 1
    assert RM.reconstruction_metrics(p, g, threshold=0.02)["fscore"] == 0
    # half of the prediction is 1 m away: precision halves; recall unchanged; F = 2PR/(P+R)
    p2 = np.concatenate([g, g + [0, 0, 1.0]])
    m2 = RM.reconstruction_metrics(p2, g, threshold=0.05)
    assert m2["precision"] == pytest.approx(0.5) and m2["recall"] == 1
    assert m2["fscore"] == pytest.approx(2 * 0.5 / 1.5) and m2["accuracy_mean"] == pytest.approx(0.5)
    # only the 30 left columns (x <= 0.29) reconstructed: the gt columns x = 0.30 .. 0.33 are within
    # (strictly less than) 5 cm of them, 0.34 is not -> recall 34 / 100
    p3 = g[g[:, 0] < 0.295]
    m3 = RM.reconstruction_metrics(p3, g, threshold=0.05)
    assert m3["precision"] == 1 and m3["recall"] == pytest.approx(0.34)
    e = RM.reconstruction_metrics(np.zeros((0, 3)), g)
    assert e["precision"] == 0 and e["recall"] == 0 and e["fscore"] == 0
    assert "1.000" in RM.format_metrics({"x": m}).splitlines()[1]


# ------------------------------------------------------------------------------------- renderer
def test_renderer_zbuffer_and_backface_culling():
    K = np.array([[50.0, 0, 31.5], [0, 50, 31.5], [0, 0, 1]])
    T = np.eye(4)
    pts = np.array([[0, 0, 2.0], [0, 0, 1.0], [0, 0, 3.0]])        # same pixel, the middle one is nearest
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    img = RR.render_points(pts, cols, K, T, 64, 64, splat=1)
    assert tuple(img[32, 32]) == (0, 255, 0) and tuple(img[0, 0]) == (255, 255, 255)
    # the nearest point faces away: culled, the next one shows (normals towards the camera are -z)
    nrm = np.array([[0, 0, -1.0], [0, 0, 1.0], [0, 0, -1.0]])
    img2 = RR.render_points(pts, cols, K, T, 64, 64, normals=nrm, splat=1, shade=False)
    assert tuple(img2[32, 32]) == (255, 0, 0)
    K2, T2 = RR.default_view(np.random.default_rng(0).random((100, 3)), None, 64, 48)
    assert K2.shape == (3, 3) and np.allclose(T2[:3, :3] @ T2[:3, :3].T, np.eye(3))


# ------------------------------------------------------------------------------------- CLI
def _fake_run(tmp_path, frames, n_frames, seed, width, height, corrupt=0.0):
    """An `mvs-depth run` output folder whose 'prediction' is the exact depth (optionally corrupted)."""
    run = tmp_path / "run"
    (run / "depth").mkdir(parents=True)
    (run / "confidence").mkdir()
    rng = np.random.default_rng(0)
    for f in frames:
        d = f.depth_gt.copy()
        if corrupt:
            m = rng.random(d.shape) < corrupt
            d[m] *= rng.uniform(0.5, 0.8, int(m.sum())).astype(np.float32)
        np.save(run / "depth" / f"{f.name}.npy", d)
        np.save(run / "confidence" / f"{f.name}.npy", np.ones_like(d))
    summary = {"source": f"synthetic sequence ({n_frames} frames, seed {seed})", "model": "exact",
               "settings": {"width": width, "height": height, "min_depth": 0.25, "max_depth": 20.0,
                            "confidence_threshold": 0.5}}
    (run / "metrics.json").write_text(json.dumps({"summary": summary, "per_frame": []}))
    return run


def test_reconstruct_cli_from_run_folder(seq, tmp_path):
    from mvs_depth_ros.apps import reconstruct
    run = _fake_run(tmp_path, seq, 16, 3, 128, 96, corrupt=0.03)
    out = tmp_path / "rec"
    rc = reconstruct.main(["--run", str(run), "--out", str(out), "--gt", "--compare-unfiltered",
                           "--voxel-size", "0.03", "--picture-size", "160x120", "--neighbors", "3"])
    assert rc == 0
    for name in ("cloud.ply", "mesh.ply", "mesh.png", "gt_cloud.ply", "gt_mesh.ply", "comparison.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["keyframes"] == len(seq) and s["fusion"]["frames"] == len(seq)
    assert 0.7 < s["consistency"]["kept_fraction"] < 0.97
    rec, unf = s["reconstruction"], s["reconstruction_unfiltered"]
    assert rec["fscore"] > 0.95 and rec["accuracy_median"] < 0.015, rec
    # the corrupted 3 % of pixels (20-50 % too near) pollute the unfiltered fusion; the filter removes them
    assert rec["precision"] > unf["precision"], (rec, unf)
    import cv2
    pic = cv2.imread(str(out / "mesh.png"))
    assert pic.shape == (120, 160, 3) and (pic < 250).any(axis=2).mean() > 0.1   # not blank


def test_reconstruct_cli_runs_the_pipeline(tmp_path):
    from mvs_depth_ros.apps import reconstruct
    out = tmp_path / "rec"
    rc = reconstruct.main(["--synthetic-frames", "16", "--width", "128", "--height", "96", "--out", str(out),
                           "--gt", "--voxel-size", "0.04", "--min-views", "1", "--neighbors", "2",
                           "--picture-size", "96x72", "--threads", "2"])
    assert rc == 0
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["model"] == "planesweep" and s["keyframes"] >= 3 and s["fusion"]["points"] > 1000
    assert 0.05 < s["consistency"]["kept_fraction"] < 0.9
    # a 64-plane sweep at 128x96 is rough (~0.4 precision at 5 cm), but the filtered fusion lies near the
    # true surfaces: median distance well under the 4 m room scale
    assert s["reconstruction"]["precision"] > 0.25 and s["reconstruction"]["accuracy_median"] < 0.1, s["reconstruction"]


def test_renderer_float_colours_are_unit_range_even_when_overshooting():
    K = np.array([[50.0, 0, 31.5], [0, 50, 31.5], [0, 0, 1]])
    pts = np.array([[0, 0, 1.0], [0.2, 0, 1.0]])
    img = RR.render_points(pts, np.array([[0.5, 0.5, 0.5], [1.0001, 0.0, 0.0]]), K, np.eye(4), 64, 64, splat=1)
    assert tuple(img[32, 32]) == (128, 128, 128) and tuple(img[32, 42]) == (255, 0, 0)
