"""The temporal stereo stage: exact warping, the fusion rule, resets, and measured flicker reduction."""
import numpy as np
import pytest

from mvs_depth_ros.core.geometry import relative_pose
from mvs_depth_ros.core.stereo import StereoPipeline
from mvs_depth_ros.data.synthetic import render_stereo_sequence
from mvs_depth_ros.eval.stereo_metrics import disparity_metrics, temporal_epe
from mvs_depth_ros.models.stereo import TemporalConfig, TemporalStereo, build
from mvs_depth_ros.models.stereo.temporal import forward_warp_disparity, fuse

W, H, B = 160, 128, 0.2


@pytest.fixture(scope="module")
def pairs():
    return render_stereo_sequence(10, W, H, baseline=B, seed=1)


def test_forward_warp_of_ground_truth_matches_next_frame(pairs):
    """Warping frame t-1's exact disparity with the exact poses reproduces frame t's exact disparity."""
    for t in (1, 5):
        prev, cur = pairs[t - 1], pairs[t]
        T = relative_pose(cur.T_world_cam, prev.T_world_cam)
        w = np.ones((H, W), np.float32)
        d, wd = forward_warp_disparity(prev.disparity_gt, w, cur.K, B, T)
        ok = np.isfinite(d)
        assert ok.mean() > 0.9 and np.all(wd[ok] == 1.0)
        err = np.abs(d - cur.disparity_gt)[ok]
        assert np.median(err) < 0.01 and np.mean(err < 0.1) > 0.97, (np.median(err), np.mean(err < 0.1))
        # without the sub-pixel resampling the rounding of the splat shows
        d0, _ = forward_warp_disparity(prev.disparity_gt, w, cur.K, B, T, subpixel=False)
        assert np.median(np.abs(d0 - cur.disparity_gt)[np.isfinite(d0)]) > np.median(err)
    # identity motion is the identity
    d, _ = forward_warp_disparity(pairs[0].disparity_gt, w, pairs[0].K, B, np.eye(4))
    np.testing.assert_allclose(d, pairs[0].disparity_gt, atol=1e-4)


def test_fuse_rule():
    cfg = TemporalConfig(max_weight=3.0, outlier_px=1.0, outlier_rel=0.0, fill_missing=True, fill_decay=0.5,
                         min_weight=0.1)
    pred_d = np.array([[10.0, 10.0, 10.0, np.nan, 10.0]], np.float32)
    pred_w = np.array([[1.0, 3.0, 1.0, 0.0, 1.0]], np.float32)
    meas_d = np.array([[11.0, 10.5, 20.0, 7.0, np.nan]], np.float32)
    meas_c = np.array([[1.0, 1.0, 0.8, 0.6, 0.0]], np.float32)
    d, w, outliers = fuse(pred_d, pred_w, meas_d, meas_c, cfg)
    np.testing.assert_allclose(d, [[10.5, 10.125, 20.0, 7.0, 10.0]])   # average, average, restart, new, carried
    np.testing.assert_allclose(w, [[2.0, 3.0, 0.8, 0.6, 0.5]])          # capped at max_weight, fill decays
    assert outliers == pytest.approx(1 / 3)
    d, w, _ = fuse(pred_d, pred_w, meas_d, meas_c, TemporalConfig(fill_missing=False))
    assert np.isnan(d[0, 4]) and w[0, 4] == 0


def _run(est, pairs):
    pl = StereoPipeline(est)
    return [pl.process(p) for p in pairs]


def test_temporal_reduces_flicker_without_losing_accuracy(pairs):
    gts = [p.disparity_gt for p in pairs]
    base = [r.disparity for r in _run(build(num_disparities=32), pairs)]
    res = _run(build(num_disparities=32, temporal=True), pairs)
    filt = [r.disparity for r in res]
    assert [r.info["temporal"] for r in res] == ["no state"] + ["warped"] * (len(pairs) - 1)
    tepe_base, tepe_filt = temporal_epe(base, gts), temporal_epe(filt, gts)
    epe_base = np.mean([disparity_metrics(d, g)["epe"] for d, g in zip(base, gts)])
    epe_filt = np.mean([disparity_metrics(d, g)["epe"] for d, g in zip(filt, gts)])
    assert tepe_filt < 0.85 * tepe_base, (tepe_base, tepe_filt)
    assert epe_filt < 1.05 * epe_base, (epe_base, epe_filt)
    # accumulated evidence raises the confidence where frames agree
    assert np.mean(res[-1].confidence[np.isfinite(filt[-1])]) >= np.mean(res[0].confidence[np.isfinite(filt[0])])
    # the depth follows the filtered disparity
    ok = np.isfinite(filt[-1])
    np.testing.assert_allclose(res[-1].depth[ok], pairs[-1].K[0, 0] * B / filt[-1][ok], rtol=1e-5)


def test_resets(pairs):
    est = TemporalStereo(build(num_disparities=32, uniqueness_levels=()))
    r0 = est.estimate(pairs[0])
    # a pose jump beyond reset_translation drops the state
    far = pairs[1]
    far_T = far.T_world_cam.copy()
    far_T[:3, 3] += (1.0, 0.0, 0.0)
    jumped = type(far)(**{**far.__dict__, "T_world_cam": far_T})
    assert est.estimate(jumped, r0.state).info["temporal"] == "large motion"
    # without poses the previous map is used in place ("static" rig)
    nopose = [type(p)(**{**p.__dict__, "T_world_cam": None}) for p in pairs[:2]]
    r = est.estimate(nopose[1], est.estimate(nopose[0]).state)
    assert r.info["temporal"] == "static" and not r.info["temporal_reset"]
    # everything suddenly twice as close (a new scene): most pixels disagree -> full reset
    closer = render_stereo_sequence(1, W, H, baseline=2 * B, seed=1)[0]
    closer = type(closer)(**{**closer.__dict__, "baseline": B, "T_world_cam": None})
    r = est.estimate(closer, est.estimate(nopose[0]).state)
    assert r.info["temporal_reset"] and r.info["temporal"] == "scene changed"
    np.testing.assert_array_equal(r.disparity, est.base.estimate(closer).disparity)
    # another image size
    small = render_stereo_sequence(1, 96, 64, baseline=B, seed=1)[0]
    assert est.estimate(small, r0.state).info["temporal"] == "camera changed"
