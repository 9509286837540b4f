"""Datasets <-> rosbag2 through rosbags: round trips, TF composition, info, corrupt bags, the CLI."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import require_shared
from mvs_depth_ros.data import bags
from mvs_depth_ros.data.bag_topics import BagFrames, BagTopics
from mvs_depth_ros.data.synthetic import render_sequence


@pytest.fixture(scope="module")
def seq():
    return render_sequence(n_frames=6, width=96, height=64, seed=3)


def _storage_file(bag, ext):
    return next(os.path.join(bag, p) for p in os.listdir(bag) if p.endswith(ext))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("mount", ["camera_link", ""])
def test_synthetic_round_trip(tmp_path, seq, storage, mount):
    out = tmp_path / "bag"
    frames = list(seq.frames)
    frames[2] = type(frames[2])(**{**frames[2].__dict__, "T_world_cam": None, "uid": 10**9})  # tracking lost
    s = bags.write_bag(frames, out, rate=5.0, storage=storage, start_ns=2 * 10**9,
                       tf_frames=BagFrames(mount=mount), source="test")
    assert s.frames == 6 and s.poses == 5 and s.depth_gt == 6
    assert s.stamps == [2 * 10**9 + i * 200_000_000 for i in range(6)]

    counters = bags.ReadCounters()
    back = list(bags.read_frames(out, counters=counters))
    assert [f.name for f in back] == [f.name for f in frames]
    assert [f.stamp for f in back] == s.stamps
    assert counters.frames == 6 and counters.no_pose == 1 and counters.bad_messages == 0
    for a, b in zip(back, frames):
        assert a.frame_id == "camera_optical_frame"
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.depth_gt, b.depth_gt)
        assert a.depth_gt.dtype == np.float32
        if b.T_world_cam is None:
            assert a.T_world_cam is None
        else:
            np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, atol=1e-9)


def test_tf_layout_and_info(tmp_path, seq):
    out = tmp_path / "bag"
    bags.write_bag(seq.frames[:3], out, rate=10.0, topics=BagTopics.from_prefix("/cam0"),
                   tf_frames=BagFrames(world="map", camera="cam0_optical", mount="cam0_link"))
    info = bags.bag_info(out)
    assert info["messages"] == 3 * 4 + 1
    assert info["topics"]["/cam0/image_raw"] == {"type": "sensor_msgs/msg/Image", "count": 3}
    assert info["topics"]["/cam0/depth_gt"]["count"] == 3
    assert info["topics"]["/tf_static"] == {"type": "tf2_msgs/msg/TFMessage", "count": 1}
    assert info["duration_s"] == pytest.approx(0.2)

    ts = bags.typestore()
    with bags.open_bag(out) as reader:
        tf_static_conn = next(c for c in reader.connections if c.topic == "/tf_static")
        assert tf_static_conn.ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"
        msgs = {}
        for conn, t, raw in bags.iter_messages(reader, out):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            msgs.setdefault(conn.topic, []).append((t, msg))
    (t0, static), = msgs["/tf_static"]
    tr = static.transforms[0]
    assert (tr.header.frame_id, tr.child_frame_id) == ("cam0_link", "cam0_optical")
    # REP 103: the optical z axis is the body x axis, optical x is body -y
    R = bags.transform_to_matrix(tr.transform)[:3, :3]
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    for t, m in msgs["/tf"]:
        assert bags.stamp_to_ns(m.transforms[0].header.stamp) == t
        assert (m.transforms[0].header.frame_id, m.transforms[0].child_frame_id) == ("map", "cam0_link")
    for t, m in msgs["/cam0/image_raw"] + msgs["/cam0/depth_gt"] + msgs["/cam0/camera_info"]:
        assert bags.stamp_to_ns(m.header.stamp) == t and m.header.frame_id == "cam0_optical"
    gt = msgs["/cam0/depth_gt"][0][1]
    assert gt.encoding == "32FC1" and gt.step == 4 * gt.width
    back = list(bags.read_frames(out, topics=BagTopics.from_prefix("/cam0"), world_frame="map"))
    np.testing.assert_allclose(back[1].T_world_cam, seq.frames[1].T_world_cam, atol=1e-9)


def test_tf_timeline_interpolates_between_samples():
    ts = bags.typestore()
    tl = bags.TfTimeline(max_gap_ns=10**9)
    T0, T1 = np.eye(4), np.eye(4)
    T1[:3, 3] = (2.0, 0.0, 0.0)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    T1[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]   # 45 degrees about z
    for t, T in ((0, T0), (10**8, T1)):
        tl.add(bags.tf_message([bags.transform_stamped(T, t, "odom", "cam")]), static=False)
    mid = tl.lookup("odom", "cam", 5 * 10**7)
    np.testing.assert_allclose(mid[:3, 3], (1.0, 0, 0), atol=1e-12)
    ang = np.degrees(np.arctan2(mid[1, 0], mid[0, 0]))
    assert ang == pytest.approx(22.5)
    assert tl.lookup("odom", "cam", 2 * 10**8) is None       # beyond the last sample, no tolerance
    assert tl.lookup("odom", "other", 0) is None
    del ts


def test_bad_messages_are_counted_not_fatal(tmp_path, seq):
    """A structurally valid bag with a garbage image payload and an unknown encoding."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    ts = bags.typestore()
    out = tmp_path / "bag"
    f = seq.frames[0]
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/camera/camera_info", bags.CAMERA_INFO_T, typestore=ts)
        im = w.add_connection("/camera/image_raw", bags.IMAGE_T, typestore=ts)
        for i in range(3):
            t = 10**9 + i
            w.write(ci, t, ts.serialize_cdr(bags.camera_info_msg(f.K, f.width, f.height, t, "cam"), bags.CAMERA_INFO_T))
        w.write(im, 10**9, ts.serialize_cdr(bags.image_msg(f.image, 10**9, "cam"), bags.IMAGE_T))
        w.write(im, 10**9 + 1, b"\x00\x01\x00\x00garbage")
        odd = bags.image_msg(f.image, 10**9 + 2, "cam")
        odd.encoding = "yuv422"
        w.write(im, 10**9 + 2, ts.serialize_cdr(odd, bags.IMAGE_T))
    c = bags.ReadCounters()
    frames = list(bags.read_frames(out, counters=c))
    assert len(frames) == 1 and c.bad_messages == 2 and c.no_pose == 1
    assert frames[0].name == str(10**9)   # not written by write_bag: named by stamp


def test_corrupt_and_truncated_bags_name_the_file(tmp_path, seq):
    good = tmp_path / "good"
    bags.write_bag(seq.frames[:2], good)
    trunc = tmp_path / "trunc"
    shutil.copytree(good, trunc)
    mcap = _storage_file(trunc, ".mcap")
    with open(mcap, "r+b") as fh:
        fh.truncate(os.path.getsize(mcap) // 2)
    with pytest.raises(bags.BagError, match=str(trunc)):
        list(bags.read_frames(trunc))

    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(bags.BagError, match="garbage.mcap"):
        bags.bag_info(garbage)

    bad_meta = tmp_path / "badmeta"
    shutil.copytree(good, bad_meta)
    (bad_meta / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    with pytest.raises(bags.BagError, match="badmeta"):
        list(bags.read_frames(bad_meta))

    with pytest.raises(bags.BagError, match="missing_bag"):
        bags.bag_info(tmp_path / "missing_bag")
    with pytest.raises(bags.BagError, match="exists"):
        bags.write_bag(seq.frames[:1], good)


def test_cli_convert_synthetic_and_info(tmp_path, capsys):
    out = tmp_path / "syn"
    assert bags.cli_main(["convert", "--synthetic", "--frames", "3", "--width", "64", "--height", "48",
                          "--out", str(out), "--storage", "sqlite3", "--rate", "20"]) == 0
    capsys.readouterr()
    assert bags.cli_main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["storage"] == ".db3"
    assert info["topics"]["/camera/image_raw"]["count"] == 3
    assert info["duration_s"] == pytest.approx(0.1)
    assert bags.frame_names(out) == {bags.DEFAULT_START_NS + i * 50_000_000: f"{i:05d}" for i in range(3)}
    assert bags.cli_main(["info", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


def test_hololens_scene_round_trip(tmp_path):
    root = require_shared("data", "hololens-000")
    from mvs_depth_ros.data.scenes import load_scene
    out = tmp_path / "holo"
    assert bags.cli_main(["convert", "--scene", str(root), "--frames", "3", "--out", str(out)]) == 0
    scene = load_scene(root)
    back = list(bags.read_frames(out))
    assert [f.name for f in back] == scene.names[:3]
    for a, b in zip(back, scene.frames(0, 3)):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.depth_gt, b.depth_gt)
        # the stored poses are rounded text, not exactly orthonormal: TF carries the nearest rotation
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, atol=1e-5)
