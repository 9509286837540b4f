"""Stereo core: disparity <-> depth, StereoResult, StereoPipeline state handling, and the SGBM backend."""
import numpy as np
import pytest

from mvs_depth_ros.core.frame import StereoFrame
from mvs_depth_ros.core.stereo import (StereoPipeline, StereoPipelineConfig, StereoResult,
                                       depth_to_disparity, disparity_to_depth, frame_doffs)
from mvs_depth_ros.data.synthetic import render_stereo_sequence
from mvs_depth_ros.eval.stereo_metrics import disparity_metrics
from mvs_depth_ros.models.stereo import SGBMConfig, SGBMStereo, TemporalStereo, build
from mvs_depth_ros.models.stereo.sgbm import left_right_difference

W, H = 160, 128


@pytest.fixture(scope="module")
def pairs():
    return render_stereo_sequence(4, W, H, baseline=0.2, seed=0)   # disparities ~7-17 px


def test_disparity_depth_round_trip():
    d = np.array([[10.0, np.nan, 0.0, -3.0, 40.0]], np.float32)
    z = disparity_to_depth(d, fx=500.0, baseline=0.1)
    np.testing.assert_allclose(z[0, [0, 4]], [5.0, 1.25])
    assert np.isnan(z[0, 1:4]).all()
    np.testing.assert_allclose(depth_to_disparity(z, 500.0, 0.1), [[10.0, np.nan, np.nan, np.nan, 40.0]],
                               rtol=1e-6, equal_nan=True)
    # Middlebury offset: Z = f B / (d + doffs)
    z = disparity_to_depth(np.array([[60.0]], np.float32), 999.421, 0.193001, doffs=32.778)
    np.testing.assert_allclose(z, 999.421 * 0.193001 / 92.778, rtol=1e-6)
    np.testing.assert_allclose(depth_to_disparity(z, 999.421, 0.193001, 32.778), 60.0, rtol=1e-5)
    assert z.dtype == np.float32
    with pytest.raises(ValueError):
        disparity_to_depth(d, 0.0, 0.1)


def test_offset_frame_and_result_validation(pairs):
    p = pairs[0]
    assert frame_doffs(p) == 0.0
    o = StereoFrame(left=p.left, right=p.right, K=p.K, baseline=0.2, doffs=12.5)
    assert isinstance(o, StereoFrame) and frame_doffs(o) == 12.5
    z = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="float32"):
        StereoResult(disparity=z.astype(np.float64), depth=z, confidence=z, K=p.K, baseline=0.2)
    with pytest.raises(ValueError, match="shape"):
        StereoResult(disparity=z, depth=z[:3], confidence=z, K=p.K, baseline=0.2)


def test_left_right_difference():
    dl = np.full((3, 10), 2.0, np.float32)
    dr = np.full((3, 10), 2.0, np.float32)
    diff = left_right_difference(dl, dr)
    assert np.isnan(diff[:, :2]).all()            # u - d falls outside the right image
    np.testing.assert_array_equal(diff[:, 2:], 0.0)
    dr[:, 5] = 5.0                                # right pixel 5 sees something else
    diff = left_right_difference(dl, dr)
    np.testing.assert_array_equal(diff[:, 7], 3.0)
    dl[0, 4] = np.nan
    assert np.isnan(left_right_difference(dl, dr)[0, 4])


def test_sgbm_on_synthetic_pair(pairs):
    p = pairs[1]
    est = build(num_disparities=32, block_size=5)
    r = est.estimate(p)
    assert r.disparity.dtype == np.float32 and r.disparity.shape == (H, W)
    m = disparity_metrics(r.disparity, p.disparity_gt)
    assert m["epe"] < 0.5 and m["bad2"] < 3.0 and m["coverage"] > 0.6, m
    invalid = ~np.isfinite(r.disparity)
    assert invalid[:, :32].all()                               # no match possible left of num_disparities
    assert np.array_equal(invalid, ~np.isfinite(r.depth))
    np.testing.assert_allclose(r.depth[~invalid], p.K[0, 0] * 0.2 / r.disparity[~invalid], rtol=1e-5)
    assert r.confidence.min() >= 0 and r.confidence.max() <= 1
    assert np.all(r.confidence[invalid] == 0) and np.all(r.confidence[~invalid] > 0)
    # sub-pixel: values are not all integers
    assert np.mean(np.abs(r.disparity[~invalid] - np.rint(r.disparity[~invalid])) > 0.01) > 0.3
    # the confidence ranks errors: the most confident pixels are more accurate than the rest
    err = np.abs(r.disparity - p.disparity_gt)
    hi = ~invalid & (r.confidence >= 0.99)
    lo = ~invalid & (r.confidence < 0.99)
    assert hi.sum() > 100 and lo.sum() > 100
    assert err[hi].mean() < err[lo].mean()


def test_lr_check_removes_errors(pairs):
    p = pairs[2]
    with_lr = SGBMStereo(SGBMConfig(num_disparities=32, uniqueness_levels=())).estimate(p)
    no_lr = SGBMStereo(SGBMConfig(num_disparities=32, uniqueness_levels=(), lr_check=False)).estimate(p)
    removed = np.isfinite(no_lr.disparity) & ~np.isfinite(with_lr.disparity)
    kept = np.isfinite(with_lr.disparity)
    assert removed.sum() > 20
    err = np.abs(no_lr.disparity - p.disparity_gt)
    assert np.nanmean(err[removed]) > 2 * np.nanmean(err[kept])


def test_build_options():
    est = build(num_disparities=48, block_size=3, mode="sgbm_3way")
    assert isinstance(est, SGBMStereo) and est.config.num_disparities == 48
    t = build(temporal=True, temporal_max_weight=3.0, uniqueness_levels=[20])
    assert isinstance(t, TemporalStereo) and t.config.max_weight == 3.0 and t.base.config.uniqueness_levels == (20,)
    with pytest.raises(ValueError, match="unknown SGBM option"):
        build(num_disparity=64)
    with pytest.raises(ValueError, match="unknown temporal option"):
        build(temporal=True, temporal_foo=1)
    with pytest.raises(ValueError, match="without temporal=True"):
        build(temporal_max_weight=2.0)
    assert isinstance(build(checkpoint=None, device="cpu"), SGBMStereo)
    with pytest.raises(ValueError, match="no weights"):
        build(checkpoint="weights.ckpt")
    with pytest.raises(ValueError, match="device"):
        build(device="tpu")
    with pytest.raises(ValueError, match="multiple of 16"):
        SGBMConfig(num_disparities=40)
    with pytest.raises(ValueError, match="odd"):
        SGBMConfig(block_size=4)


def test_pipeline_carries_and_resets_state(pairs):
    pl = StereoPipeline(build(num_disparities=32, temporal=True), StereoPipelineConfig(max_gap_s=1.0))
    r0 = pl.process(pairs[0])
    assert r0.info["temporal"] == "no state" and pl.state is not None
    r1 = pl.process(pairs[1])
    assert r1.info["temporal"] == "warped" and not r1.info["pipeline_reset"]
    assert "compute_ms" in r1.info
    # a stamp going backwards (a bag loop) drops the state before estimating
    r2 = pl.process(pairs[0])
    assert r2.info["pipeline_reset"] and r2.info["temporal"] == "no state"
    assert pl.counters.resets == 1 and pl.counters.frames == 3
    pl.reset()
    assert pl.state is None and pl.counters.resets == 2
    with pytest.raises(ValueError):
        StereoPipelineConfig(max_gap_s=-1.0)
