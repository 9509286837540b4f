"""Classical plane sweep: building blocks against reference implementations, depth of rendered planes,
NaN / confidence behaviour, out-of-view handling, 1-3 measurement frames, real HoloLens keyframes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.models.planesweep import (PlaneSweepConfig, PlaneSweepEstimator, box_mean, box_mean_cumsum,
                                             build, sgm_scan_rows, subplane_refine)
from mvs_depth_ros.models.registry import create_model

W, H = 160, 128
K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------------------
# helpers: a textured plane rendered exactly by homography
# ------------------------------------------------------------------------------------------------------

def texture(seed: int, w: int = W, h: int = H) -> np.ndarray:
    """Multi-scale smoothed noise, RGB uint8 ``(h, w, 3)``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for cell, amp in ((2, 0.5), (5, 0.3), (11, 0.2)):
        small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        img += amp * cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h,
                                                                                                    cell:cell + w]
    img = cv2.normalize(img, None, 20, 235, cv2.NORM_MINMAX)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def pose(tx=0.0, ty=0.0, tz=0.0, yaw_deg=0.0) -> np.ndarray:
    """Camera-to-world pose: rotation about the camera y axis, then translation."""
    a = np.deg2rad(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = (tx, ty, tz)
    return T


def plane_depth(normal: np.ndarray, d: float) -> np.ndarray:
    """Depth ``(H, W)`` of the plane ``n . X = d`` seen from the reference camera (at the world origin)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return (d / (rays @ normal)).astype(np.float32)


def render_plane(ref_image: np.ndarray, T_world_src: np.ndarray, normal: np.ndarray, d: float) -> np.ndarray:
    """Image of the plane ``n . X = d`` (reference/world coordinates) textured with what the reference sees,
    seen from ``T_world_src``: ``p_src ~ K (R + t n^T / d) K^-1 p_ref`` with ``[R|t] = T_src_world``. The
    texture beyond the reference's view is the mirrored image (still a consistent plane)."""
    T_src_ref = np.linalg.inv(T_world_src)
    Hm = K @ (T_src_ref[:3, :3] + np.outer(T_src_ref[:3, 3], normal) / d) @ np.linalg.inv(K)
    return cv2.warpPerspective(ref_image, Hm, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def plane_scene(normal=(0.0, 0.0, 1.0), d=2.0, sources=(pose(tx=0.15), pose(tx=-0.12, ty=0.05)), seed=0,
                ref_image=None):
    normal = np.asarray(normal, np.float64) / np.linalg.norm(normal)
    img = texture(seed) if ref_image is None else ref_image
    gt = plane_depth(normal, d)
    ref = Frame(img, K, np.eye(4), name="ref", depth_gt=gt)
    meas = [Frame(render_plane(img, T, normal, d), K, T, name=f"src{i}") for i, T in enumerate(sources)]
    return ref, meas, gt


def rel_err(depth: np.ndarray, gt: np.ndarray, border: int = 6) -> np.ndarray:
    e = np.abs(depth - gt) / gt
    return e[border:-border, border:-border]


@pytest.fixture(scope="module")
def est():
    return build(device="cpu")


# ------------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------------

def test_box_mean_opencv_matches_cumsum_and_direct_reflect():
    x = torch.rand(3, 1, 17, 23)
    a = box_mean(x, 5)                       # OpenCV path (CPU)
    b = box_mean_cumsum(x, 5)                # device-agnostic path (used on CUDA)
    ref = F_direct_box(x, 5)
    assert torch.allclose(a, ref, atol=1e-5) and torch.allclose(b, ref, atol=1e-5)


def F_direct_box(x: torch.Tensor, window: int) -> torch.Tensor:
    r = window // 2
    p = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    return torch.nn.functional.avg_pool2d(p, window, stride=1)


def _naive_sgm_rows(cost: np.ndarray, shifts, p1: float, p2: float) -> np.ndarray:
    """Textbook SGM recurrence, pixel by pixel (tiny inputs only)."""
    D, S, N = cost.shape
    total = np.zeros_like(cost)
    for sh in shifts:
        for down in (True, False):
            L = np.zeros_like(cost)
            rows = range(S) if down else range(S - 1, -1, -1)
            for k, r in enumerate(rows):
                for n in range(N):
                    q = n - sh
                    if k == 0 or not (0 <= q < N):
                        L[:, r, n] = cost[:, r, n]
                        continue
                    prev = L[:, r - 1 if down else r + 1, q]
                    m = prev.min()
                    up = np.concatenate([prev[1:], [np.inf]])
                    dn = np.concatenate([[np.inf], prev[:-1]])
                    L[:, r, n] = cost[:, r, n] + np.minimum.reduce([prev, up + p1, dn + p1, np.full(D, m + p2)]) - m
            total += L
    return total


@pytest.mark.parametrize("shifts", [(0,), (0, 1, -1)])
def test_sgm_scan_rows_matches_textbook_recurrence(shifts):
    rng = np.random.default_rng(3)
    cost = rng.random((6, 7, 9)).astype(np.float32)
    gray = torch.zeros(7, 9)                 # constant image: the edge-adaptive penalty stays p2
    out = sgm_scan_rows(torch.from_numpy(cost), gray, shifts, p1=0.1, p2=0.4, p2_edge=0.05)
    np.testing.assert_allclose(out.numpy(), _naive_sgm_rows(cost, shifts, 0.1, 0.4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shifts,p2_edge", [((0,), 0.0), ((0, 1, -1), 0.0), ((0, 1, -1), 0.05)])
def test_sgm_compiled_kernel_matches_torch_scan(shifts, p2_edge):
    """The numba CPU kernel against the torch row scan (the reference, still what CUDA runs): the same float32
    operations in the same order, so equal up to float rounding (in practice bit-equal)."""
    from mvs_depth_ros.models import planesweep as ps
    if not ps.planesweep_numba.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(5)
    cost = torch.from_numpy(rng.random((9, 13, 17)).astype(np.float32))
    gray = torch.from_numpy(rng.random((13, 17)).astype(np.float32))
    ref = sgm_scan_rows(cost, gray, shifts, 0.1, 0.6, p2_edge)
    got = ps._sgm_scan_rows_compiled(cost, gray, shifts, 0.1, 0.6, p2_edge)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    # the full aggregation (rows + transposed columns) through the public entry point
    agg = ps.sgm_aggregate(cost, gray, 0.1, 0.6, p2_edge, paths=8)
    assert ps._use_compiled_sgm(cost)
    rows = sgm_scan_rows(cost, gray, (0, 1, -1), 0.1, 0.6, p2_edge)
    cols = sgm_scan_rows(cost.transpose(1, 2).contiguous(), gray.t().contiguous(), (0,), 0.1, 0.6, p2_edge)
    np.testing.assert_allclose(agg.numpy(), (rows + cols.transpose(1, 2)).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,size", [(7, (W // 2, H // 2)), (5, (W, H)), (3, (11, 9))])
def test_compiled_view_cost_matches_torch(window, size, monkeypatch):
    """The fused numba warp + ZNCC (CPU) against the torch path (grid_sample + box filters, what CUDA runs):
    equal up to float rounding, the same visibility counts."""
    from mvs_depth_ros.models import planesweep as ps
    if not ps.planesweep_numba.AVAILABLE:
        pytest.skip("numba not installed")
    ref_f, meas, _ = plane_scene(normal=(0.2, -0.1, 1.0), d=1.5, seed=4)
    est = build(device="cpu")
    w, h = size
    ref, K_ref = est._pyramid_level(ref_f, w, h)
    srcs, Ks = zip(*(est._pyramid_level(m, w, h) for m in meas))
    Ts = [est._tensor(np.linalg.inv(m.T_world_cam) @ ref_f.T_world_cam) for m in meas]
    mu, sigma = ps.window_stats(ref, window)
    depths = 1.0 / est._inv_planes
    args = (ref, mu, sigma, srcs, K_ref, Ks, Ts, depths, window, 0.5)
    cost, count = ps._view_cost(*args)
    monkeypatch.setattr(ps.planesweep_numba, "AVAILABLE", False)
    cost_t, count_t = ps._view_cost(*args)
    assert torch.equal(count, count_t) and count.min() == 0 and count.max() == len(meas)
    np.testing.assert_allclose(cost.numpy(), cost_t.numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("D,exclude", [(64, 2), (5, 2), (3, 2), (4, 0)])
def test_confidence_second_best_is_the_min_beyond_the_window(D, exclude):
    from mvs_depth_ros.models.planesweep import confidence_from_costs
    g = torch.Generator().manual_seed(D)
    agg = torch.rand(D, 6, 7, generator=g)
    idx = agg.argmin(0)
    idx[0, :2] = torch.tensor([0, D - 1])                        # winners at both ends of the range
    match = torch.rand(6, 7, generator=g) * 0.5
    far = (torch.arange(D).reshape(D, 1, 1) - idx[None]).abs() > exclude
    second = torch.where(far, agg, torch.full_like(agg, float("inf"))).amin(0)
    best = torch.gather(agg, 0, idx[None])[0]
    distinct = torch.where(torch.isfinite(second), 1.0 - best / second, torch.zeros_like(best)).clamp(0.0, 1.0)
    expected = distinct * (1.0 - 2.0 * match).clamp(0.0, 1.0).sqrt()
    assert torch.equal(confidence_from_costs(agg, idx, match, exclude), expected)


def test_subplane_refine_recovers_vertex():
    planes = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1)
    vertex = torch.tensor([[3.3, 6.8, 0.2]])
    for fit, cost in (("parabola", (planes - vertex) ** 2), ("equiangular", (planes - vertex).abs())):
        idx = cost.min(0).indices
        got = subplane_refine(cost, idx, fit).numpy()
        np.testing.assert_allclose(got[:, :2], vertex[:, :2].numpy(), atol=1e-5)
        assert got[0, 2] == 0.0                  # no fit at the end of the range


# ------------------------------------------------------------------------------------------------------
# the estimator on rendered planes
# ------------------------------------------------------------------------------------------------------

def test_fronto_parallel_plane_depth(est):
    ref, meas, gt = plane_scene(d=2.0)
    res = est.estimate(ref, meas)
    assert res.depth.shape == (H, W) and res.depth.dtype == np.float32
    assert res.confidence.shape == (H, W) and res.confidence.min() >= 0 and res.confidence.max() <= 1
    # NaN only in the image corner that neither source sees at any depth (both move away from it)
    assert np.isfinite(res.depth[4:, 4:]).all() and np.isnan(res.depth[:2, :2]).all()
    e = rel_err(res.depth, gt)
    # one plane step is ~12 % of depth at 2 m (64 planes over 0.25-20 m): the sub-plane fit does far better
    assert np.median(e) < 0.02 and np.mean(e < 0.05) > 0.95
    thr = res.info["confidence_threshold"]
    assert np.mean(res.confidence >= thr) > 0.9
    assert res.state is None and res.info["n_measurements"] == 2


@pytest.mark.parametrize("n_meas", [1, 3])
def test_slanted_plane_any_number_of_views(est, n_meas):
    sources = [pose(tx=0.15), pose(tx=-0.1, ty=0.08, yaw_deg=2.0), pose(ty=-0.12, tz=0.05)][:n_meas]
    ref, meas, gt = plane_scene(normal=(0.0, -0.35, 1.0), d=1.8, sources=sources, seed=1)
    assert gt.min() > 1.2 and gt.max() < 2.6        # a real depth gradient across the image
    res = est.estimate(ref, meas)
    e = rel_err(res.depth, gt)
    assert np.median(e) < 0.03 and np.mean(e < 0.08) > 0.9
    # the filtered depth keeps most of the image and is at least as accurate
    filt = res.filtered(res.info["confidence_threshold"])
    ef = rel_err(filt, gt)
    kept = np.isfinite(ef)
    assert kept.mean() > 0.7 and np.mean(ef[kept]) <= np.mean(e) + 1e-6


def test_textureless_region_has_low_confidence_and_dense_depth(est):
    img = texture(2)
    img[:, W // 2:] = 128                       # right half: no texture at all
    ref, meas, gt = plane_scene(d=2.0, ref_image=img)
    res = est.estimate(ref, meas)
    assert np.isfinite(res.depth[4:, 4:]).all()  # dense: textureless is low confidence, not invalid
    left, right = res.confidence[:, 8:W // 2 - 8], res.confidence[:, W // 2 + 8:]
    assert np.median(left) > 0.5
    assert right.max() == 0.0
    assert np.all(res.filtered(res.info["confidence_threshold"])[:, W // 2 + 8:] != res.filtered(0.5)[:, W // 2 + 8:])
    assert np.median(rel_err(res.depth[:, 8:W // 2 - 8], gt[:, 8:W // 2 - 8], border=2)) < 0.02


def seen_at_some_depth(T_world_src: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the reference pixel projects inside the source image at one of ``depths`` at least."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    T = np.linalg.inv(T_world_src)
    seen = np.zeros((H, W), bool)
    for d in depths:
        p = (rays * d) @ T[:3, :3].T + T[:3, 3]
        z = p[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            us, vs = K[0, 0] * p[..., 0] / z + K[0, 2], K[1, 1] * p[..., 1] / z + K[1, 2]
        seen |= (z > 0) & (us >= 0) & (us <= W - 1) & (vs >= 0) & (vs <= H - 1)
    return seen


def test_pixels_no_view_sees_are_nan_and_partial_views_do_not_corrupt(est):
    # source turned 40 deg: the left part of the reference is outside its view at every depth
    turned = pose(tx=0.1, yaw_deg=40.0)
    ref, meas, gt = plane_scene(d=2.0, sources=(turned,), seed=4)
    res = est.estimate(ref, meas)
    nan = np.isnan(res.depth)
    seen = seen_at_some_depth(turned, 1.0 / est._inv_planes.numpy())
    assert 0.2 < seen.mean() < 0.6
    kernel = np.ones((9, 9), np.uint8)           # the cost resolution is half: 4 px slack at the boundary
    surely_seen = cv2.erode(seen.astype(np.uint8), kernel).astype(bool)
    surely_unseen = cv2.erode((~seen).astype(np.uint8), kernel).astype(bool)
    assert np.all(nan[surely_unseen]) and not np.any(nan[surely_seen])
    assert np.all(res.confidence[nan] == 0.0)
    # the part it does see is measured correctly
    inner = cv2.erode(seen.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
    assert np.median(np.abs(res.depth[inner] - gt[inner]) / gt[inner]) < 0.03

    # with a second view that sees everything, the whole image is valid and accurate: out-of-view samples
    # of the turned view are left out of the cost average instead of polluting it
    ref, meas2, gt = plane_scene(d=2.0, sources=(turned, pose(tx=-0.15)), seed=4)
    res2 = est.estimate(ref, meas2)
    assert np.isfinite(res2.depth).all()
    e = rel_err(res2.depth, gt)
    assert np.median(e) < 0.02 and np.mean(e < 0.05) > 0.95


def test_four_path_and_full_resolution_variants():
    # 3 m lies half-way between two planes: the worst case of the sub-plane fit (~3 % median)
    ref, meas, gt = plane_scene(d=3.0, seed=5)
    for opts in ({}, {"sgm_paths": 4}, {"cost_scale": 1.0, "window": 5}):
        e = rel_err(build(device="cpu", **opts).estimate(ref, meas).depth, gt)
        assert np.median(e) < 0.035 and np.mean(e < 0.05) > 0.95, opts


# ------------------------------------------------------------------------------------------------------
# interface, options, errors
# ------------------------------------------------------------------------------------------------------

def test_registry_builder_and_options():
    m = create_model("planesweep", device="cpu", min_depth=0.5, max_depth=10.0, n_planes=32)
    assert isinstance(m, PlaneSweepEstimator) and m.name == "planesweep"
    assert m.device.type == "cpu" and m.config.n_planes == 32 and not m.recurrent
    with pytest.raises(ValueError, match="unknown planesweep option"):
        build(device="cpu", n_plane=32)
    with pytest.raises(ValueError, match="window"):
        PlaneSweepConfig(window=4)
    with pytest.raises(ValueError, match="min_depth"):
        build(device="cpu", min_depth=5.0, max_depth=1.0)


def test_bad_inputs_are_clear_errors(est):
    ref, meas, _ = plane_scene()
    with pytest.raises(ValueError, match="at least one measurement"):
        est.estimate(ref, [])
    small = meas[0].resized(80, 64)
    with pytest.raises(ValueError, match="working resolution"):
        est.estimate(ref, [small])
    no_pose = Frame(meas[0].image, K, None, name="lost")
    with pytest.raises(ValueError, match="no valid pose"):
        est.estimate(ref, [no_pose])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_matches_cpu():
    ref, meas, gt = plane_scene(d=2.0)
    cpu = build(device="cpu").estimate(ref, meas)
    gpu = build(device="cuda").estimate(ref, meas)
    assert np.median(rel_err(gpu.depth, gt)) < 0.02
    assert np.mean(np.abs(gpu.depth - cpu.depth) / gt < 0.01) > 0.98


# ------------------------------------------------------------------------------------------------------
# rendered room (package renderer) and real HoloLens keyframes
# ------------------------------------------------------------------------------------------------------

def test_synthetic_room_sequence():
    from mvs_depth_ros.data.synthetic import render_sequence

    seq = render_sequence(n_frames=9, width=W, height=H, seed=1)
    est = build(device="cpu")
    errs, filt_errs = [], []
    for ref_i, meas_i in ((4, (0, 8)), (8, (4, 0))):
        ref = seq.frames[ref_i]
        res = est.estimate(ref, [seq.frames[i] for i in meas_i])
        gt = ref.depth_gt
        ok = np.isfinite(gt) & (gt > 0) & np.isfinite(res.depth)
        assert ok.mean() > 0.9
        errs.append(np.mean(np.abs(res.depth[ok] - gt[ok]) / gt[ok]))
        filt = res.filtered(res.info["confidence_threshold"])
        kept = ok & np.isfinite(filt)
        assert kept.sum() > 0.4 * ok.sum()
        filt_errs.append(np.mean(np.abs(filt[kept] - gt[kept]) / gt[kept]))
    print("synthetic room abs_rel dense", errs, "filtered", filt_errs)
    assert max(errs) < 0.08 and max(filt_errs) < 0.06, (errs, filt_errs)


def test_hololens_keyframes_beat_naive_sweep():
    root = require_shared("data", "hololens-000")
    from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index
    from mvs_depth_ros.eval.metrics import aggregate, depth_metrics

    scene = load_scene(root)
    lines = read_keyframe_index(root / "indices" / "keyframe+hololens-dataset+000+nmeas+2")[10:130:30]
    est = build(device="cpu", min_depth=0.25, max_depth=20.0)
    dense, filt = [], []
    for ref_name, meas_names in lines:
        ref = scene.frame(scene.index_of(ref_name)).resized(320, 256)
        meas = [scene.frame(scene.index_of(m), with_depth=False).resized(320, 256) for m in meas_names]
        res = est.estimate(ref, meas)
        dense.append(depth_metrics(res.depth, ref.depth_gt, min_gt=0.5, clip=(0.25, 20.0)))
        filt.append(depth_metrics(res.filtered(res.info["confidence_threshold"]), ref.depth_gt, min_gt=0.5,
                                  clip=(0.25, 20.0)))
    d, f = aggregate(dense), aggregate(filt)
    # naive winner-take-all ZNCC sweep: abs_rel 1.04 on these keyframes
    assert d["abs_rel"] < 0.3 and d["a1"] > 0.7, d
    assert f["abs_rel"] < 0.15 and f["coverage"] > 0.4, f


def test_depth_prior_narrows_the_sweep_where_matching_cannot_decide(est):
    """A prior pulls the textureless half (no matching evidence) to its depth, leaves the textured half to the
    matching, and is ignored at prior_weight 0."""
    img = texture(2)
    img[:, W // 2:] = 128
    ref, meas, gt = plane_scene(d=2.0, ref_image=img)
    plain = est.estimate(ref, meas)
    prior_depth = np.full_like(gt, np.nan)
    prior_depth[:, W // 2:] = 3.0                           # wrong on purpose: only the prior says 3 m there
    prior = (prior_depth, np.ones_like(gt))
    np.testing.assert_array_equal(build(device="cpu", prior_weight=0.0).estimate(ref, meas, prior=prior).depth,
                                  plain.depth)                       # prior_weight 0: ignored
    res = build(device="cpu", prior_weight=0.5).estimate(ref, meas, prior=prior)
    assert res.info["prior"] and not plain.info["prior"]
    right, left = slice(W // 2 + 8, W - 4), slice(8, W // 2 - 8)
    # (the aggregation still carries the textured half's 2 m some way into it: pulled, not snapped, to 3 m)
    to_prior = np.median(np.abs(res.depth[4:-4, right] - 3.0) / 3.0)
    assert to_prior < 0.1 and np.median(np.abs(plain.depth[4:-4, right] - 3.0) / 3.0) > 3 * to_prior
    assert np.median(rel_err(res.depth[:, left], gt[:, left], border=2)) < 0.02
    with pytest.raises(ValueError, match="prior"):
        PlaneSweepConfig(prior_weight=-1.0)
