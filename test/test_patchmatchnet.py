"""PatchmatchNet: strict loading of the published checkpoint, conformance with the official fixture
(``shared/fixtures/patchmatchnet``) at every stored stage, seeded initialisation, and the estimator end to
end on real HoloLens frames.

Tolerances: this torch build's CPU kernels differ from the fixture's by ~1e-5 on the first learned
outputs (the view weights); the patchmatch stages amplify that only where a hypothesis is nearly tied.
"""
import cv2
import numpy as np
import pytest
import torch

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.models.checkpoints import CheckpointError
from mvs_depth_ros.models.mvs_common import load_official_weights
from mvs_depth_ros.models.patchmatchnet import PatchmatchNet, build, photometric_confidence


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _close(a, b, atol, outlier_frac=0.0, rtol=0.0):
    a = a.detach().cpu().numpy().reshape(b.shape).astype(np.float64)
    bad = np.abs(a - b) > atol + rtol * np.abs(b)
    assert bad.mean() <= outlier_frac, f"{bad.sum()} of {bad.size} values off by > {atol} (max {np.abs(a - b).max():.3g})"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(require_shared("fixtures", "patchmatchnet", "golden.npz")))


@pytest.fixture(scope="module")
def ckpt():
    return str(require_shared("weights", "patchmatchnet", "params_000007.ckpt"))


@pytest.fixture(scope="module")
def out(golden, ckpt):
    net = PatchmatchNet()
    load_official_weights(net, ckpt, "PatchmatchNet")
    net.eval()
    x = golden["in_images_net_float32"]
    with torch.inference_mode():
        return net([_t(x[v])[None] for v in range(4)], _t(golden["in_intrinsics_320x256"])[None],
                   _t(golden["in_extrinsics_w2c"])[None], torch.tensor([0.25]), torch.tensor([20.0]),
                   init_uniform=_t(golden["out_stage3_init_rand_uniform"])[None])


def test_checkpoint_loads_strict(ckpt):
    net = PatchmatchNet()
    load_official_weights(net, ckpt, "PatchmatchNet")
    assert len(net.state_dict()) == 242
    assert sum(t.numel() for t in net.state_dict().values()) == 223882


def test_mismatched_checkpoint_is_a_readable_error():
    ck = require_shared("weights", "itermvs", "dtu", "model_000015.ckpt")
    with pytest.raises(CheckpointError, match=r"does not match PatchmatchNet.*missing keys: feature\.conv0"):
        load_official_weights(PatchmatchNet(), str(ck), "PatchmatchNet")


def test_seed_zero_reproduces_the_official_draw(golden):
    g = torch.Generator().manual_seed(0)
    draw = torch.rand(PatchmatchNet().init_shape(256, 320), generator=g)
    np.testing.assert_array_equal(draw[0].numpy(), golden["out_stage3_init_rand_uniform"])


def test_features_view_weights_and_scores(out, golden):
    for s in (1, 2, 3):
        _close(out["ref_feature"][s][0], golden[f"out_ref_feature_stage{s}"], 1e-5)
        _close(out["view_weights"][s][0], golden[f"out_stage{s}_view_weights"], 1e-4)
    _close(out["score"][3][0], golden["out_stage3_score"], 1e-4)
    _close(out["score"][2][0], golden["out_stage2_score"], 1e-3, outlier_frac=1e-4)
    _close(out["score"][1][0], golden["out_stage1_score"], 1e-3, outlier_frac=3e-3)


def test_patchmatch_depths_every_iteration(out, golden):
    dp = out["depth_patchmatch"]
    for stage, iters in ((3, 2), (2, 2), (1, 1)):
        assert len(dp[stage]) == iters
        for i in range(iters):
            _close(dp[stage][i][0, 0], golden[f"out_depth_stage{stage}_iter{i}"], 1e-4, rtol=1e-4)


def test_refinement_and_confidence(out, golden):
    _close(out["depth"][0, 0], golden["out_depth_refined_full"], 2e-4, outlier_frac=1e-4)
    _close(out["confidence"][0, 0], golden["out_photometric_confidence_full"], 1e-3, outlier_frac=5e-3)
    # confidence from the fixture's own stage-1 score: the formula alone, exact
    conf = photometric_confidence(_t(golden["out_stage1_score"])[None], (256, 320))
    _close(conf[0, 0], golden["out_photometric_confidence_full"], 1e-6)


def _frames(golden, float_path=False):
    K540 = np.loadtxt(require_shared("data", "hololens-000", "K.txt"))
    frames = []
    for v in range(3):
        raw = golden["in_images_raw_rgb_uint8_540x360"][v]
        f = Frame(image=raw, K=K540, T_world_cam=golden["in_poses_c2w_float64"][v]).resized(320, 256)
        if float_path:
            f.image_float = cv2.resize(raw.astype(np.float32), (320, 256), interpolation=cv2.INTER_LINEAR)
        frames.append(f)
    return frames


def test_estimator_end_to_end_and_seeding(golden, ckpt):
    est = build(ckpt, device="cpu", min_depth=0.25, max_depth=20.0, seed=0)
    frames = _frames(golden, float_path=True)
    res = est.estimate(frames[0], frames[1:], est.initial_state())
    assert res.depth.shape == (256, 320) and res.depth.dtype == np.float32
    assert np.isfinite(res.depth).all() and 0.25 <= res.depth.min() and res.depth.max() <= 20.0
    assert 0.0 <= res.confidence.min() and res.confidence.max() <= 1.0
    gt = golden["in_gt_depth_320x256_m"]
    m = gt >= 0.5
    abs_rel = float(np.mean(np.abs(res.depth[m] - gt[m]) / gt[m]))
    assert abs(abs_rel - 0.088) < 0.005                    # fixture README: 0.088 with 3 sources, here 2
    # same seed -> identical result (features from the cache); another seed -> a different draw
    again = est.estimate(frames[0], frames[1:], None)
    assert est.cache.hits >= 3
    np.testing.assert_array_equal(res.depth, again.depth)
    other = build(ckpt, device="cpu", seed=1).estimate(frames[0], frames[1:], None)
    assert not np.array_equal(res.depth, other.depth)
    assert np.median(np.abs(other.depth - res.depth)) < 0.02
