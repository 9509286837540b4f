"""stereo_node in its own process over DDS.

* A synthetic stereo video (exact disparity) is converted to a rosbag2 (``data/stereo_bags.py``) and
  played by ``player_node`` in a third process; what the node publishes (disparity, depth, confidence,
  depth/camera_info, points, /diagnostics) is checked against the ground truth: EPE, depth error,
  stamps, frames, encodings, shapes, the DisparityImage geometry, points finite exactly where depth is.
* Bad input from test publishers (image before camera_info, unsynchronised pair, left/right size
  mismatch, unsupported encoding, right camera_info without a baseline, stamps going backwards) is
  counted in /diagnostics and never stops the node; approximate sync pairs offset stamps.
"""
import time

import numpy as np
import pytest

from ros_helpers import NodeProcess, Probe, require_rclpy

require_rclpy()

from mvs_depth_ros.ros import conversions as C  # noqa: E402
from mvs_depth_ros.ros import interfaces  # noqa: E402
from mvs_depth_ros.ros.diagnostics import status_values  # noqa: E402

W, H = 160, 128
BASELINE = 0.1
N_FRAMES = 8
NODE = "mvs_depth_ros.ros.stereo_node"
BASE_PARAMS = dict(device="cpu", num_disparities=16, diagnostics_period=0.2, warn_period=0.0)


@pytest.fixture(scope="module")
def pairs():
    from mvs_depth_ros.data.synthetic import render_stereo_sequence
    return render_stereo_sequence(N_FRAMES, W, H, baseline=BASELINE, seed=0)


@pytest.fixture(scope="module")
def stereo_bag(pairs, tmp_path_factory):
    from mvs_depth_ros.data.stereo_bags import write_stereo_bag
    out = tmp_path_factory.mktemp("stereo_bag") / "bag"
    s = write_stereo_bag(pairs, out, rate=10.0)
    return out, dict(zip(s.stamps, pairs))


def _diag(box):
    vals = [status_values(m.status[0]) for _, m in box if m.status and "stereo depth" in m.status[0].name]
    return vals[-1] if vals else {}


def _wait_counter(probe, box, key, at_least, proc, timeout=20.0):
    ok = probe.wait_for(lambda: int(_diag(box).get(key, -1)) >= at_least, timeout, proc)
    assert ok, f"/diagnostics {key} never reached {at_least}: {_diag(box)}\n{proc.output()[-3000:]}"


def test_stereo_node_on_a_played_stereo_bag(stereo_bag):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from stereo_msgs.msg import DisparityImage
    bag, by_stamp = stereo_bag
    with_tf = interfaces.tf_message_available()
    params = dict(BASE_PARAMS, temporal=True, world_frame="odom" if with_tf else "", tf_timeout=0.5)
    # the node in namespace /stereo: its relative inputs are the bag's /stereo/left/image_rect, ...
    with NodeProcess(NODE, params, remaps={"__ns": "/stereo"}) as proc:
        probe = Probe("stereo_bag_test")
        try:
            disp = probe.subscribe(DisparityImage, "/stereo/disparity")
            depth = probe.subscribe(Image, "/stereo/depth")
            conf = probe.subscribe(Image, "/stereo/confidence")
            info = probe.subscribe(CameraInfo, "/stereo/depth/camera_info")
            points = probe.subscribe(PointCloud2, "/stereo/points")
            diag = probe.subscribe(DiagnosticArray, "/diagnostics")
            assert probe.wait_for(lambda: len(diag) > 0 and all(
                probe.node.count_publishers(t) >= 1 for t in ("/stereo/disparity", "/stereo/points")), 60, proc), \
                "stereo_node did not come up:\n" + proc.output()[-3000:]
            time.sleep(0.5)   # let the node's publishers see the probe's subscriptions
            player = NodeProcess("mvs_depth_ros.ros.player_node",
                                 dict(bag=str(bag), rate=0.5, wait_for_topics="[/stereo/left/image_rect]",
                                      wait_timeout=30.0))
            with player:
                assert player.proc.wait(120) == 0, player.output()[-3000:]
            _wait_counter(probe, diag, "predictions", N_FRAMES // 2, proc, timeout=30)
            assert probe.wait_for(lambda: len(points) >= 1 and len(depth) >= N_FRAMES // 2, 20, proc)
            d = _diag(diag)
        finally:
            probe.close()
    # every pair arrived, paired, processed (drops only if the machine was too slow for 5 pairs/s)
    assert int(d["pairs"]) >= int(d["predictions"]) >= N_FRAMES // 2, d
    assert int(d["unsynchronized"]) == 0 and int(d["errors"]) == 0 and int(d["no_camera_info"]) == 0, d
    assert int(d["bad_calibration"]) == 0 and int(d["size_mismatch"]) == 0, d
    assert d["temporal"] == "on" and d["sync"] == "exact" and d["model"] == "sgbm+temporal"
    assert abs(float(d["baseline_m"]) - BASELINE) < 1e-3 and abs(float(d["doffs_px"])) < 1e-9, d
    if with_tf:
        assert int(d["tf_failures"]) == 0, f"every pair must get its pose from the bag's TF: {d}"

    frame_id = "stereo_left_optical_frame"
    epes, rels = [], []
    for _, m in disp:
        stamp = C.stamp_to_ns(m.header.stamp)
        assert stamp in by_stamp, "outputs carry the left image's stamp"
        f = by_stamp[stamp]
        assert m.header.frame_id == frame_id and m.image.header.frame_id == frame_id
        assert m.image.encoding == "32FC1" and (m.image.width, m.image.height) == (W, H)
        np.testing.assert_allclose(m.f, f.K[0, 0], rtol=1e-6)
        np.testing.assert_allclose(m.t, BASELINE, rtol=1e-6)
        assert m.min_disparity == 0.0 and m.max_disparity == 15.0 and m.delta_d == pytest.approx(1 / 16)
        a = C.image_to_array(m.image)
        valid = a >= m.min_disparity
        assert 0.6 < valid.mean() <= 0.95, f"coverage {valid.mean():.2f}"
        assert np.all(a[~valid] == m.min_disparity - 1), "invalid disparities are below min_disparity"
        win = m.valid_window
        assert win.width > 0 and win.x_offset >= 16 - 1 and win.x_offset + win.width <= W
        gt = f.disparity_gt
        ok = valid & np.isfinite(gt)
        epes.append(float(np.abs(a[ok] - gt[ok]).mean()))
    assert len(epes) >= N_FRAMES // 2
    assert max(epes) < 0.5, f"EPE per pair {np.round(epes, 3)} px against the exact synthetic disparity"

    disp_by_stamp = {C.stamp_to_ns(m.header.stamp): m for _, m in disp}
    for _, m in depth:
        stamp = C.stamp_to_ns(m.header.stamp)
        assert m.header.frame_id == frame_id and m.encoding == "32FC1" and (m.width, m.height) == (W, H)
        z = C.image_to_depth(m)
        f = by_stamp[stamp]
        gt_z = np.float32(f.K[0, 0] * BASELINE) / f.disparity_gt
        ok = np.isfinite(z)
        assert not np.any(z[ok] <= 0)
        rels.append(float(np.median(np.abs(z[ok] - gt_z[ok]) / gt_z[ok])))
        # depth is the disparity's Z = f T / d, invalid exactly where the disparity is
        dm = disp_by_stamp[stamp]
        a = C.image_to_array(dm.image)
        np.testing.assert_array_equal(ok, a >= dm.min_disparity)
        np.testing.assert_allclose(z[ok], dm.f * dm.t / a[ok], rtol=1e-5)
    assert max(rels) < 0.05, f"median relative depth error per pair {np.round(rels, 4)}"
    assert [C.stamp_to_ns(m.header.stamp) for _, m in conf] == [C.stamp_to_ns(m.header.stamp) for _, m in depth]
    c = C.image_to_array(conf[-1][1])
    assert c.dtype == np.float32 and c.min() >= 0 and c.max() <= 1 and c.max() > 0.5
    K, size, _ = C.camera_info_to_K(info[-1][1])
    np.testing.assert_allclose(K, next(iter(by_stamp.values())).K)
    assert size == (W, H)

    pc = points[-1][1]
    stamp = C.stamp_to_ns(pc.header.stamp)
    arr = C.pointcloud2_to_array(pc)
    assert pc.header.frame_id == frame_id and arr.shape == (H, W) and not pc.is_dense
    assert {"x", "y", "z", "rgb", "confidence"} <= set(arr.dtype.names)
    z = C.image_to_depth(next(m for _, m in depth if C.stamp_to_ns(m.header.stamp) == stamp))
    xyz = np.stack([arr["x"], arr["y"], arr["z"]], -1)
    np.testing.assert_array_equal(np.all(np.isfinite(xyz), -1), np.isfinite(z))
    np.testing.assert_allclose(arr["z"][np.isfinite(z)], z[np.isfinite(z)])
    np.testing.assert_array_equal(C.unpack_rgb(arr["rgb"]), by_stamp[stamp].left)


class PairFeeder:
    """Publishes a stereo camera the way a driver does (camera_info with every image)."""

    def __init__(self, probe):
        from sensor_msgs.msg import CameraInfo, Image
        self.probe = probe
        self.li = probe.publisher(CameraInfo, "left/camera_info")
        self.ri = probe.publisher(CameraInfo, "right/camera_info")
        self.l = probe.publisher(Image, "left/image_rect")
        self.r = probe.publisher(Image, "right/image_rect")
        self.infos = None

    def wait_matched(self):
        return all(self.probe.wait_matched(p, timeout=30) for p in (self.li, self.ri, self.l, self.r))

    def set_calibration(self, K, baseline, w=W, h=H):
        from mvs_depth_ros.data.stereo_bags import StereoBagFrames
        left = C.make_camera_info(K, w, h, C.make_header(0, StereoBagFrames.left))
        right = C.make_camera_info(K, w, h, C.make_header(0, StereoBagFrames.right))
        P = np.asarray(right.p).reshape(3, 4).copy()
        P[0, 3] = -K[0, 0] * baseline
        right.p = P.reshape(-1).tolist()
        self.infos = (left, right)

    def prime(self, stamp=0):
        """camera_info alone first: DDS does not order messages across topics, so a driver's very first
        image can overtake its camera_info (that pair is then counted as no_camera_info)."""
        for pub, msg in zip((self.li, self.ri), self.infos):
            msg.header.stamp = C.ns_to_stamp(stamp)
            pub.publish(msg)
        time.sleep(0.3)

    def send(self, left, right, stamp, stamp_right=None, encoding="rgb8", infos=True):
        sr = stamp if stamp_right is None else stamp_right
        if infos and self.infos is not None:
            for pub, msg, s in ((self.li, self.infos[0], stamp), (self.ri, self.infos[1], sr)):
                msg.header.stamp = C.ns_to_stamp(s)
                pub.publish(msg)
        self.l.publish(C.array_to_image(left, encoding, C.make_header(stamp, "stereo_left_optical_frame")))
        self.r.publish(C.array_to_image(right, "rgb8" if encoding == "32FC1" else encoding,
                                        C.make_header(sr, "stereo_right_optical_frame")))


@pytest.mark.parametrize("sync_backend", ["message_filters", "builtin"])
def test_bad_input_is_counted_and_never_fatal(pairs, sync_backend):
    """Both pairings: message_filters' TimeSynchronizer (when importable) and the package's own matcher."""
    from diagnostic_msgs.msg import DiagnosticArray
    from stereo_msgs.msg import DisparityImage

    from mvs_depth_ros.ros.sync import message_filters_available
    if sync_backend == "message_filters" and not message_filters_available()[0]:
        pytest.skip(f"{message_filters_available()[1]}: install the ../shared/ros2 wheels (CI does) to test that path")
    with NodeProcess(NODE, dict(BASE_PARAMS, qos_reliability="reliable", qos_depth=20,
                                sync_backend=sync_backend)) as proc:
        probe = Probe("stereo_bad_input_test")
        try:
            disp = probe.subscribe(DisparityImage, "disparity")
            diag = probe.subscribe(DiagnosticArray, "/diagnostics")
            feed = PairFeeder(probe)
            assert feed.wait_matched(), proc.output()[-3000:]
            assert probe.wait_for(lambda: len(diag) > 0, 30, proc)
            f0, f1, f2, f3 = pairs[:4]
            gap = 0.2
            # 1. a pair before any camera_info
            feed.send(f0.left, f0.right, f0.stamp)
            _wait_counter(probe, diag, "no_camera_info", 1, proc)
            # 2. right camera_info without a baseline (P[0, 3] = 0): bad calibration
            feed.set_calibration(f0.K, BASELINE)
            good_right = feed.infos[1]
            bad_right = C.make_camera_info(f0.K, W, H, C.make_header(0, "stereo_right_optical_frame"))
            feed.infos = (feed.infos[0], bad_right)
            feed.prime()
            feed.send(f0.left, f0.right, f0.stamp + 1)
            _wait_counter(probe, diag, "bad_calibration", 1, proc)
            feed.infos = (feed.infos[0], good_right)
            feed.prime()
            # 3. a good pair: published
            feed.send(f1.left, f1.right, f1.stamp)
            assert probe.wait_for(lambda: len(disp) >= 1, 20, proc), proc.output()[-3000:]
            # 4. an unsynchronised pair (right 30 ms late, exact sync), then a good one: both strays dropped
            feed.send(f2.left, f2.right, f2.stamp, stamp_right=f2.stamp + 30_000_000)
            time.sleep(gap)
            feed.send(f3.left, f3.right, f3.stamp + 50_000_000)
            _wait_counter(probe, diag, "unsynchronized", 2, proc)
            assert probe.wait_for(lambda: len(disp) >= 2, 20, proc)
            assert C.stamp_to_ns(disp[-1][1].header.stamp) == f3.stamp + 50_000_000
            # 5. left/right sizes differ
            t = f3.stamp + 100_000_000
            feed.send(f0.left, np.ascontiguousarray(f0.right[::2, ::2]), t)
            _wait_counter(probe, diag, "size_mismatch", 1, proc)
            # 6. unsupported encoding on the left image
            feed.send(np.zeros((H, W), np.float32), f0.right, t + 100_000_000, encoding="32FC1")
            _wait_counter(probe, diag, "rejected_encoding", 1, proc)
            # 7. a stamp going backwards (less than time_jump_reset): dropped
            feed.send(f1.left, f1.right, f1.stamp + 10_000_000)
            _wait_counter(probe, diag, "stamp_backwards", 1, proc)
            # 8. a camera_info that does not fit the images (other aspect ratio)
            small = (C.make_camera_info(f0.K, W, W, C.make_header(0, "l")), good_right)
            feed.infos = small
            feed.prime()
            feed.send(f0.left, f0.right, t + 300_000_000)
            _wait_counter(probe, diag, "camera_info_mismatch", 1, proc)
            feed.set_calibration(f0.K, BASELINE)
            feed.prime()
            # ... and the node goes on: bgr8 pairs are accepted and published
            n = len(disp)
            feed.send(np.ascontiguousarray(f2.left[:, :, ::-1]), np.ascontiguousarray(f2.right[:, :, ::-1]),
                      t + 400_000_000, encoding="bgr8")
            assert probe.wait_for(lambda: len(disp) > n, 20, proc), proc.output()[-3000:]
            a = C.image_to_array(disp[-1][1].image)
            ok = (a >= 0) & np.isfinite(f2.disparity_gt)
            assert np.abs(a[ok] - f2.disparity_gt[ok]).mean() < 0.5
            _wait_counter(probe, diag, "predictions", 3, proc)
            assert proc.alive(), proc.output()[-3000:]
            d = _diag(diag)
            assert int(d["errors"]) == 0 and d["sync_backend"] == sync_backend, d
            # the level reflects the recent window: the problems above showed as WARN while they were recent
            assert any(m.status and m.status[0].level in (b"\x01", 1) for _, m in diag), \
                "problems must show as WARN"
        finally:
            probe.close()


def test_approximate_sync_pairs_offset_stamps(pairs):
    from diagnostic_msgs.msg import DiagnosticArray
    from stereo_msgs.msg import DisparityImage
    # frame_queue: every pair processed in order (with the default latest-wins slot a loaded machine replaces a
    # pair before the worker takes it: counted as dropped, but then this test would not see the sync's pairs)
    params = dict(BASE_PARAMS, qos_reliability="reliable", approximate_sync=True,
                  approximate_sync_tolerance_seconds=0.005, frame_queue=10)
    with NodeProcess(NODE, params) as proc:
        probe = Probe("stereo_approx_test")
        try:
            disp = probe.subscribe(DisparityImage, "disparity")
            diag = probe.subscribe(DiagnosticArray, "/diagnostics")
            feed = PairFeeder(probe)
            assert feed.wait_matched(), proc.output()[-3000:]
            feed.set_calibration(pairs[0].K, BASELINE)
            feed.prime()
            # a warm-up pair: DDS does not order topics, and a node still starting up may take this first pair
            # before its camera_info (dropped and counted no_camera_info, as for a real driver)
            w = pairs[0]
            feed.send(w.left, w.right, w.stamp - 100_000_000)
            time.sleep(0.5)
            for f in pairs[:3]:
                feed.send(f.left, f.right, f.stamp, stamp_right=f.stamp + 3_000_000)   # within 5 ms
                time.sleep(0.3)
            f = pairs[3]
            feed.send(f.left, f.right, f.stamp, stamp_right=f.stamp + 20_000_000)      # beyond: no pair
            time.sleep(0.3)
            want = [p.stamp for p in pairs[:3]]
            assert probe.wait_for(lambda: [C.stamp_to_ns(m.header.stamp) for _, m in disp][-3:] == want, 20, proc), \
                proc.output()[-3000:]
            _wait_counter(probe, diag, "pairs", 4, proc)
            d = _diag(diag)
            assert d["sync"] == "approximate" and int(d["pairs"]) == 4, d   # warm-up + 3; the 20 ms one: none
            got = [C.stamp_to_ns(m.header.stamp) for _, m in disp]
            assert got in (want, [w.stamp - 100_000_000] + want), got
        finally:
            probe.close()


def test_invalid_parameters_are_rejected_with_a_reason():
    with NodeProcess(NODE, dict(device="cpu", num_disparities=40)) as proc:
        rc = proc.proc.wait(60)
        out = proc.output()
    assert rc == 2 and "num_disparities" in out and "multiple of 16" in out, out[-2000:]
    with NodeProcess(NODE, dict(device="cpu", model="nope")) as proc:
        rc = proc.proc.wait(60)
        out = proc.output()
    assert rc == 2 and "model" in out and "one of" in out, out[-2000:]


def test_pair_synchronizer_policies():
    from mvs_depth_ros.ros.stereo_node import PairSynchronizer
    s = PairSynchronizer(approximate=False, queue_size=2)
    assert s.add(0, 100, "L100") == (None, 0)
    assert s.add(1, 101, "R101") == (None, 0)           # exact: 1 ns off is no pair
    assert s.add(1, 200, "R200") == (None, 0)
    pair, dropped = s.add(0, 200, "L200")
    assert pair == (200, "L200", "R200") and dropped == 2   # L100 and R101 can never be paired now
    assert s.pending() == (0, 0)
    for t in (1, 2, 3):
        s.add(0, t, t)
    assert s.pending() == (2, 0)                       # queue_size bounds the waiting images
    a = PairSynchronizer(approximate=True, tolerance_s=5e-3, queue_size=5)
    assert a.add(1, 1_000_000_000, "R")[0] is None
    assert a.add(0, 1_004_000_000, "L") == ((1_004_000_000, "L", "R"), 0)
    assert a.add(0, 2_000_000_000, "L2")[0] is None
    assert a.add(1, 2_006_000_000, "R2")[0] is None     # 6 ms > tolerance


def test_config_and_launch_files_match_the_node():
    from pathlib import Path

    from mvs_depth_ros.ros import runner
    from mvs_depth_ros.ros.stereo_node import STEREO_SPECS, StereoConfig
    root = Path(__file__).resolve().parents[1]
    params = runner.yaml_parameters(root / "config" / "stereo.yaml", "stereo_node", "stereo")  # as launched
    assert set(params) == set(STEREO_SPECS), set(params) ^ set(STEREO_SPECS)
    for k, v in params.items():   # the YAML holds the declared defaults, with the declared types
        assert v == STEREO_SPECS[k].default and type(v) is type(STEREO_SPECS[k].default), k
    StereoConfig.from_values(params)
    args = runner.launch_arguments(root / "launch" / "stereo.launch.py")
    assert {"left_image", "right_image", "left_info", "right_info", "bag", "temporal", "world_frame"} <= set(args)


def test_runner_stereo_profile_runs_the_stereo_node(stereo_bag):
    """`mvs-depth launch stereo` (config/stereo.yaml + the launch file's remaps) fed by the played bag."""
    from stereo_msgs.msg import DisparityImage
    bag, by_stamp = stereo_bag
    args = ["stereo", "stereo_node.num_disparities:=16", "stereo_node.qos_reliability:=reliable",
            "stereo_node.device:=cpu"]
    with NodeProcess("mvs_depth_ros.ros.runner", args=args) as proc:
        probe = Probe("stereo_runner_test")
        try:
            disp = probe.subscribe(DisparityImage, "/stereo/disparity")
            assert probe.wait_for(lambda: probe.node.count_publishers("/stereo/disparity") >= 1, 60, proc), \
                proc.output()[-3000:]
            time.sleep(0.5)
            with NodeProcess("mvs_depth_ros.ros.player_node",
                             dict(bag=str(bag), rate=0.5, wait_for_topics="[/stereo/right/image_rect]")) as player:
                assert player.proc.wait(120) == 0, player.output()[-3000:]
            assert probe.wait_for(lambda: len(disp) >= N_FRAMES // 2, 30, proc), proc.output()[-3000:]
        finally:
            probe.close()
    for _, m in disp:
        f = by_stamp[C.stamp_to_ns(m.header.stamp)]
        a = C.image_to_array(m.image)
        ok = (a >= m.min_disparity) & np.isfinite(f.disparity_gt)
        assert ok.mean() > 0.6 and np.abs(a[ok] - f.disparity_gt[ok]).mean() < 0.5


def test_stamp_sync_sets_of_three_inputs():
    """The own matcher behind sync_backend:=builtin for more than two topics: a set forms when every input has
    a message of the stamp (approximate: the nearest within the tolerance); older strays are dropped, counted."""
    from mvs_depth_ros.ros.sync import StampSync
    s = StampSync(3, approximate=True, tolerance_s=2e-3, queue_size=3)
    assert s.add(0, 1_000_000_000, "a0") is None
    assert s.add(1, 1_001_000_000, "b0") is None
    assert s.add(2, 1_500_000_000, "c-stray") is None             # no partner within 2 ms
    assert s.add(2, 999_500_000, "c0") == (1_000_000_000, "a0", "b0", "c0")
    assert s.pending() == (0, 0, 1) and s.dropped == [0, 0, 0]     # the later stray may still pair
    assert s.add(0, 2_000_000_000, "a1") is None
    assert s.add(1, 2_000_000_000, "b1") is None
    assert s.add(2, 2_000_000_000, "c1") == (2_000_000_000, "a1", "b1", "c1")
    assert s.dropped == [0, 0, 1] and s.matched == 2                # 1.5 s can no longer be paired
    for t in range(5):
        s.add(0, 3_000_000_000 + t * 10**8, t)
    assert s.pending()[0] == 3 and s.dropped[0] == 2               # queue_size bounds what waits
