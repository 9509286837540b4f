"""Depth metrics: definitions checked on hand-computed cases."""
import json

import numpy as np
import pytest

from mvs_depth_ros.eval.metrics import aggregate, depth_metrics, write_metrics_json


def test_perfect_prediction():
    gt = np.full((4, 5), 2.0, np.float32)
    m = depth_metrics(gt.copy(), gt)
    assert m["abs_rel"] == 0 and m["rmse"] == 0 and m["a1"] == 1 and m["coverage"] == 1


def test_hand_computed_values():
    gt = np.array([[1.0, 2.0], [4.0, np.nan]], np.float32)
    pred = np.array([[1.5, 2.0], [2.0, 3.0]], np.float32)
    m = depth_metrics(pred, gt, min_gt=0.5)
    # valid: (1.0, 1.5), (2.0, 2.0), (4.0, 2.0)
    assert m["coverage"] == 1
    assert m["abs"] == pytest.approx((0.5 + 0 + 2.0) / 3)
    assert m["abs_rel"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0.25 / 1 + 0 + 4 / 4) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 4) / 3))
    assert m["abs_inv"] == pytest.approx((abs(1 - 1 / 1.5) + 0 + abs(0.25 - 0.5)) / 3)
    assert m["a1"] == pytest.approx(1 / 3)    # ratios 1.5, 1, 2
    assert m["a2"] == pytest.approx(2 / 3)    # 1.5 < 1.5625
    assert m["median_abs_rel"] == pytest.approx(0.5)


def test_coverage_and_min_gt():
    gt = np.array([[0.3, 1.0, 2.0, 3.0]], np.float32)
    pred = np.array([[0.3, np.nan, 2.2, 3.0]], np.float32)
    m = depth_metrics(pred, gt, min_gt=0.5)
    assert m["coverage"] == pytest.approx(2 / 3)  # 0.3 m GT is outside the domain
    assert m["abs_rel"] == pytest.approx(0.05)


def test_clip_to_range():
    gt = np.array([[10.0]], np.float32)
    m = depth_metrics(np.array([[50.0]], np.float32), gt, clip=(0.25, 20.0))
    assert m["abs_rel"] == pytest.approx(1.0)


def test_no_gt_gives_none_and_aggregate_skips_it():
    assert depth_metrics(np.ones((2, 2), np.float32), np.full((2, 2), np.nan, np.float32)) is None
    a = {"abs_rel": 0.1, "a1": 0.9, "coverage": 1.0}
    b = {"abs_rel": 0.3, "a1": 0.5, "coverage": 0.5}
    agg = aggregate([a, None, b])
    assert agg["frames"] == 2 and agg["abs_rel"] == pytest.approx(0.2) and agg["coverage"] == pytest.approx(0.75)


def test_nothing_covered_counts_in_coverage_only():
    gt = np.ones((2, 2), np.float32)
    m = depth_metrics(np.full((2, 2), np.nan, np.float32), gt)
    assert m["coverage"] == 0 and np.isnan(m["abs_rel"])
    agg = aggregate([m, depth_metrics(gt * 1.1, gt)])
    assert agg["coverage"] == pytest.approx(0.5) and agg["abs_rel"] == pytest.approx(0.1, rel=1e-5)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))


def test_json_writes_nan_as_null(tmp_path):
    write_metrics_json(tmp_path / "m.json", {"dense": {"abs_rel": float("nan")}}, [{"name": "a"}])
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["summary"]["dense"]["abs_rel"] is None and data["per_frame"] == [{"name": "a"}]
