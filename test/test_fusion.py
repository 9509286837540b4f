"""Temporal depth fusion (core/fusion.py) on synthetic sequences with exact depth."""
import cv2
import numpy as np
import pytest
import torch

from mvs_depth_ros.core.frame import DepthResult, Frame
from mvs_depth_ros.core.fusion import (FusionConfig, KeyframeDepth, TemporalFusion, _edges, fuse_keyframe, fuse_offline,
                                       splat_depth)
from mvs_depth_ros.core.keyframes import KeyframeConfig, KeyframeStatus
from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
from mvs_depth_ros.data.synthetic import render_sequence
from mvs_depth_ros.models.base import DepthEstimator

W, H = 96, 72


@pytest.fixture(scope="module")
def seq():
    return render_sequence(n_frames=24, width=W, height=H, seed=3, step=0.05, supersample=1)


def _kf(depth, frame, conf=None):
    return KeyframeDepth(np.asarray(depth, np.float32), np.ones_like(depth, np.float32) if conf is None else conf,
                         frame.K, frame.T_world_cam)


def _noisy(gt, rng, sigma, outliers):
    """``gt`` with multiplicative log-normal noise and a fraction of gross outliers (uniform 0.5-8 m)."""
    d = gt * np.exp(rng.normal(0.0, sigma, gt.shape)).astype(np.float32)
    bad = rng.random(gt.shape) < outliers
    d[bad] = rng.uniform(0.5, 8.0, int(bad.sum()))
    return d.astype(np.float32)


def test_plane_translation_reprojects_exactly():
    """A fronto-parallel plane seen after a sideways move of exactly 4 px of disparity: every splatted depth
    is the plane's and lands 4 px over."""
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    z, shift_px = 2.5, 4
    T_src, T_tgt = np.eye(4), np.eye(4)
    T_tgt[0, 3] = shift_px * z / K[0, 0]               # target camera moved +x: the plane moves -4 px
    depth = np.full((60, 80), z, np.float32)
    conf = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    d, c = splat_depth([KeyframeDepth(depth, conf, K, T_src)], K, T_tgt, 60, 80)
    landed = np.isfinite(d[0])
    assert landed[:, :80 - shift_px].all() and not landed[:, 80 - shift_px:].any()
    np.testing.assert_allclose(d[0][landed], z, rtol=1e-5)
    np.testing.assert_array_equal(c[0][:, :80 - shift_px], conf[:, shift_px:])   # confidence travels along


def test_reprojection_of_known_depth_is_exact_where_visible(seq):
    src, tgt = seq.frames[2], seq.frames[8]
    d, _ = splat_depth([_kf(src.depth_gt, src)], tgt.K, tgt.T_world_cam, H, W)
    d, gt = d[0], tgt.depth_gt
    landed = np.isfinite(d)
    assert landed.mean() > 0.6
    # nearest-pixel rounding moves a point by <= half a pixel: the splatted depth lies within the true depth
    # of the pixel's 3x3 neighbourhood wherever the surface there is visible from the source
    box = np.ones((3, 3), np.uint8)
    lo, hi = cv2.erode(gt, box), cv2.dilate(gt, box)        # 3x3 min / max
    inside = (d >= lo * (1 - 1e-4)) & (d <= hi * (1 + 1e-4))
    assert inside[landed].mean() > 0.98
    # away from depth edges (3x3 range < 5 %) the surface is ~planar: depth changes by (hi - lo) / 2 per pixel
    # and the half-pixel rounding errs by at most a quarter of the 3x3 range (+ float and curvature margin)
    smooth = landed & (hi - lo < 0.05 * gt)
    assert smooth.sum() > 0.5 * H * W
    err = np.abs(d - gt)
    assert (err <= 0.3 * (hi - lo) + 1e-4 * gt)[smooth].mean() > 0.97
    assert np.median(err[smooth] / gt[smooth]) < 2e-3


def test_occluded_points_never_overwrite_nearer_ones():
    """A near square in front of a far wall: after a sideways move the square covers wall pixels that the
    source saw beside it; both land on the same target pixels and the z-buffer keeps the square."""
    K = np.array([[80.0, 0, 40], [0, 80.0, 30], [0, 0, 1]])
    depth = np.full((60, 80), 6.0, np.float32)
    depth[20:40, 30:50] = 1.0
    T_tgt = np.eye(4)
    T_tgt[0, 3] = -0.1          # moved left: the near square shifts right by 8 px, the wall by 1.3 px
    near_only = np.where(depth < 2, depth, np.nan).astype(np.float32)
    far_only = np.where(depth > 2, depth, np.nan).astype(np.float32)
    ones = np.ones_like(depth)
    d_near, _ = splat_depth([KeyframeDepth(near_only, ones, K, np.eye(4))], K, T_tgt, 60, 80)
    d_far, _ = splat_depth([KeyframeDepth(far_only, ones, K, np.eye(4))], K, T_tgt, 60, 80)
    collide = np.isfinite(d_near[0]) & np.isfinite(d_far[0])
    assert collide.sum() >= 20 * 5                     # wall points really land under the square
    d, _ = splat_depth([KeyframeDepth(depth, ones, K, np.eye(4))], K, T_tgt, 60, 80)
    np.testing.assert_allclose(d[0][collide], 1.0, rtol=1e-5)
    np.testing.assert_allclose(d[0][np.isfinite(d_far[0]) & ~np.isfinite(d_near[0])], 6.0, rtol=1e-5)
    # and across sources: the far wall re-projected after the square never replaces it either
    d2, _ = splat_depth([KeyframeDepth(near_only, ones, K, np.eye(4)), KeyframeDepth(far_only, ones, K, np.eye(4))],
                        K, T_tgt, 60, 80)
    np.testing.assert_allclose(d2[0][collide], 1.0, rtol=1e-5)


def test_fusion_of_noisy_copies_lowers_the_error(seq):
    rng = np.random.default_rng(1)
    fusion = TemporalFusion(FusionConfig(window=8))
    raw_err, fused_err, raw_bad, fused_bad, outs = [], [], [], [], []
    for f in seq.frames[:12]:
        noisy = _noisy(f.depth_gt, rng, sigma=0.03, outliers=0.1)
        out = fusion.step(noisy, np.full_like(noisy, 0.5), f.K, f.T_world_cam)
        outs.append(out)
        gt = f.depth_gt
        raw_err.append(np.abs(np.log(noisy / gt)))
        fused_err.append(np.abs(np.log(out.depth / gt)))
    assert [o.n_keyframes for o in outs] == [min(i, 8) for i in range(12)]
    raw, fused = np.stack(raw_err[8:]), np.stack(fused_err[8:])
    ok = np.isfinite(fused)
    assert ok.mean() == 1.0                            # dense in, dense out
    # gross outliers (10 % of the input) are rejected wherever the other keyframes see the surface
    assert (raw > 0.3).mean() > 0.06 and (fused > 0.3).mean() < 0.01
    # inliers are averaged: with ~6-9 agreeing candidates the log-depth noise shrinks well below 3 %
    good = raw < 0.1
    assert np.median(fused[good]) < 0.6 * np.median(raw[good])
    # confidence keeps its meaning: where more keyframes agree the fused depth is better and more confident
    conf = np.stack([o.confidence for o in outs[8:]])
    hi = conf >= np.median(conf)
    assert np.mean(fused[hi]) < np.mean(fused[~hi])


def test_offline_fusion_uses_later_keyframes(seq):
    rng = np.random.default_rng(2)
    kfs = [_kf(_noisy(f.depth_gt, rng, 0.03, 0.1), f, np.full((H, W), 0.5, np.float32)) for f in seq.frames[:9]]
    outs = fuse_offline(kfs, FusionConfig(mode="offline", window=3))
    assert [o.n_keyframes for o in outs] == [3, 4, 5, 6, 6, 6, 5, 4, 3]
    gt = seq.frames[0].depth_gt
    assert np.mean(np.abs(np.log(outs[0].depth / gt))) < 0.5 * np.mean(np.abs(np.log(kfs[0].depth / gt)))


def test_state_resets_on_size_change_and_reset(seq):
    f = seq.frames[0]
    fusion = TemporalFusion(FusionConfig(window=4))
    fusion.step(f.depth_gt, np.ones((H, W), np.float32), f.K, f.T_world_cam)
    assert len(fusion) == 1
    small = f.resized(W // 2, H // 2)
    out = fusion.step(small.depth_gt, np.ones((H // 2, W // 2), np.float32), small.K, small.T_world_cam)
    assert out.n_keyframes == 0 and len(fusion) == 1
    fusion.reset()
    assert len(fusion) == 0


def test_config_is_validated():
    with pytest.raises(ValueError, match="mode"):
        FusionConfig(mode="sometimes")
    with pytest.raises(ValueError, match="window"):
        FusionConfig(window=0)


class NoisyOracle(DepthEstimator):
    """The reference frame's exact depth with noise and outliers: a stand-in for an MVS network whose errors
    are independent from keyframe to keyframe."""
    name = "noisy-oracle"

    def __init__(self):
        super().__init__(device="cpu")
        self.rng = np.random.default_rng(4)

    def estimate(self, reference, measurements, state=None):
        d = _noisy(reference.depth_gt, self.rng, 0.03, 0.1)
        return DepthResult(d, np.full_like(d, 0.5), reference.K, state)


def _run(seq, mode):
    pipe = VideoPipeline(NoisyOracle(), PipelineConfig(width=W, height=H, fusion=FusionConfig(mode=mode, window=6)))
    return pipe, [pipe.process(f) for f in seq.frames]


def test_pipeline_fuses_and_counts(seq):
    pipe, steps = _run(seq, "causal")
    fused = [s for s in steps if s.result is not None]
    assert len(fused) >= 8 and pipe.counters.fused == pipe.counters.predictions - 1
    assert not fused[0].result.fused and fused[0].result.fusion_keyframes == 0
    assert all(s.result.fused and s.result.fusion_keyframes == min(i, 6) for i, s in enumerate(fused) if i)
    assert all(0 <= s.fusion_ms <= s.compute_ms for s in fused)

    def err(d, f):
        return np.mean(np.abs(np.log(d / f.depth_gt)))
    raw = np.mean([err(s.result.info["unfused_depth"], s.frame) for s in fused[4:]])
    assert np.mean([err(s.result.depth, s.frame) for s in fused[4:]]) < 0.5 * raw

    assert len(pipe.fusion) > 0
    pipe.reset()                       # what the node does on a time jump (bag loop) or a pose-source gap
    assert len(pipe.fusion) == 0

    pipe_off, steps_off = _run(seq, "off")
    assert pipe_off.counters.fused == 0
    assert all(not s.result.fused and "unfused_depth" not in s.result.info for s in steps_off if s.result)


def test_tracking_loss_resets_the_fusion_state(seq):
    pipe = VideoPipeline(NoisyOracle(), PipelineConfig(width=W, height=H, fusion=FusionConfig(window=6),
                                                       keyframes=KeyframeConfig(tracking_lost_frames=1)))
    steps = []
    for i, f in enumerate(seq.frames):
        steps.append(pipe.process(Frame(f.image, f.K, None, f.stamp, name=f.name) if i in (10, 11) else f))
    lost = [i for i, s in enumerate(steps) if s.status == KeyframeStatus.TRACKING_LOST]
    assert lost == [11] and steps[11].reset
    after = [s for s in steps[12:] if s.result is not None]
    assert after, "no prediction after the reset"
    # the first prediction after the reset has nothing to fuse with: the state went with the tracking
    assert after[0].result.fusion_keyframes == 0 and not after[0].result.fused
    assert pipe.counters.fused == pipe.counters.predictions - 2


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_evidence_stride_fuses_like_full_resolution(seq, stride):
    """The re-projected keyframes' median on a coarser grid: the same outlier rejection and averaging."""
    rng = np.random.default_rng(5)
    fusion = TemporalFusion(FusionConfig(window=8, evidence_stride=stride))
    raw, fused = [], []
    for f in seq.frames[:12]:
        noisy = _noisy(f.depth_gt, rng, sigma=0.03, outliers=0.1)
        out = fusion.step(noisy, np.full_like(noisy, 0.5), f.K, f.T_world_cam)
        raw.append(np.abs(np.log(noisy / f.depth_gt)))
        fused.append(np.abs(np.log(out.depth / f.depth_gt)))
    raw, fused = np.stack(raw[8:]), np.stack(fused[8:])
    assert np.isfinite(fused).all()
    assert (fused > 0.3).mean() < 0.015
    good = raw < 0.1
    assert np.median(fused[good]) < 0.6 * np.median(raw[good])


def test_prior_is_the_last_fused_keyframe_reprojected(seq):
    fusion = TemporalFusion(FusionConfig(window=4, prior=True, evidence_stride=1, edge_rel=0.0))
    f0, f1 = seq.frames[0], seq.frames[6]
    assert fusion.prior(f0.K, f0.T_world_cam, H, W) is None
    out = fusion.step(f0.depth_gt, np.ones((H, W), np.float32), f0.K, f0.T_world_cam)
    d, c = fusion.prior(f0.K, f0.T_world_cam, H, W)           # same camera: the fused map itself
    np.testing.assert_allclose(d, out.depth, rtol=1e-5)
    np.testing.assert_array_equal(c, out.confidence)
    d, _ = fusion.prior(f1.K, f1.T_world_cam, H, W)           # another camera: its depth where visible
    ok = np.isfinite(d)
    assert ok.mean() > 0.6
    assert np.median(np.abs(d[ok] - f1.depth_gt[ok]) / f1.depth_gt[ok]) < 5e-3
    assert fusion.prior(f0.K, f0.T_world_cam, H // 2, W // 2) is None   # another size: none
    fusion.reset()
    assert fusion.prior(f0.K, f0.T_world_cam, H, W) is None
    assert TemporalFusion(FusionConfig(window=4)).config.prior is False
    # with the discontinuity test (default): the same map except at its depth edges (not re-projected; their
    # one-pixel cracks filled by a neighbour)
    edged = TemporalFusion(FusionConfig(window=4, prior=True, evidence_stride=1))
    out = edged.step(f0.depth_gt, np.ones((H, W), np.float32), f0.K, f0.T_world_cam)
    d, _ = edged.prior(f0.K, f0.T_world_cam, H, W)
    edge = _edges(torch.from_numpy(out.depth), torch.from_numpy(np.isfinite(out.depth)), 0.07).numpy()
    assert 0 < edge.mean() < 0.1
    np.testing.assert_allclose(d[~edge], out.depth[~edge], rtol=1e-5)
    # on the default 2x coarser evidence grid: each 2x2 cell takes one re-projected point
    coarse = TemporalFusion(FusionConfig(window=4, prior=True))
    coarse.step(f0.depth_gt, np.ones((H, W), np.float32), f0.K, f0.T_world_cam)
    d, _ = coarse.prior(f1.K, f1.T_world_cam, H, W)
    ok = np.isfinite(d)
    assert ok.mean() > 0.6 and np.median(np.abs(d[ok] - f1.depth_gt[ok]) / f1.depth_gt[ok]) < 2e-2


class PriorOracle(NoisyOracle):
    """Records the priors the pipeline hands to it."""
    accepts_prior = True

    def __init__(self):
        super().__init__()
        self.priors = []

    def estimate(self, reference, measurements, state=None, prior=None):
        self.priors.append(prior)
        return super().estimate(reference, measurements, state)


@pytest.mark.parametrize("prior", [True, False])
def test_pipeline_feeds_the_prior_to_estimators_that_take_it(seq, prior):
    est = PriorOracle()
    pipe = VideoPipeline(est, PipelineConfig(width=W, height=H, fusion=FusionConfig(window=6, prior=prior)))
    for f in seq.frames:
        pipe.process(f)
    assert len(est.priors) >= 8 and est.priors[0] is None
    if prior:
        assert all(p is not None and p[0].shape == (H, W) and np.isfinite(p[0]).mean() > 0.5 for p in est.priors[1:])
    else:
        assert all(p is None for p in est.priors)


def test_depth_discontinuities_are_not_reprojected():
    """A step between two fronto-parallel planes with one column of depth between them (what bilinear upsampling
    of a coarser depth map makes at every edge): with ``edge_rel`` the step's pixels stay home, so no depth
    between the two surfaces lands anywhere; an isolated outlier is dropped, its neighbours are kept."""
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    depth = np.full((60, 80), 2.0, np.float32)
    depth[:, 41:] = 4.0
    depth[:, 40] = 1.0 / (0.5 / 2.0 + 0.5 / 4.0)           # halfway in inverse depth
    depth[10, 10] = 8.0
    src = KeyframeDepth(depth, np.ones_like(depth), K, np.eye(4))
    everything, _ = splat_depth([src], K, np.eye(4), 60, 80)
    np.testing.assert_array_equal(everything[0], depth)     # same camera: every pixel on itself
    kept, _ = splat_depth([src], K, np.eye(4), 60, 80, edge_rel=0.07)
    dropped = np.isnan(kept[0])
    expect = np.zeros_like(dropped)
    expect[1:-1, 39:42] = True          # the step's two sides and the column between (3 differing neighbours)
    expect[10, 10] = True               # the outlier (8 differing neighbours); its neighbours have one each
    expect[[0, -1], 40] = True          # image border: the outside does not count (the sides there: 2 of 5)
    np.testing.assert_array_equal(dropped, expect)
    landed = kept[0][~dropped]
    assert np.all((np.abs(landed - 2.0) < 1e-5) | (np.abs(landed - 4.0) < 1e-5))
    # moved sideways: the far plane shows through where the step's pixels would have landed, nothing between
    T = np.eye(4)
    T[0, 3] = 0.1
    moved, _ = splat_depth([src], K, T, 60, 80, edge_rel=0.07)
    landed = moved[0][np.isfinite(moved[0])]
    assert np.all((np.abs(landed - 2.0) < 1e-4) | (np.abs(landed - 4.0) < 1e-4))
    with pytest.raises(ValueError):
        FusionConfig(edge_rel=-0.1)


def test_new_prediction_edges_do_not_vote_with_edge_current():
    """A spike in the new prediction (twice the weight of one re-projected keyframe): it wins the median unless its
    edge pixels do not vote (``edge_current``); then the re-projected plane decides."""
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    plane = np.full((60, 80), 2.0, np.float32)
    new = plane.copy()
    new[30, 40] = 4.0
    ones = np.ones_like(plane)
    others = [KeyframeDepth(plane, ones, K, np.eye(4))]
    for edge_current, expect in ((False, 4.0), (True, 2.0)):
        cfg = FusionConfig(evidence_stride=1, edge_current=edge_current)
        out = fuse_keyframe(new, ones, K, np.eye(4), others, cfg)
        assert out.depth[30, 40] == pytest.approx(expect, rel=1e-5)
        np.testing.assert_allclose(np.delete(out.depth.reshape(-1), 30 * 80 + 40), 2.0, rtol=1e-5)


def test_contradicted_pixels_pass_through_without_confidence():
    """On the coarse evidence grid a pixel that contradicts its cell's median (here its cell's own sample of the
    new prediction, no re-projected keyframe landing) keeps its depth but loses its confidence; its agreeing
    cell-mates keep theirs."""
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    new = np.full((60, 80), 2.0, np.float32)
    new[21:40:2, 21:40:2] = 3.0                 # odd pixels of the cells: not the cells' samples (even pixels)
    conf = np.full_like(new, 0.8)
    nothing = KeyframeDepth(np.full_like(new, np.nan), conf, K, np.eye(4))
    out = fuse_keyframe(new, conf, K, np.eye(4), [nothing], FusionConfig(evidence_stride=2))
    np.testing.assert_array_equal(out.depth, new)                   # never dropped
    odd = new == 3.0
    assert np.all(out.confidence[odd] == 0.0)
    np.testing.assert_allclose(out.confidence[~odd], 0.8, rtol=1e-6)


def test_sources_splatted_together_equal_each_alone(seq):
    """All sources are projected and scattered in one go (per-source column offsets): the same as one by one."""
    tgt = seq.frames[10]
    srcs = [_kf(seq.frames[i].depth_gt, seq.frames[i], np.full((H, W), 0.25 * (j + 1), np.float32))
            for j, i in enumerate((2, 5, 8, 12))]
    d, c = splat_depth(srcs, tgt.K, tgt.T_world_cam, H, W, edge_rel=0.07)
    for j, s in enumerate(srcs):
        d1, c1 = splat_depth([s], tgt.K, tgt.T_world_cam, H, W, edge_rel=0.07)
        np.testing.assert_array_equal(d[j], d1[0])
        np.testing.assert_array_equal(c[j], c1[0])
        assert np.isfinite(d[j]).mean() > 0.5


def test_fusion_runs_single_threaded_and_restores_the_thread_count():
    """The fusion's many small ops run with one torch intra-op thread (a synchronisation per op costs more than it
    gains, dramatically on a loaded machine); the caller's setting is restored, also after an error."""
    import torch

    from mvs_depth_ros.core.threads import one_intra_op_thread, single_threaded
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        single_threaded(lambda: seen.append(torch.get_num_threads()))()
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with one_intra_op_thread():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        fusion = TemporalFusion(FusionConfig(mode="causal").resolved({}))
        K = np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])
        fusion.step(np.full((24, 32), 2.0, np.float32), np.full((24, 32), 0.9, np.float32), K, np.eye(4))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
