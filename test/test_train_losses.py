"""Training losses on synthetic data, where the right answer is known exactly."""
import numpy as np
import pytest
import torch

from mvs_depth_ros.data.synthetic import render_sequence
from mvs_depth_ros.train.losses import (SelfSupervisedLoss, SupervisedLoss, depth_l1, edge_aware_smoothness,
                                        feature_metric_loss, multiscale_depth_l1, photometric_error,
                                        photometric_loss, relative_pose, warp_to_reference)


@pytest.fixture(scope="module")
def views():
    """A reference keyframe and two measurement frames (3 and 4 frames away, ~10-14 cm) at 64x48."""
    seq = render_sequence(12, 64, 48, seed=0)
    fr = [seq.frames[i] for i in (7, 3, 11)]
    images = torch.stack([torch.from_numpy(f.image).permute(2, 0, 1).float() / 255 for f in fr])[None]
    K = torch.from_numpy(np.stack([f.K for f in fr]))[None].float()
    T = torch.from_numpy(np.stack([f.T_world_cam for f in fr]))[None]
    gt = torch.from_numpy(fr[0].depth_gt)[None, None].float()
    return {"images": images, "K": K, "T_world_cam": T, "depth_gt": gt}


SCALES = (0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25)


# ----------------------------------------------------------------------------------------- supervised
def test_l1_zero_at_truth_and_grows_with_error(views):
    gt = views["depth_gt"]
    for inverse in (False, True):
        assert float(depth_l1(gt, gt, inverse=inverse)) == 0.0
        errs = [float(depth_l1(gt * s, gt, inverse=inverse)) for s in (1.05, 1.1, 1.3)]
        assert 0 < errs[0] < errs[1] < errs[2]
    # depth L1 of a uniform 10 % overestimate is exactly 10 % of the mean depth
    assert float(depth_l1(gt * 1.1, gt)) == pytest.approx(0.1 * float(gt.mean()), rel=1e-5)


def test_l1_multiscale_and_masks(views):
    gt = views["depth_gt"]
    # exact lower-resolution depth (nearest-downsampled truth) gives zero at every scale
    preds = [gt, gt[..., ::2, ::2], gt[..., ::4, ::4]]
    assert float(multiscale_depth_l1(preds, gt)) == 0.0
    # invalid ground truth (NaN, 0, out of range) is ignored whatever the prediction says there
    bad = gt.clone()
    bad[..., :10, :] = float("nan")
    bad[..., 10:20, :] = 0.0
    pred = gt.clone()
    pred[..., :20, :] = 1000.0
    assert float(depth_l1(pred, bad)) == 0.0
    assert float(depth_l1(pred, gt, max_depth=float(gt[..., 20:, :].max()) + 1)) > 0
    # no valid pixel: zero loss that still has a graph
    p = gt.clone().requires_grad_(True)
    z = depth_l1(p, torch.full_like(gt, float("nan")))
    z.backward()
    assert float(z.detach()) == 0.0 and p.grad is not None


# ----------------------------------------------------------------------------------------- warping
def test_warp_identity_pose_is_identity(views):
    img, K = views["images"][:, 0], views["K"][:, 0]
    depth = views["depth_gt"]
    warped, valid = warp_to_reference(img, depth, K, K, torch.eye(4, dtype=torch.float64)[None])
    assert bool(valid[..., 1:-1, 1:-1].all())
    assert torch.allclose(warped[..., 1:-1, 1:-1], img[..., 1:-1, 1:-1], atol=1e-4)
    d = depth.clone()
    d[..., 5, 7] = float("nan")
    _, valid = warp_to_reference(img, d, K, K, torch.eye(4, dtype=torch.float64)[None])
    assert not bool(valid[0, 0, 5, 7])


def test_warp_with_true_depth_reconstructs_reference(views):
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    warped, valid = warp_to_reference(imgs[:, 1], gt, K[:, 0], K[:, 1], relative_pose(T[:, 0], T[:, 1]))
    assert float(valid.float().mean()) > 0.5
    err_true = float((photometric_error(warped, imgs[:, 0]) * valid).sum() / valid.sum())
    err_none = float(photometric_error(imgs[:, 1], imgs[:, 0]).mean())
    assert err_true < 0.5 * err_none


# ------------------------------------------------------------------------------------- photometric
@pytest.mark.parametrize("automask", [True, False])
def test_photometric_minimal_at_true_depth(views, automask):
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    losses = [float(photometric_loss(imgs, gt * s, K, T, automask=automask).loss) for s in SCALES]
    i_true = SCALES.index(1.0)
    assert int(np.argmin(losses)) == i_true, losses
    # clearly larger for clearly wrong depth
    assert losses[0] > 1.3 * losses[i_true] and losses[-1] > 1.3 * losses[i_true]


def test_photometric_min_over_sources_and_occlusion(views):
    """The per-pixel minimum never exceeds the loss computed from either single source."""
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    both = photometric_loss(imgs, gt, K, T, automask=False)
    for s in (1, 2):
        one = photometric_loss(imgs[:, [0, s]], gt, K[:, [0, s]], T[:, [0, s]], automask=False)
        seen = torch.isfinite(one.reprojection)
        assert bool((both.reprojection[seen] <= one.reprojection[seen] + 1e-7).all())


def test_automask_ignores_static_camera(views):
    """Sources identical to the reference (static camera with a wrong pose) give zero loss and no gradient
    with auto-masking, and a misleading loss without it."""
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    static = imgs[:, [0, 0, 0]]
    depth = (gt * 1.3).requires_grad_(True)
    masked = photometric_loss(static, depth, K, T, automask=True)
    masked.loss.backward()
    assert float(masked.loss) == 0.0 and float(depth.grad.abs().sum()) == 0.0
    assert not bool(masked.automask.any())
    assert float(photometric_loss(static, gt, K, T, automask=False).loss) > 0.05


def test_photometric_gradient_points_to_truth(views):
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    for s, sign in ((0.85, -1.0), (1.15, 1.0)):
        scale = torch.tensor(s, requires_grad=True)
        photometric_loss(imgs, gt * scale, K, T).loss.backward()
        assert torch.isfinite(scale.grad) and float(scale.grad) * sign > 0, (s, float(scale.grad))


# -------------------------------------------------------------------------------------- smoothness
def test_edge_aware_smoothness():
    h, w = 32, 32
    flat_img = torch.full((1, 3, h, w), 0.5)
    edge_img = flat_img.clone()
    edge_img[..., w // 2:] = 1.0
    const = torch.full((1, 1, h, w), 2.0)
    step = const.clone()
    step[..., w // 2:] = 4.0
    assert float(edge_aware_smoothness(const, flat_img)) == pytest.approx(0.0, abs=1e-7)
    # invariant to the depth scale (mean-normalised)
    assert float(edge_aware_smoothness(step, flat_img)) == pytest.approx(
        float(edge_aware_smoothness(step * 3, flat_img)), rel=1e-5)
    # a depth edge on an image edge costs less than the same depth edge on a flat image
    assert float(edge_aware_smoothness(step, edge_img)) < float(edge_aware_smoothness(step, flat_img))
    noisy = const + 0.3 * torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0))
    assert float(edge_aware_smoothness(noisy, flat_img)) > 0.01


# ---------------------------------------------------------------------------------- feature-metric
def test_feature_metric_minimal_near_true_depth(views):
    imgs, K, T, gt = views["images"], views["K"], views["T_world_cam"], views["depth_gt"]
    # a fixed, view-independent feature: zero-mean 5x5 grey patches (cosine distance = 1 - ZNCC)
    grey = imgs[0].mean(1, keepdim=True)
    feats = torch.nn.functional.unfold(grey, 5, padding=2).view(3, 25, 48, 64)
    feats = (feats - feats.mean(1, keepdim=True))[None]
    vals = [float(feature_metric_loss(feats[:, 0], feats[:, 1:], gt * s, K, T, (48, 64))) for s in SCALES]
    # minimal within 5 % of the truth (patch features are coarser than SSIM + L1), clearly larger at +-20 %
    assert SCALES[int(np.argmin(vals))] in (0.95, 1.0, 1.05), vals
    i = SCALES.index(1.0)
    assert vals[0] > 1.2 * vals[i] and vals[-1] > 1.1 * vals[i], vals


# ------------------------------------------------------------------------------------------ composite
def test_composite_losses(views):
    gt = views["depth_gt"]
    sup = SupervisedLoss(0.25, 20.0)
    assert float(sup([gt, gt[..., ::2, ::2]], views)["loss"]) == 0.0
    with pytest.raises(ValueError, match="ground-truth"):
        sup([gt], {k: v for k, v in views.items() if k != "depth_gt"})
    ss = SelfSupervisedLoss()
    good = ss([gt, gt[..., ::2, ::2]], views)
    bad = ss([gt * 1.2, gt[..., ::2, ::2] * 1.2], views)
    assert set(good) >= {"loss", "photometric", "smoothness"}
    assert float(good["loss"]) < float(bad["loss"])
