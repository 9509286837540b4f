"""Stereo metrics on hand-made arrays with known answers."""
import numpy as np
import pytest

from mvs_depth_ros.eval.stereo_metrics import (coverage_at_confidence, depth_abs_rel, disparity_metrics,
                                               temporal_epe)


def test_disparity_metrics_known_values():
    gt = np.array([[10.0, 10.0, 100.0, 100.0, 50.0, np.nan]], np.float32)
    pred = np.array([[10.5, 11.5, 102.5, 96.0, np.nan, 3.0]], np.float32)
    m = disparity_metrics(pred, gt)
    # covered: 4 of the 5 valid GT pixels; errors 0.5, 1.5, 2.5, 4.0
    assert m["coverage"] == pytest.approx(0.8) and m["n_pixels"] == 4
    assert m["epe"] == pytest.approx((0.5 + 1.5 + 2.5 + 4.0) / 4)
    assert m["bad1"] == pytest.approx(75.0) and m["bad2"] == pytest.approx(50.0)
    assert m["bad3"] == pytest.approx(25.0)
    assert m["d1"] == pytest.approx(0.0)   # 4 px on a 100 px disparity is < 5 %
    gt2 = gt.copy()
    gt2[0, 3] = 20.0
    pred2 = pred.copy()
    pred2[0, 3] = 24.0                    # 4 px on 20 px: > 3 px and > 5 %
    assert disparity_metrics(pred2, gt2)["d1"] == pytest.approx(25.0)
    mask = np.array([[1, 1, 0, 0, 1, 1]], bool)
    assert disparity_metrics(pred, gt, mask)["epe"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        disparity_metrics(pred[:, :3], gt)
    with pytest.raises(ValueError, match="no valid"):
        disparity_metrics(pred, np.full_like(gt, np.nan))
    assert np.isnan(disparity_metrics(np.full_like(gt, np.nan), gt)["epe"])


def test_depth_abs_rel():
    gt = np.array([[1.0, 2.0, np.nan]], np.float32)
    pred = np.array([[1.1, 1.8, 5.0]], np.float32)
    assert depth_abs_rel(pred, gt) == pytest.approx(0.1)


def test_coverage_at_confidence():
    gt = np.zeros((1, 4), np.float32)
    pred = np.array([[0.0, 0.0, 3.0, 5.0]], np.float32)
    conf = np.array([[1.0, 0.9, 0.2, 0.1]], np.float32)
    lo = coverage_at_confidence(pred, conf, gt, 0.0)
    hi = coverage_at_confidence(pred, conf, gt, 0.5)
    assert lo["coverage"] == 1.0 and lo["epe"] == pytest.approx(2.0)
    assert hi["coverage"] == 0.5 and hi["epe"] == 0.0


def test_temporal_epe():
    rng = np.random.default_rng(0)
    gts = [np.full((8, 8), 10.0 + t, np.float32) for t in range(5)]   # the true disparity grows by 1 / frame
    biased = [g + 0.7 for g in gts]                                     # constant bias: no flicker
    assert temporal_epe(biased, gts) == pytest.approx(0.0, abs=1e-6)
    flicker = [g + (0.3 if t % 2 else -0.3) for t, g in enumerate(gts)]  # alternating error: 0.6 per step
    assert temporal_epe(flicker, gts) == pytest.approx(0.6, abs=1e-5)
    frozen = [gts[0]] * 5                                               # misses the true change of 1 px
    assert temporal_epe(frozen, gts) == pytest.approx(1.0)
    noisy = [g + rng.normal(0, 0.1, g.shape).astype(np.float32) for g in gts]
    noisy[2][:4] = np.nan                                               # missing pixels are skipped
    assert 0.05 < temporal_epe(noisy, gts) < 0.2
    masks = [np.zeros((8, 8), bool)] * 5
    assert np.isnan(temporal_epe(flicker, gts, masks))
    with pytest.raises(ValueError):
        temporal_epe(flicker, gts[:3])
