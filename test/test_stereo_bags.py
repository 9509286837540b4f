"""Stereo datasets -> rosbag2 -> StereoFrames: exact round trip, the ROS stereo camera_info convention
(right P with Tx = -fx B, doffs in the right cx), Middlebury's doffs, the CLI, and bad bags."""
import json

import numpy as np
import pytest

from conftest import require_shared
from mvs_depth_ros.data.bags import BagError, bag_info, typestore
from mvs_depth_ros.data.stereo_bags import (StereoBagFrames, StereoBagTopics, StereoReadCounters, cli_main,
                                            read_stereo_frames, stereo_camera_infos, stereo_geometry,
                                            write_stereo_bag)
from mvs_depth_ros.data.synthetic import render_stereo_sequence


@pytest.fixture(scope="module")
def pairs():
    return render_stereo_sequence(3, 96, 64, baseline=0.12, seed=1)


def test_round_trip_is_exact(tmp_path, pairs):
    s = write_stereo_bag(pairs, tmp_path / "b", rate=5.0, storage="sqlite3")
    assert s.frames == 3 and s.poses == 3 and s.ground_truth == 3
    assert np.all(np.diff(s.stamps) == 200_000_000)
    info = bag_info(tmp_path / "b")
    t = StereoBagTopics()
    for topic in (t.left_image, t.right_image, t.left_info, t.right_info, t.disparity_gt, t.depth_gt, t.tf):
        assert info["topics"][topic]["count"] == 3
    assert info["topics"]["/tf_static"]["count"] == 1
    c = StereoReadCounters()
    back = list(read_stereo_frames(tmp_path / "b", counters=c))
    assert c.pairs == 3 and c.no_pose == 0 and c.bad_messages == 0 and c.unpaired_images == 0
    for a, b, stamp in zip(pairs, back, s.stamps):
        np.testing.assert_array_equal(a.left, b.left)
        np.testing.assert_array_equal(a.right, b.right)
        np.testing.assert_array_equal(a.disparity_gt, b.disparity_gt)
        np.testing.assert_allclose(b.K, a.K)
        assert b.baseline == pytest.approx(0.12, abs=1e-12) and b.doffs == 0.0
        np.testing.assert_allclose(b.T_world_cam, a.T_world_cam, atol=1e-9)   # through rig body + REP 103
        assert b.stamp == stamp and b.name == a.name and b.frame_id == StereoBagFrames.left


def test_depth_gt_topic_is_metres(tmp_path, pairs):
    from mvs_depth_ros.data.bags import decode_depth, iter_messages, open_bag
    write_stereo_bag(pairs[:1], tmp_path / "b")
    f = pairs[0]
    with open_bag(tmp_path / "b") as r:
        (conn, _, raw), = list(iter_messages(r, tmp_path / "b", [StereoBagTopics().depth_gt]))
        z = decode_depth(typestore().deserialize_cdr(raw, conn.msgtype))
    ok = np.isfinite(f.disparity_gt)
    np.testing.assert_array_equal(np.isfinite(z), ok)
    np.testing.assert_allclose(z[ok], f.K[0, 0] * 0.12 / f.disparity_gt[ok], rtol=1e-6)


def test_camera_info_convention():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    left, right = stereo_camera_infos(K, 640, 480, baseline=0.2, doffs=12.5, stamp_ns=5)
    P = right.p.reshape(3, 4)
    assert P[0, 3] == pytest.approx(-100.0) and P[0, 2] == pytest.approx(332.5)
    np.testing.assert_allclose(left.p.reshape(3, 4)[:, 3], 0)
    K2, B, doffs = stereo_geometry(left, right)
    np.testing.assert_allclose(K2, K)
    assert B == pytest.approx(0.2) and doffs == pytest.approx(12.5)
    right.p = np.concatenate([K.reshape(-1)[:3], [0.0], K.reshape(-1)[3:6], [0.0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match="Tx"):
        stereo_geometry(left, right)


def test_middlebury_pair_keeps_its_doffs(tmp_path):
    root = require_shared("data", "middlebury-2014-motorcycle-q")
    out = tmp_path / "mb"
    assert cli_main(["convert", "--middlebury", str(root), "--frames", "2", "--out", str(out)]) == 0
    info = bag_info(out)
    assert "/tf" not in info["topics"] or info["topics"]["/tf"]["count"] == 0   # no poses in Middlebury
    c = StereoReadCounters()
    back = list(read_stereo_frames(out, counters=c))
    assert len(back) == 2 and c.no_pose == 2
    from mvs_depth_ros.data.middlebury import load_middlebury
    p = load_middlebury(root)
    for b in back:
        assert b.doffs == pytest.approx(p.calib.doffs) and b.baseline == pytest.approx(p.calib.baseline_m)
        np.testing.assert_array_equal(b.disparity_gt, p.frame.disparity_gt)
        assert b.T_world_cam is None


def test_cli_synthetic_and_errors(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli_main(["convert", "--synthetic", "--frames", "2", "--width", "64", "--height", "48",
                     "--prefix", "/cam", "--out", str(out)]) == 0
    assert "/cam/left/image_rect" in capsys.readouterr().out
    back = list(read_stereo_frames(out, topics=StereoBagTopics.from_prefix("/cam")))
    assert len(back) == 2 and back[0].left.shape == (48, 64, 3)
    assert cli_main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"]["/cam/right/camera_info"]["count"] == 2
    assert cli_main(["convert", "--synthetic", "--frames", "1", "--out", str(out)]) == 1   # exists
    assert "cannot create bag" in capsys.readouterr().err
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"\0" * 64)
    with pytest.raises(BagError, match="bad.mcap"):
        list(read_stereo_frames(bad))
