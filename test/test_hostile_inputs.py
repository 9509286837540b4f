"""The hostile-input matrix (issue 14): what misbehaving drivers and users send, against mvs_node in its own
process over DDS.

Run-time cases share ONE node process (64x48 images, a plane sweep of 8 planes): each case sends its bad
input into a live good stream and asserts that the node is alive, that the right counter of /diagnostics
moved, that the log names the problem, and that depth resumes on the good stream (a new depth map within a
few seconds). Among them the failures the issue found: a /tf stamped far in the future, a reversed /tf edge
(a loop) and a re-parented optical frame, overflowing quaternions, poses and focal lengths beyond physical
bounds, distortion changing, a moving camera with all-NaN depth. The diagnostics level must come back to OK
once the inputs are good again. Startup cases (bad checkpoints, devices, backends, parameters) run the node
executable in parallel processes and assert a non-zero exit with one clear line and no traceback.
"""
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ros_helpers import REPO_ROOT, NodeProcess, Probe, require_rclpy, ros_env

require_rclpy()

from mvs_depth_ros.ros import conversions as C  # noqa: E402
from mvs_depth_ros.ros import interfaces  # noqa: E402
from mvs_depth_ros.ros.diagnostics import status_values  # noqa: E402

W, H = 64, 48
S = 1_000_000_000
NODE_PARAMS = dict(device="cpu", width=W, height=H, n_planes=8, min_depth=0.3, max_depth=12.0,
                   keyframe_pose_distance=0.05, n_measurement_frames=1, tf_timeout=0.3, world_frame="odom",
                   diagnostics_period=0.1, diagnostics_window=1.0, warn_period=0.0, reset_after_pose_gap=0.0,
                   tf_backend="builtin")
RESUME_S = 15.0   # generous: other processes share this machine's cores


@pytest.fixture(scope="module")
def seq():
    from mvs_depth_ros.data.synthetic import render_sequence
    return render_sequence(n_frames=24, width=W, height=H, supersample=1, step=0.035)


class Stream:
    """A live camera + odometry (stamps from the wall clock, the node's clock) and the node's /diagnostics."""

    def __init__(self, probe: Probe, proc: NodeProcess, seq):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image
        self.probe, self.proc, self.seq = probe, proc, seq
        self.path = list(seq.frames) + list(seq.frames[-2:0:-1])   # back and forth: keyframes keep coming
        self.k = 0
        self.TFMessage = interfaces.tf_message_type()
        self.image = probe.publisher(Image, "image")
        self.info = probe.publisher(CameraInfo, "camera_info")
        self.tf = probe.publisher(self.TFMessage, "/tf")
        self.diag = {}
        self.level = None
        self._lock = threading.Lock()

        def on_diag(msg):
            for st in msg.status:
                if "video MVS" in st.name:
                    with self._lock:
                        self.diag = status_values(st)
                        self.level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
                        self.message = st.message
        probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)

    def matched(self) -> bool:
        return all(self.probe.wait_matched(p, timeout=30) for p in (self.image, self.info, self.tf))

    def counter(self, key: str) -> int:
        with self._lock:
            return int(self.diag.get(key, -1))

    # ---------------------------------------------------------------------------------------- sending
    def tf_msg(self, T, stamp, parent="odom", child="camera"):
        return self.TFMessage(transforms=[C.make_transform_stamped(T, parent, child, stamp)])

    def send(self, img=None, T=None, stamp=None, K=None, info=True, encoding="rgb8", frame="camera", msg=None):
        """One frame: /tf at its stamp (unless T is False), camera_info, the image (or ``msg`` as is)."""
        f = self.path[self.k % len(self.path)]
        self.k += 1
        stamp = time.time_ns() if stamp is None else stamp
        if T is not False:
            self.tf.publish(self.tf_msg(f.T_world_cam if T is None else T, stamp))
        if info:
            self.info.publish(C.make_camera_info(self.seq.K if K is None else K, W, H, C.make_header(stamp, frame)))
        if msg is None:
            msg = C.array_to_image(f.image if img is None else img, encoding, C.make_header(stamp, frame))
        else:  # a hand-made message: the stamp of its camera_info and transform
            msg.header = C.make_header(stamp, frame)
        self.image.publish(msg)
        return stamp

    def good_until_depth(self, timeout: float = RESUME_S, period: float = 0.07) -> bool:
        """Good frames until the node's ``predictions`` counter moves."""
        n0 = self.counter("predictions")
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end and self.proc.alive():
            self.send()
            time.sleep(period)
            if self.counter("predictions") > n0:
                return True
        return False

    def wait(self, pred, timeout: float = 8.0) -> bool:
        return self.probe.wait_for(pred, timeout, self.proc)


def run_cases(stream: Stream, cases):
    """Each case: (name, send(stream), counter, log regex). Returns failures as readable lines."""
    failures = []
    for name, action, counter, log in cases:
        before = stream.counter(counter)
        log_from = len(stream.proc.output())
        action(stream)
        problems = []
        if not stream.wait(lambda: stream.counter(counter) > before):
            problems.append(f"counter {counter} stayed {before}")
        if log and not stream.wait(lambda: re.search(log, stream.proc.output()[log_from:]) is not None, 4.0):
            problems.append(f"no log line matching {log!r}")
        if not stream.proc.alive():
            failures.append(f"{name}: the node DIED\n{stream.proc.output()[-3000:]}")
            break
        if not stream.good_until_depth():
            problems.append("depth did not resume on the good stream")
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
    return failures


@pytest.fixture(scope="module")
def live(seq):
    if not interfaces.tf_message_available():
        pytest.skip("tf2_msgs/TFMessage not available (run tools/install_ros.sh)")
    with NodeProcess("mvs_depth_ros.ros.mvs_node", NODE_PARAMS) as proc:
        probe = Probe("hostile_probe")
        try:
            stream = Stream(probe, proc, seq)
            assert stream.matched(), proc.output()[-3000:]
            assert stream.wait(lambda: stream.counter("images") >= 0, 30), proc.output()[-3000:]
            assert stream.good_until_depth(timeout=40), "no depth from the good stream:\n" + proc.output()[-3000:]
            yield stream
            assert proc.alive(), proc.output()[-3000:]
            out = proc.output()
            assert "Traceback" not in out, out[-5000:]
        finally:
            probe.close()


def _image(stream, **fields):
    """An rgb8 image message of the current frame with some fields overwritten."""
    f = stream.path[stream.k % len(stream.path)]
    msg = C.array_to_image(f.image, "rgb8", C.make_header(time.time_ns(), "camera"))
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _padded(stream, pad):
    f = stream.path[stream.k % len(stream.path)]
    rows = np.zeros((H, W * 3 + pad), np.uint8)
    rows[:, : W * 3] = f.image.reshape(H, W * 3)
    msg = _image(stream)
    msg.step = W * 3 + pad
    msg.data = C._bytes_array(rows)
    return msg


# ------------------------------------------------------------------------------------------------
# encodings and layouts
# ------------------------------------------------------------------------------------------------

def test_encodings_and_layouts(live):
    enc = "rejected_encoding"
    bad = "rejected_corrupt"
    cases = [
        ("32FC1 image", lambda s: s.send(np.zeros((H, W), np.float32), encoding="32FC1"), enc, "32FC1"),
        ("16UC1 image", lambda s: s.send(np.zeros((H, W), np.uint16), encoding="16UC1"), enc, "16UC1"),
        ("rgba8 image", lambda s: s.send(np.zeros((H, W, 4), np.uint8), encoding="rgba8"), enc, "rgba8"),
        ("unknown encoding yuv422", lambda s: s.send(msg=_image(s, encoding="yuv422")), enc, "yuv422"),
        ("empty encoding", lambda s: s.send(msg=_image(s, encoding="")), enc, "encoding ''"),
        ("data shorter than height*step", lambda s: s.send(msg=_image(s, height=H * 2)), bad, "needs"),
        ("step smaller than a row", lambda s: s.send(msg=_image(s, step=W)), bad, "step"),
        ("width 0", lambda s: s.send(msg=_image(s, width=0)), bad, "empty image"),
        ("no data at all", lambda s: s.send(msg=_image(s, data=[])), bad, "data has 0 bytes"),
        ("claims 100000x100000", lambda s: s.send(msg=_image(s, width=100000, height=100000, step=300000)), bad,
         "needs"),
        ("empty frame_id", lambda s: s.send(frame=""), bad, "frame_id"),
    ]
    failures = run_cases(live, cases)
    # layouts that are valid must be decoded, not rejected: padded rows, big-endian flag on 8-bit data,
    # mono8 and bgr8
    for name, make in (("padded step", lambda s: _padded(s, 5)), ("padded step 64", lambda s: _padded(s, 64)),
                       ("is_bigendian rgb8", lambda s: _image(s, is_bigendian=1))):
        n_bad = live.counter(bad) + live.counter(enc)
        n_proc = live.counter("processed")
        for _ in range(3):
            live.send(msg=make(live))
            time.sleep(0.1)
        if not live.wait(lambda: live.counter("processed") > n_proc) or live.counter(bad) + live.counter(enc) != n_bad:
            failures.append(f"{name}: a valid layout was not processed")
    for encoding, conv in (("mono8", lambda im: np.ascontiguousarray(im[:, :, 1])),
                           ("bgr8", lambda im: np.ascontiguousarray(im[:, :, ::-1]))):
        n_proc = live.counter("processed")
        live.send(conv(live.path[live.k % len(live.path)].image), encoding=encoding)
        if not live.wait(lambda: live.counter("processed") > n_proc):
            failures.append(f"{encoding}: not processed")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------
# camera_info
# ------------------------------------------------------------------------------------------------

def _bad_info_then_image(s, make_K):
    """A broken camera_info, then (as drivers do) images with the same broken info."""
    K = make_K(s.seq.K)
    for _ in range(2):
        s.send(K=K)
        time.sleep(0.05)


def test_camera_info(live):
    ci = "rejected_camera_info"
    cases = [
        ("K all zero", lambda s: _bad_info_then_image(s, lambda K: np.zeros((3, 3))), ci, "no valid K"),
        ("fx = 1e300", lambda s: _bad_info_then_image(s, lambda K: _set(K, (0, 0), 1e300)), ci, "physical bounds"),
        ("fy = 2e6", lambda s: _bad_info_then_image(s, lambda K: _set(K, (1, 1), 2e6)), ci, "physical bounds"),
        ("cx = -5e6", lambda s: _bad_info_then_image(s, lambda K: _set(K, (0, 2), -5e6)), ci, "physical bounds"),
        ("fx NaN", lambda s: _bad_info_then_image(s, lambda K: _set(K, (0, 0), np.nan)), ci, "no valid K"),
        ("fx negative", lambda s: _bad_info_then_image(s, lambda K: _set(K, (0, 0), -100.0)), ci, "no valid K"),
        ("K[2,2] = 0", lambda s: _bad_info_then_image(s, lambda K: _set(K, (2, 2), 0.0)), ci, "no valid K"),
        ("camera_info of another aspect", lambda s: _info_size(s, 100, 100), "camera_info_mismatch",
         "does not match camera_info 100x100"),
        ("camera_info of size 0x0", lambda s: _info_size(s, 0, 0), "camera_info_mismatch", "camera_info 0x0"),
        ("distortion appears", lambda s: _info_d(s, [0.1, 0.01, 0, 0, 0]), "distortion_changes", "distortion"),
        ("distortion changes", lambda s: _info_d(s, [-0.2, 0.05, 0, 0, 0.001]), "distortion_changes", "distortion"),
        ("distortion NaN", lambda s: _info_d(s, [float("nan")] * 5), "distortion_changes", "distortion.*nan"),
    ]
    failures = run_cases(live, cases)
    # a camera_info of twice the size with the same field of view is scaled, not rejected
    n_proc, n_mis = live.counter("processed"), live.counter("camera_info_mismatch")
    K2 = np.array(live.seq.K) * [[2], [2], [1]]
    f = live.path[live.k % len(live.path)]
    stamp = time.time_ns()
    live.tf.publish(live.tf_msg(f.T_world_cam, stamp))
    live.info.publish(C.make_camera_info(K2, 2 * W, 2 * H, C.make_header(stamp, "camera")))
    live.image.publish(C.array_to_image(f.image, "rgb8", C.make_header(stamp, "camera")))
    if not live.wait(lambda: live.counter("processed") > n_proc) or live.counter("camera_info_mismatch") != n_mis:
        failures.append("binned camera_info (same aspect): not processed")
    live.good_until_depth()
    assert not failures, "\n".join(failures)


def _set(K, ij, v):
    K = np.array(K, dtype=np.float64)
    K[ij] = v
    return K


def _info_size(s, w, h):
    stamp = time.time_ns()
    f = s.path[s.k % len(s.path)]
    s.tf.publish(s.tf_msg(f.T_world_cam, stamp))
    s.info.publish(C.make_camera_info(s.seq.K, w, h, C.make_header(stamp, "camera")))
    s.send(stamp=stamp, info=False, T=False)


def _info_d(s, D):
    stamp = time.time_ns()
    s.info.publish(C.make_camera_info(s.seq.K, W, H, C.make_header(stamp, "camera"), D=D))
    s.send(stamp=stamp, info=False)


# ------------------------------------------------------------------------------------------------
# TF content and timing
# ------------------------------------------------------------------------------------------------

def _tf_raw(s, tx=0.0, ty=0.0, tz=0.0, qw=1.0, qx=0.0, qy=0.0, qz=0.0, parent="odom", child="camera", stamp=None):
    from geometry_msgs.msg import TransformStamped
    ts = TransformStamped(header=C.make_header(time.time_ns() if stamp is None else stamp, parent),
                          child_frame_id=child)
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = tx, ty, tz
    ts.transform.rotation.w, ts.transform.rotation.x, ts.transform.rotation.y, ts.transform.rotation.z = qw, qx, qy, qz
    s.tf.publish(s.TFMessage(transforms=[ts]))


def _tf_then_frames(send_bad):
    def act(s):
        send_bad(s)
        time.sleep(0.05)
        s.send()
    return act


def _reversed_edge(s):
    f = s.path[s.k % len(s.path)]
    stamp = time.time_ns()
    s.tf.publish(s.tf_msg(np.linalg.inv(f.T_world_cam), stamp, parent="camera", child="odom"))
    time.sleep(0.05)
    for _ in range(3):
        s.send()
        time.sleep(0.05)


def _reparented(s):
    stamp = time.time_ns()
    s.tf.publish(s.tf_msg(np.eye(4), stamp, parent="wrong_parent", child="camera"))
    time.sleep(0.05)
    s.send(T=False, stamp=stamp + 1000)


def _late_tf(s):
    """The image first, its transform 0.1 s later (within tf_timeout): the frame gets its pose."""
    f = s.path[s.k % len(s.path)]
    stamp = time.time_ns()
    s.send(stamp=stamp, T=False)
    time.sleep(0.1)
    s.tf.publish(s.tf_msg(f.T_world_cam, stamp))


def _duplicate(s):
    """A frame, and once it has been processed, the same frame again (a driver re-sending)."""
    n = s.counter("processed")
    stamp = s.send()
    s.wait(lambda: s.counter("processed") > n)
    s.send(stamp=stamp, T=False)


def test_tf_content_and_timing(live):
    rej = "tf_rejected"
    cases = [
        ("far-future /tf (sec 2147483646)",
         _tf_then_frames(lambda s: _tf_raw(s, stamp=2147483646 * S)), "tf_rejected_future", "after the reference time"),
        ("/tf 6 s in the future", _tf_then_frames(lambda s: _tf_raw(s, stamp=time.time_ns() + 6 * S)),
         "tf_rejected_future", "after the reference time"),
        ("NaN rotation", _tf_then_frames(lambda s: _tf_raw(s, qx=float("nan"))), rej, "non-finite"),
        ("infinite translation", _tf_then_frames(lambda s: _tf_raw(s, tx=float("inf"))), rej, "non-finite"),
        ("zero quaternion", _tf_then_frames(lambda s: _tf_raw(s, qw=0.0)), rej, "zero quaternion"),
        ("translation 1e300 m", _tf_then_frames(lambda s: _tf_raw(s, ty=1e300)), rej, "physical bounds"),
        ("translation 2000 km", _tf_then_frames(lambda s: _tf_raw(s, tz=2e6)), rej, "physical bounds"),
        ("empty child frame", _tf_then_frames(lambda s: _tf_raw(s, child="")), rej, "invalid transform frames"),
        ("empty parent frame", _tf_then_frames(lambda s: _tf_raw(s, parent="")), rej, "invalid transform frames"),
        ("parent == child", _tf_then_frames(lambda s: _tf_raw(s, parent="camera")), rej, "invalid transform frames"),
        ("reversed edge camera -> odom (loop)", _reversed_edge, "tf_failures", "loop|not connected|no pose"),
        ("optical frame re-parented", _reparented, "tf_failures", "not connected|wrong_parent|no pose"),
        ("no /tf for the image stamp", lambda s: s.send(T=False), "tf_failures", "no pose|tf_timeout"),
        ("image stamp far in the future", lambda s: s.send(stamp=2147483646 * S), "stamp_invalid", "future"),
        ("image stamp 0", lambda s: s.send(stamp=0, T=False), "stamp_invalid", "stamp 0"),
        ("image stamp backwards", lambda s: s.send(stamp=time.time_ns() - S // 5), "stamp_backwards",
         "not after the previous"),
        ("same stamp twice", _duplicate, "stamp_backwards", "not after the previous"),
        ("bag loop: stamps 100 s back", lambda s: s.send(stamp=time.time_ns() - 100 * S), "time_jumps",
         "jumped back"),
    ]
    failures = run_cases(live, cases)
    # robustly normalised quaternions are used, not rejected: (1e200, 1e200, 0, 0) is 90 degrees about x
    n_rej = live.counter(rej)
    for q in ((1e200, 1e200, 0.0, 0.0), (1e-200, 0.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0)):
        _tf_raw(live, qw=q[0], qx=q[1], child="probe_frame")
    if not live.good_until_depth() or live.counter(rej) != n_rej:
        failures.append("huge / tiny / unnormalised quaternions were rejected")
    # a late transform (within tf_timeout) still gives the frame its pose
    n_fail = live.counter("tf_failures")
    _late_tf(live)
    time.sleep(0.5)
    if live.counter("tf_failures") != n_fail:
        failures.append("a transform 0.1 s after its image (tf_timeout 0.3 s) was not used")
    live.good_until_depth()
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------
# sizes and degenerate motion
# ------------------------------------------------------------------------------------------------

def test_sizes_and_motion(live):
    def half(s):
        f = s.path[s.k % len(s.path)]
        s.send(np.ascontiguousarray(f.image[::2, ::2]))

    def tiny(s):
        s.send(np.zeros((3, 4, 3), np.uint8))

    def big(s):
        import cv2
        f = s.path[s.k % len(s.path)]
        s.send(cv2.resize(f.image, (W * 10, H * 10)))

    def other_aspect(s):
        s.send(np.zeros((H, W * 2, 3), np.uint8))

    def km_jumps(s):
        for j in range(6):
            f = s.path[s.k % len(s.path)]
            T = np.array(f.T_world_cam, dtype=np.float64)
            T[0, 3] += 1000.0 * (j + 1)
            s.send(T=T)
            time.sleep(0.08)

    def far_away(s):
        for j in range(6):
            f = s.path[s.k % len(s.path)]
            T = np.array(f.T_world_cam, dtype=np.float64)
            T[:3, 3] += 5e5 + 100.0 * j
            s.send(T=T)
            time.sleep(0.08)

    def turn_around(s):
        import transforms3d.axangles as ta
        for j in range(6):
            f = s.path[s.k % len(s.path)]
            T = np.array(f.T_world_cam, dtype=np.float64)
            if j % 2:
                T[:3, :3] = T[:3, :3] @ ta.axangle2mat([0, 1, 0], np.pi)
            s.send(T=T)
            time.sleep(0.08)

    cases = [
        ("half-size image (binned)", half, "size_changes", "size changed"),
        ("4x3 image", tiny, "size_changes", "size changed"),
        ("10x larger image", big, "size_changes", "size changed"),
        ("image of another aspect than camera_info", other_aspect, "camera_info_mismatch", "does not match"),
        ("poses 1 km apart per frame", km_jumps, "implausible_baseline", "cannot overlap"),
        ("camera 500 km away moving 100 m per frame", far_away, "implausible_baseline", "cannot overlap"),
        ("camera turning 180 degrees between frames", turn_around, "empty_depth", "all NaN"),
    ]
    failures = run_cases(live, cases)
    # a camera standing still makes no new keyframes: no depth, no error, and depth once it moves
    n_err = live.counter("errors")
    f = live.path[live.k % len(live.path)]
    for _ in range(10):
        live.send(f.image, T=f.T_world_cam)
        time.sleep(0.05)
    if live.counter("errors") != n_err or not live.good_until_depth():
        failures.append("standing still: errors or no depth afterwards")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------
# live parameters
# ------------------------------------------------------------------------------------------------

def test_live_parameters(live):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    node = live.probe.node
    cli = node.create_client(SetParameters, "/mvs_node/set_parameters")
    assert cli.wait_for_service(timeout_sec=20)

    def set_param(name, value):
        v = ParameterValue()
        if isinstance(value, bool):
            v.type, v.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, int):
            v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, value
        elif isinstance(value, float):
            v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, value
        else:
            v.type, v.string_value = ParameterType.PARAMETER_STRING, value
        fut = cli.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=v)]))
        assert live.wait(lambda: fut.done(), 20)
        return fut.result().results[0]

    failures = []
    for name, value, why in (("confidence_threshold", 1.5, ""), ("confidence_threshold", float("nan"), ""),
                             ("width", 128, "read-only"), ("model", "itermvs", "read-only"),
                             ("points_stride", 0, ""), ("points_stride", "abc", ""),
                             ("tf_timeout", -1.0, ""), ("points_max_range", float("inf"), ""),
                             ("publish_points", 3, "")):
        r = set_param(name, value)
        if r.successful or (why and why not in r.reason):
            failures.append(f"set {name}={value!r}: accepted or no reason ({r.reason!r})")
        if not live.proc.alive():
            failures.append(f"set {name}={value!r}: the node died")
            break
    if not live.good_until_depth():
        failures.append("no depth after the refused changes")
    r = set_param("confidence_threshold", 0.2)
    if not r.successful or not live.good_until_depth():
        failures.append(f"a valid live change failed: {r.reason!r}")
    set_param("confidence_threshold", 0.0)
    assert not failures, "\n".join(failures)


def test_diagnostics_recover_to_ok(live):
    """After all the cases above, one second of good input brings the level back to OK while the lifetime
    counters keep their values."""
    from diagnostic_msgs.msg import DiagnosticStatus
    n = live.counter("rejected_encoding")
    live.send(np.zeros((H, W), np.float32), encoding="32FC1")
    assert live.wait(lambda: live.level == DiagnosticStatus.WARN[0] and "32FC1" in live.message), live.message
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        live.send()
        time.sleep(0.07)
    assert live.wait(lambda: live.level == DiagnosticStatus.OK[0], 5), (live.level, live.message)
    assert live.counter("rejected_encoding") == n + 1    # the lifetime counter keeps its value


# ------------------------------------------------------------------------------------------------
# startup
# ------------------------------------------------------------------------------------------------

def _startup_cases(tmp: Path):
    import torch
    net = torch.nn.Linear(3, 2)
    torch.save({"model": net.state_dict()}, tmp / "other_net.ckpt")
    data = (tmp / "other_net.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "text.ckpt").write_text("these are not weights\n")
    (tmp / "empty.ckpt").write_bytes(b"")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))
    torch.save({"model": net.state_dict(), "x": Evil()}, tmp / "evil.ckpt")
    cases = [
        ("itermvs + text file", dict(model="itermvs", checkpoint=str(tmp / "text.ckpt")), 1, "not a checkpoint"),
        ("patchmatchnet + text file", dict(model="patchmatchnet", checkpoint=str(tmp / "text.ckpt")), 1,
         "not a checkpoint"),
        ("itermvs + truncated", dict(model="itermvs", checkpoint=str(tmp / "truncated.ckpt")), 1, "truncated"),
        ("itermvs + empty file", dict(model="itermvs", checkpoint=str(tmp / "empty.ckpt")), 1, "empty"),
        ("itermvs + another network", dict(model="itermvs", checkpoint=str(tmp / "other_net.ckpt")), 1,
         "does not match"),
        ("mvsnet + unsafe pickle", dict(model="mvsnet", checkpoint=str(tmp / "evil.ckpt")), 1, "unsafe pickle"),
        ("planesweep + checkpoint", dict(model="planesweep", checkpoint=str(tmp / "other_net.ckpt")), 1,
         "would be ignored"),
        ("width 2", dict(width=2), 2, "width"),
        ("min_depth > max_depth", dict(min_depth=5.0, max_depth=1.0), 2, "min < max"),
        ("unknown model", dict(model="nope"), 2, "unknown"),
        ("missing checkpoint", dict(model="itermvs", checkpoint="/no/such.ckpt"), 2, "no such file"),
    ]
    try:
        import torch as _t
        has_cuda = _t.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if not has_cuda:
        cases.append(("device cuda without a GPU", dict(device="cuda"), 1, "no CUDA GPU"))
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        cases.append(("tf_backend tf2_ros not installed", dict(tf_backend="tf2_ros"), 1, "tf2_ros is not installed"))
    return cases


def _one_line(out: str, why: str):
    """The error lines of a startup (the node's INFO / WARN log lines aside) must be one, naming ``why``."""
    errors = [ln for ln in out.splitlines() if ln.strip() and "[INFO]" not in ln and "[WARN]" not in ln]
    return "Traceback" not in out and len(errors) == 1 and re.search(why, errors[0]) is not None


def test_startup_failures_are_one_line_and_an_exit_code(tmp_path, capfd):
    """Every startup case through the executables' ``main`` (``spin_node``) in this process: the exit status
    and one line on stderr."""
    from mvs_depth_ros.ros.mvs_node import main
    failures = []
    for name, params, rc, why in _startup_cases(tmp_path):
        p = dict(device="cpu", width=W, height=H)
        p.update(params)
        argv = ["mvs_node", "--ros-args"] + [a for k, v in p.items() for a in ("-p", f"{k}:={v}")]
        got = main(argv)
        out, err = capfd.readouterr()
        if got != rc or not _one_line(out + err, why):
            failures.append(f"{name}: exit {got} (expected {rc}), output:\n{(out + err)[-1500:]}")
    assert not (tmp_path / "pwned").exists(), "the unsafe pickle ran code"
    assert not failures, "\n\n".join(failures)


def test_startup_failures_of_the_executable(tmp_path):
    """A few of them as a user runs the node (its own process, ``python -m``): exit status, one line."""
    cases = [c for c in _startup_cases(tmp_path) if c[0] in (
        "itermvs + text file", "planesweep + checkpoint", "width 2", "device cuda without a GPU",
        "tf_backend tf2_ros not installed")]
    procs = []
    for name, params, rc, why in cases:
        p = dict(device="cpu", width=W, height=H)
        p.update(params)
        cmd = [sys.executable, "-m", "mvs_depth_ros.ros.mvs_node", "--ros-args"]
        cmd += [a for k, v in p.items() for a in ("-p", f"{k}:={v}")]
        procs.append(subprocess.Popen(cmd, env=ros_env(), cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    failures = []
    for (name, params, rc, why), proc in zip(cases, procs):
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            failures.append(f"{name}: still running after 120 s")
            continue
        if proc.returncode != rc or not _one_line(out, why):
            failures.append(f"{name}: exit {proc.returncode} (expected {rc}), output:\n{out[-1500:]}")
    assert not failures, "\n\n".join(failures)
