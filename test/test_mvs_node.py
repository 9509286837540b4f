"""mvs_node in its own process, fed real messages over DDS from this test process.

Synthetic posed frames (exact depth) go out as Image + CameraInfo + /tf (or a pose topic); the test
checks what comes back (depth, confidence, camera_info, points, depth_estimate, /diagnostics): stamps,
frames, shapes, NaN handling, values against the ground truth, and that bad input is counted and never
stops the node.
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
NODE_PARAMS = dict(device="cpu", width=W, height=H, n_planes=16, min_depth=0.3, max_depth=12.0,
                   keyframe_pose_distance=0.05, n_measurement_frames=2, tf_timeout=0.3, world_frame="odom",
                   diagnostics_period=0.2, warn_period=0.0, reset_after_pose_gap=0.0)


@pytest.fixture(scope="module")
def seq():
    try:
        from mvs_depth_ros.data.synthetic import render_sequence
    except ImportError as exc:  # pragma: no cover - the renderer ships with the package
        pytest.skip(f"synthetic renderer unavailable: {exc}")
    return render_sequence(n_frames=14, width=W, height=H, supersample=1, step=0.035)


class Feeder:
    """Publishes frames the way a camera driver + odometry would."""

    def __init__(self, probe: Probe, pose_source: str = "tf"):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo, Image
        self.probe = probe
        self.image = probe.publisher(Image, "image")
        self.info = probe.publisher(CameraInfo, "camera_info")
        self.pose_source = pose_source
        if pose_source == "tf":
            TFMessage = interfaces.tf_message_type()
            self.TFMessage = TFMessage
            self.tf = probe.publisher(TFMessage, "/tf")
        else:
            self.pose = probe.publisher(PoseStamped, "pose")

    def wait_matched(self):
        pubs = [self.image, self.info] + ([self.tf] if self.pose_source == "tf" else [self.pose])
        return all(self.probe.wait_matched(p, timeout=30) for p in pubs)

    def send_info(self, K, w=W, h=H, frame="camera"):
        self.K = K  # from now on camera_info goes out with every image, as camera drivers do
        self.info.publish(C.make_camera_info(K, w, h, C.make_header(0, frame)))

    def send_pose(self, T, stamp, frame="camera"):
        if self.pose_source == "tf":
            self.tf.publish(self.TFMessage(transforms=[C.make_transform_stamped(T, "odom", frame, stamp)]))
        else:
            self.pose.publish(C.make_pose_stamped(T, "odom", stamp))

    def send_image(self, rgb, stamp, frame="camera", encoding="rgb8"):
        if getattr(self, "K", None) is not None:  # the full-size calibration also for binned images
            self.info.publish(C.make_camera_info(self.K, W, H, C.make_header(stamp, frame)))
        self.image.publish(C.array_to_image(rgb, encoding, C.make_header(stamp, frame)))


def _diag(probe, box):
    vals = [status_values(m.status[0]) for _, m in box if m.status and "video MVS" in m.status[0].name]
    return vals[-1] if vals else {}


def _wait_counter(probe, box, key, at_least, proc, timeout=20.0):
    ok = probe.wait_for(lambda: int(_diag(probe, box).get(key, -1)) >= at_least, timeout, proc)
    assert ok, f"/diagnostics {key} never reached {at_least}: {_diag(probe, box)}\n{proc.output()[-3000:]}"


def _feed(feeder, frames, period=0.25, tf_margin=True):
    for f in frames:
        feeder.send_pose(f.T_world_cam, f.stamp)
        if tf_margin:  # a transform just after the stamp too, so the lookup interpolates instead of waiting
            feeder.send_pose(f.T_world_cam, f.stamp + 1_000_000)
        time.sleep(0.01)
        feeder.send_image(f.image, f.stamp)
        time.sleep(period)


def _sync_backend(name):
    """image + camera_info pairing: message_filters (when importable) and the package's own matcher."""
    if name == "message_filters":
        from mvs_depth_ros.ros.sync import message_filters_available
        ok, why = message_filters_available()
        if not ok:
            pytest.skip(f"{why}: install ../shared/ros2 wheels (CI does) to test that path")
    return name


@pytest.fixture(params=["message_filters", "builtin"])
def tf_node(request):  # function scope: a node left running would answer the next test's messages too
    if not interfaces.tf_message_available():
        pytest.skip("tf2_msgs/TFMessage not available (run tools/install_ros.sh); the pose-topic test covers the node")
    params = dict(NODE_PARAMS, sync_backend=_sync_backend(request.param))
    with NodeProcess("mvs_depth_ros.ros.mvs_node", params) as proc:
        proc.params = params
        probe = Probe("mvs_node_test")
        try:
            yield proc, probe
        finally:
            probe.close()


def test_depth_points_and_estimate_from_tf(tf_node, seq):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    proc, probe = tf_node
    depth = probe.subscribe(Image, "depth")
    conf = probe.subscribe(Image, "confidence")
    info = probe.subscribe(CameraInfo, "depth/camera_info")
    points = probe.subscribe(PointCloud2, "points")
    diag = probe.subscribe(DiagnosticArray, "/diagnostics")
    est = None
    DepthEstimate = interfaces.depth_estimate_type()
    if DepthEstimate is not None:
        est = probe.subscribe(DepthEstimate, "depth_estimate")
    feeder = Feeder(probe, "tf")
    assert feeder.wait_matched(), proc.output()[-3000:]
    assert probe.wait_for(lambda: len(diag) > 0, 30, proc), "no /diagnostics from the node:\n" + proc.output()[-3000:]

    # --- bad input first, on a fresh node: images without a camera_info of their stamp wait in the pairing
    # queue (queue_size 5) and are dropped, counted, when it overflows
    f0 = seq.frames[0]
    for i in range(7):
        feeder.send_image(f0.image, f0.stamp - 500_000_000 + i * 1_000_000)
        time.sleep(0.05)
    _wait_counter(probe, diag, "no_camera_info", 1, proc)
    assert _diag(probe, diag)["sync_backend"] == proc.params["sync_backend"]

    # --- the good stream
    feeder.send_info(seq.K)
    time.sleep(0.3)
    _feed(feeder, seq.frames[:10])
    assert probe.wait_for(lambda: len(depth) >= 3 and len(points) >= 3, 30, proc), \
        f"depth {len(depth)} points {len(points)}\n{proc.output()[-4000:]}"
    by_stamp = {f.stamp: f for f in seq.frames}
    for _, m in depth:
        stamp = C.stamp_to_ns(m.header.stamp)
        assert stamp in by_stamp, "depth must carry the input image's stamp"
        assert m.header.frame_id == "camera" and m.encoding == "32FC1" and (m.width, m.height) == (W, H)
        d = C.image_to_depth(m)
        gt = by_stamp[stamp].depth_gt
        valid = np.isfinite(d)
        assert valid.mean() > 0.5, f"only {valid.mean():.2f} of the pixels have depth"
        assert not np.any(d[valid] <= 0)
        rel = np.abs(d[valid] - gt[valid]) / gt[valid]
        assert np.median(rel) < 0.2, f"median relative error {np.median(rel):.3f} vs the synthetic ground truth"
    assert [C.stamp_to_ns(m.header.stamp) for _, m in conf] == [C.stamp_to_ns(m.header.stamp) for _, m in depth]
    c = C.image_to_array(conf[0][1])
    assert c.dtype == np.float32 and c.min() >= 0 and c.max() <= 1
    K_out, size, _ = C.camera_info_to_K(info[0][1])
    np.testing.assert_allclose(K_out, seq.K, rtol=1e-9)  # working size == input size: same K
    assert size == (W, H)
    pc = points[-1][1]
    assert pc.header.frame_id == "camera" and C.stamp_to_ns(pc.header.stamp) == C.stamp_to_ns(depth[-1][1].header.stamp)
    arr = C.pointcloud2_to_array(pc)
    assert arr.shape == (H, W) and not pc.is_dense
    assert {"x", "y", "z", "rgb", "confidence"} <= set(arr.dtype.names)
    d_last = C.image_to_depth(depth[-1][1])
    np.testing.assert_array_equal(np.isnan(arr["z"]), np.isnan(d_last))  # NaN depth -> NaN point
    np.testing.assert_allclose(arr["z"][np.isfinite(d_last)], d_last[np.isfinite(d_last)])
    if est is not None:
        assert probe.wait_for(lambda: len(est) >= 1, 5, proc)
        e = est[-1][1]
        assert e.model == "planesweep" and e.header.frame_id == "camera" and e.pose.header.frame_id == "odom"
        T = C.pose_to_matrix(e.pose.pose)
        np.testing.assert_allclose(T, by_stamp[C.stamp_to_ns(e.header.stamp)].T_world_cam, atol=1e-6)
        ms = [C.stamp_to_ns(s) for s in e.measurement_stamps]
        assert 1 <= len(ms) <= 2 and all(s in by_stamp and s < C.stamp_to_ns(e.header.stamp) for s in ms)
        assert (e.depth.width, e.depth.height) == (W, H) and len(e.measurement_ids) == len(ms)
        # temporal fusion (on by default): a later keyframe's published depth fuses earlier keyframes' depth
        # re-projected into it (and still matches the ground truth, checked above for every depth message)
        assert all(x.fused == (x.fusion_keyframes > 0) for _, x in est)
        assert e.fused and 1 <= e.fusion_keyframes < len(depth), (e.fused, e.fusion_keyframes, len(depth))

    # --- bad input on the running node; each must be counted and the node must keep going
    n_pred = int(_diag(probe, diag)["predictions"])
    f = seq.frames[10]
    feeder.send_image(np.zeros((H, W), np.float32), f.stamp, encoding="32FC1")          # wrong encoding
    _wait_counter(probe, diag, "rejected_encoding", 1, proc)
    bad = C.array_to_image(f.image, "rgb8", C.make_header(f.stamp + 1000, "camera"))
    bad.height = H * 2                                                                    # corrupt: too short
    feeder.info.publish(C.make_camera_info(seq.K, W, H, bad.header))
    feeder.image.publish(bad)
    _wait_counter(probe, diag, "rejected_corrupt", 1, proc)
    feeder.send_image(seq.frames[2].image, seq.frames[2].stamp)                         # stamp going backwards
    _wait_counter(probe, diag, "stamp_backwards", 1, proc)
    feeder.send_image(f.image, f.stamp + 5_000_000_000)                                 # TF gap: no transform then
    _wait_counter(probe, diag, "tf_failures", 1, proc)
    nan_T = np.full((4, 4), np.nan)
    ts = C.make_transform_stamped(np.eye(4), "odom", "camera", f.stamp + 6_000_000_000)
    ts.transform.rotation.x = float("nan")                                              # NaN pose on /tf
    feeder.tf.publish(feeder.TFMessage(transforms=[ts]))
    _wait_counter(probe, diag, "bad_poses", 1, proc)
    del nan_T
    # image size change mid-stream (same aspect: camera_info is rescaled, the pipeline reset)
    small = seq.frames[11]
    img_small = np.ascontiguousarray(small.image[::2, ::2])
    feeder.send_pose(small.T_world_cam, small.stamp + 7_000_000_000)
    feeder.send_image(img_small, small.stamp + 7_000_000_000)
    _wait_counter(probe, diag, "size_changes", 1, proc)
    # a stamp far behind (bag loop) resets everything, and the stream goes on: new depth maps come out
    time.sleep(0.3)
    _feed(feeder, seq.frames[:8])
    _wait_counter(probe, diag, "time_jumps", 1, proc)
    _wait_counter(probe, diag, "predictions", n_pred + 2, proc, timeout=30)
    assert proc.alive(), proc.output()[-3000:]
    d = _diag(probe, diag)
    assert int(d["errors"]) == 0, d
    assert float(d["latency_ms_mean"]) > 0 and d["device"] == "cpu" and d["model"] == "planesweep"
    # the level reflects the recent window (test_hostile_inputs checks it returns to OK): the problems above
    # showed as WARN while they were recent
    assert any(m.status and m.status[0].level in (b"\x01", 1) for _, m in diag), "problems must show as WARN"


def test_pose_topic_source_and_16uc1(seq):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    params = dict(NODE_PARAMS, pose_source="pose", pose_tolerance=0.01, publish_depth_mm=True,
                  confidence_threshold=0.2)
    # and as on an install whose interface build failed: no DepthEstimate, everything else works
    no_iface = {"MVS_DEPTH_ROS_INTERFACES_PREFIX": "/nonexistent"}
    with NodeProcess("mvs_depth_ros.ros.mvs_node", params, env=no_iface) as proc:
        probe = Probe("mvs_pose_test")
        try:
            depth = probe.subscribe(Image, "depth")
            mm = probe.subscribe(Image, "depth_mm")
            conf = probe.subscribe(Image, "confidence")
            diag = probe.subscribe(DiagnosticArray, "/diagnostics")
            feeder = Feeder(probe, "pose")
            assert feeder.wait_matched(), proc.output()[-3000:]
            assert probe.wait_for(lambda: len(diag) > 0, 30, proc)
            feeder.send_info(seq.K)
            time.sleep(0.3)
            # bgr8 input is accepted (converted to RGB)
            for f in seq.frames[:7]:
                feeder.send_pose(f.T_world_cam, f.stamp + 3_000_000)  # within tolerance
                time.sleep(0.01)
                feeder.send_image(np.ascontiguousarray(f.image[:, :, ::-1]), f.stamp, encoding="bgr8")
                time.sleep(0.25)
            assert probe.wait_for(lambda: len(depth) >= 2 and len(mm) >= 2, 30, proc), proc.output()[-3000:]
            # a pose outside the tolerance -> no pose for that frame, counted
            f = seq.frames[7]
            feeder.send_pose(f.T_world_cam, f.stamp + 200_000_000)
            feeder.send_image(f.image, f.stamp)
            _wait_counter(probe, diag, "tf_failures", 1, proc)
            # NaN pose message -> counted as a bad pose
            from geometry_msgs.msg import PoseStamped
            bad = PoseStamped(header=C.make_header(f.stamp, "odom"))
            bad.pose.orientation.w = float("nan")
            feeder.pose.publish(bad)
            _wait_counter(probe, diag, "bad_poses", 1, proc)
            assert proc.alive()
            assert _diag(probe, diag)["depth_estimate"] == "off"
            assert "depth_estimate output is OFF" in proc.output()
        finally:
            probe.close()
    d32 = C.image_to_depth(depth[-1][1])
    c = C.image_to_array(conf[-1][1])
    assert np.all(np.isnan(d32[c < 0.2])), "confidence_threshold must blank low-confidence depth"
    raw = C.image_to_array(mm[-1][1])
    assert raw.dtype == np.uint16 and mm[-1][1].encoding == "16UC1"
    np.testing.assert_array_equal(raw == 0, np.isnan(d32) | (d32 * 1000 >= 65535.5))
    ok = raw > 0
    np.testing.assert_allclose(raw[ok] / 1000.0, d32[ok], atol=5e-4)


def test_invalid_parameters_are_rejected_with_a_reason():
    import rclpy
    from ros_helpers import apply_ros_env
    from mvs_depth_ros.ros.mvs_node import MvsNode
    from mvs_depth_ros.ros.params import ParameterError
    apply_ros_env()
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        for bad, why in ((dict(min_depth=5.0, max_depth=1.0), "need min < max"), (dict(width=2), "width"),
                         (dict(pose_source="gps"), "one of"), (dict(model="nope"), "unknown"),
                         (dict(checkpoint="/no/such.ckpt"), "no such file"), (dict(width="wide"), "width"),
                         (dict(model_options="compile"), "model_options.*KEY=VALUE"),
                         (dict(model_options="no_such_option=1"), "model_options.*no_such_option")):
            with pytest.raises(ParameterError, match=why):
                MvsNode("bad_params", context=ctx, device="cpu", **bad)
    finally:
        rclpy.shutdown(context=ctx)
    # the executable says why and exits with status 2
    with NodeProcess("mvs_depth_ros.ros.mvs_node", dict(device="tpu")) as proc:
        rc = proc.proc.wait(60)
        out = proc.output()
    assert rc == 2 and "device" in out and "one of" in out, out[-2000:]
    # an estimator option the model does not take: the same, naming it (as `ros2 run ... -p model_options:=...`)
    with NodeProcess("mvs_depth_ros.ros.mvs_node", dict(device="cpu", model_options="no_such_option=1")) as proc:
        rc = proc.proc.wait(60)
        out = proc.output()
    assert rc == 2 and "model_options" in out and "no_such_option" in out, out[-2000:]


def test_model_options_reach_the_estimator():
    """``model_options`` (as ``mvs-depth run --model-option``) are the estimator's options; ``n_planes`` there wins."""
    import rclpy
    from ros_helpers import apply_ros_env
    from mvs_depth_ros.ros.mvs_node import MvsNode
    apply_ros_env()
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        node = MvsNode("mvs_options_test", context=ctx, device="cpu", n_planes=16,
                       model_options="n_planes=24, window=5,sgm_paths=4")
        cfg = node.estimator.config
        assert (cfg.n_planes, cfg.window, cfg.sgm_paths) == (24, 5, 4)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_live_parameter_changes_are_validated():
    """Read-only parameters refuse changes, ranges are enforced, valid live changes reach the config."""
    import rclpy
    from rclpy.parameter import Parameter
    from ros_helpers import apply_ros_env
    from mvs_depth_ros.ros.mvs_node import MvsNode
    apply_ros_env()
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = MvsNode("mvs_param_test", context=ctx, device="cpu", width=64, height=48, pose_source="pose")
    try:
        r = node.set_parameters([Parameter("width", value=128)])[0]
        assert not r.successful and "read-only" in r.reason
        r = node.set_parameters([Parameter("confidence_threshold", value=1.5)])[0]
        assert not r.successful and node.config.confidence_threshold == 0.0
        r = node.set_parameters([Parameter("points_stride", value=4)])[0]
        assert r.successful and node.config.points_stride == 4
        r = node.set_parameters([Parameter("confidence_threshold", value=0.4)])[0]
        assert r.successful and node.config.confidence_threshold == pytest.approx(0.4)
        desc = node.describe_parameter("min_depth")
        assert desc.read_only and desc.floating_point_range[0].from_value > 0
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("frame_queue, dropped, kept", [(1, 2, [2]), (2, 1, [1, 2]), (3, 0, [0, 1, 2])])
def test_frame_queue_latest_frame_wins_or_keeps_order(frame_queue, dropped, kept):
    """frame_queue 1 (live default): a new frame replaces the waiting one, counted as dropped; N > 1 (bag
    evaluation) keeps up to N in arrival order and drops the oldest only when full. The worker is held
    busy so the frames stay queued."""
    import threading

    from mvs_depth_ros.ros.node_base import FrameQueue, Pending
    gate, seen, events = threading.Event(), [], []
    q = FrameQueue(None, lambda it: (gate.wait(10), seen.append(it.stamp)), lambda k, it, t: events.append((k, it.stamp)),
                   wait_s=1.0, slot_size=frame_queue)
    q.start()
    try:
        q.put(Pending(-1, "cam", (), time.monotonic()))          # taken by the worker, which then waits
        assert q.wait_idle(0.3) is False and q.counts() == (0, 0, True)
        for sec in range(3):
            q.put(Pending(sec, "cam", (), time.monotonic()))
        assert [s for k, s in events if k == "dropped"] == list(range(3 - frame_queue))[:dropped]
        assert not q.idle()
        gate.set()
        assert q.wait_idle(10)
        assert seen == [-1] + kept
    finally:
        q.stop()


def test_frame_queue_stop_does_not_wait_past_its_timeout_for_a_slow_input():
    """A shutdown (SIGINT) while a slow model works on an input returns after the timeout (``ros2 launch`` sends
    SIGTERM 5 s after SIGINT) and says so; an error the abandoned input raises after stop() is not reported."""
    import threading

    from mvs_depth_ros.ros.node_base import FrameQueue, Pending
    gate, events = threading.Event(), []

    def slow(item):
        gate.wait(10)
        raise RuntimeError("publisher destroyed")       # what publishing on a destroyed node does

    q = FrameQueue(None, slow, lambda k, it, t: events.append(k), wait_s=1.0, slot_size=1)
    q.start()
    q.put(Pending(0, "cam", (), time.monotonic()))
    assert q.wait_idle(0.3) is False
    t0 = time.monotonic()
    assert q.stop(0.3) is False
    assert time.monotonic() - t0 < 2.0
    gate.set()
    assert q.stop(5.0) is True and "error" not in events


def test_frames_wait_for_their_pose_in_stamp_order():
    """The MessageFilter role: a frame is released when the pose at its stamp exists, in stamp order, even
    when the pose comes long after the frame; a frame whose pose never comes is dropped when its wait
    expires (counted); a pose that cannot come (an error before the timeout) releases it without one."""
    import threading

    from mvs_depth_ros.ros.node_base import FrameQueue, Pending
    from mvs_depth_ros.ros.tf_buffer import TfBuffer
    tf = TfBuffer(cache_time_s=100.0, max_gap_s=0.5)
    tf.set_transform("odom", "cam", 0, np.eye(4))
    seen, events = [], []
    done = threading.Event()

    def process(it):
        seen.append((it.stamp, None if it.T is None else float(it.T[0, 3]), it.pose_error[:20]))
        if len(seen) == 4:
            done.set()

    q = FrameQueue(lambda f, s, t: tf.lookup("odom", f, s, t), process,
                   lambda k, it, t: events.append((k, it.stamp)), wait_s=2.0, slot_size=100)
    q.start()
    try:
        now = time.monotonic()
        for s in (1, 2, 3):                              # three frames before their transforms
            q.put(Pending(s * 10**8, "cam", (), now))
        q.put(Pending(9 * 10**9, "cam", (), now))       # never gets a transform: expires after 2 s
        time.sleep(0.5)
        assert seen == [] and q.counts()[0] == 4
        for s in (1, 2, 3):
            T = np.eye(4)
            T[0, 3] = s
            tf.set_transform("odom", "cam", s * 10**8, T)
        t0 = time.monotonic()
        assert q.wait_idle(10)
        assert [x[:2] for x in seen] == [(10**8, 1.0), (2 * 10**8, 2.0), (3 * 10**8, 3.0)]
        assert events == [("expired", 9 * 10**9)] and time.monotonic() - t0 > 1.0
        # a stamp inside a gap larger than max_gap fails at once: released without a pose
        tf.set_transform("odom", "cam", 5 * 10**9, np.eye(4))
        q.put(Pending(4 * 10**9, "cam", (), time.monotonic()))
        assert done.wait(5) and seen[-1][1] is None and events[-1] == ("no_pose", 4 * 10**9)
    finally:
        q.stop()
