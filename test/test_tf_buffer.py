"""TfBuffer (our tf for installs without tf2_ros) and PoseBuffer stamp matching, against known transforms."""
import numpy as np
import pytest
import transforms3d.axangles as ta

from mvs_depth_ros.ros.tf_buffer import (ConnectivityError, ExtrapolationError, GapError, TfBuffer,
                                         UnknownFrameError, slerp)

S = 1_000_000_000


def rt(axis, angle, t):
    T = np.eye(4)
    T[:3, :3] = ta.axangle2mat(axis, angle)
    T[:3, 3] = t
    return T


def test_exact_and_interpolated_lookup():
    b = TfBuffer(cache_time_s=10, max_gap_s=1.0)
    b.set_transform("odom", "base", 1 * S, rt([0, 0, 1], 0.0, [0, 0, 0]))
    b.set_transform("odom", "base", 2 * S, rt([0, 0, 1], 0.4, [1.0, 2.0, 0]))
    np.testing.assert_allclose(b.lookup("odom", "base", 2 * S), rt([0, 0, 1], 0.4, [1, 2, 0]), atol=1e-12)
    # halfway: slerp gives half the angle about the same axis, lerp half the translation
    np.testing.assert_allclose(b.lookup("odom", "base", int(1.5 * S)), rt([0, 0, 1], 0.2, [0.5, 1.0, 0]), atol=1e-9)
    np.testing.assert_allclose(b.lookup("odom", "base", int(1.25 * S)), rt([0, 0, 1], 0.1, [0.25, 0.5, 0]), atol=1e-9)
    # inverse direction
    np.testing.assert_allclose(b.lookup("base", "odom", int(1.5 * S)), np.linalg.inv(rt([0, 0, 1], 0.2, [0.5, 1, 0])),
                               atol=1e-9)


def test_out_of_order_insert_and_slerp_large_angle():
    b = TfBuffer(max_gap_s=5)
    b.set_transform("w", "c", 3 * S, rt([1, 1, 0], 2.5, [3, 0, 0]))
    b.set_transform("w", "c", 1 * S, rt([1, 1, 0], 0.5, [1, 0, 0]))
    np.testing.assert_allclose(b.lookup("w", "c", 2 * S), rt([1, 1, 0], 1.5, [2, 0, 0]), atol=1e-9)
    q = slerp(np.array([1.0, 0, 0, 0]), np.array([-1.0, 0, 0, 0]), 0.5)  # same rotation, opposite sign
    np.testing.assert_allclose(np.abs(q), [1, 0, 0, 0], atol=1e-12)


def test_chain_through_tree_with_static_edge():
    b = TfBuffer(max_gap_s=1.0)
    T_base_cam = rt([0, 1, 0], -np.pi / 2, [0.1, 0.0, 0.3])  # static mount
    T_base_imu = rt([1, 0, 0], 0.3, [0, 0.2, 0])
    b.set_transform("base", "camera_optical", 0, T_base_cam, static=True)
    b.set_transform("base", "imu", 0, T_base_imu, static=True)
    for k in range(5):
        b.set_transform("map", "odom", k * S, rt([0, 0, 1], 0.05 * k, [k * 0.1, 0, 0]))
        b.set_transform("odom", "base", k * S, rt([0, 0, 1], 0.1 * k, [k * 1.0, 0, 0]))
    t = int(2.5 * S)
    expect = rt([0, 0, 1], 0.125, [0.25, 0, 0]) @ rt([0, 0, 1], 0.25, [2.5, 0, 0]) @ T_base_cam
    np.testing.assert_allclose(b.lookup("map", "camera_optical", t), expect, atol=1e-9)
    # sibling frames (common ancestor below the root), static only: valid at any time
    np.testing.assert_allclose(b.lookup("imu", "camera_optical", 123 * S), np.linalg.inv(T_base_imu) @ T_base_cam,
                               atol=1e-12)
    # stamp 0: latest common time
    np.testing.assert_allclose(b.lookup("odom", "camera_optical", 0), rt([0, 0, 1], 0.4, [4, 0, 0]) @ T_base_cam,
                               atol=1e-9)
    assert b.can_transform("map", "camera_optical", 3 * S)
    assert not b.can_transform("map", "camera_optical", 9 * S)


def test_failures_are_specific():
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5)
    b.set_transform("odom", "cam", 1 * S, np.eye(4))
    b.set_transform("odom", "cam", 2 * S, np.eye(4))   # 1 s gap > 0.5 s tolerance
    b.set_transform("odom", "cam", int(2.2 * S), np.eye(4))
    b.set_transform("other_root", "x", 1 * S, np.eye(4))
    with pytest.raises(GapError, match="1.000s apart"):
        b.lookup("odom", "cam", int(1.5 * S))
    b.lookup("odom", "cam", int(2.1 * S))  # inside a small gap: fine
    with pytest.raises(ExtrapolationError, match="after the newest"):
        b.lookup("odom", "cam", 3 * S)
    with pytest.raises(ExtrapolationError, match="before the oldest"):
        b.lookup("odom", "cam", 0 * S + 1)
    with pytest.raises(UnknownFrameError, match="'nope'"):
        b.lookup("odom", "nope", 1 * S)
    with pytest.raises(ConnectivityError, match="not connected"):
        b.lookup("odom", "x", 1 * S)
    for bad in (np.full((4, 4), np.nan), np.diag([2.0, 1, 1, 1])):
        with pytest.raises(ValueError):
            b.set_transform("odom", "cam", 5 * S, bad)
    with pytest.raises(ValueError):
        b.set_transform("cam", "cam", 5 * S, np.eye(4))


def test_cache_duration_drops_old_and_clear_keeps_static():
    b = TfBuffer(cache_time_s=2.0, max_gap_s=5)
    for k in range(10):
        b.set_transform("odom", "cam", k * S, np.eye(4))
    b.set_transform("cam", "lens", 0, np.eye(4), static=True)
    with pytest.raises(ExtrapolationError, match="before the oldest"):
        b.lookup("odom", "cam", 5 * S)
    b.lookup("odom", "lens", 8 * S)
    b.clear()
    assert b.frames() == ["cam", "lens"]


def test_lookup_waits_for_late_data_then_times_out():
    import threading
    import time
    b = TfBuffer(max_gap_s=1)
    b.set_transform("odom", "cam", 1 * S, np.eye(4))
    threading.Timer(0.05, lambda: b.set_transform("odom", "cam", 2 * S, rt([0, 0, 1], 0, [2, 0, 0]))).start()
    T = b.lookup("odom", "cam", int(1.5 * S), timeout_s=2.0)
    assert T[0, 3] == pytest.approx(1.0)
    t0 = time.monotonic()
    with pytest.raises(ExtrapolationError):
        b.lookup("odom", "cam", 5 * S, timeout_s=0.1)
    assert 0.09 < time.monotonic() - t0 < 1.0


def test_pose_buffer_matching():
    from mvs_depth_ros.ros.sync import PoseBuffer, SyncError
    pb = PoseBuffer(tolerance_s=0.01, max_size=5)
    for k in range(8):
        pb.add(k * S, rt([0, 0, 1], 0, [k, 0, 0]))
    assert len(pb) == 5
    assert pb.lookup(int(6.005 * S))[0, 3] == 6
    with pytest.raises(SyncError, match="tolerance"):
        pb.lookup(int(6.5 * S))
    with pytest.raises(SyncError):
        pb.lookup(1 * S)  # dropped by max_size
    with pytest.raises(ValueError):
        pb.add(9 * S, np.full((4, 4), np.nan))


def test_pose_messages_to_matrix():
    pytest.importorskip("nav_msgs.msg", reason="ROS 2 message packages not installed (tools/install_ros.sh)")
    from nav_msgs.msg import Odometry
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros.sync import pose_message_to_matrix
    T = rt([0, 1, 1], 0.7, [1, 2, 3])
    odo = Odometry(header=C.make_header(5 * S + 7, "odom"), child_frame_id="camera")
    odo.pose.pose = C.matrix_to_pose(T)
    stamp, frame, M = pose_message_to_matrix(odo)
    assert stamp == 5 * S + 7 and frame == "odom"
    np.testing.assert_allclose(M, T, atol=1e-12)
    ps = C.make_pose_stamped(T, "odom", 3 * S)
    assert pose_message_to_matrix(ps)[0] == 3 * S
    np.testing.assert_allclose(pose_message_to_matrix(ps)[2], T, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# a buffer no single message can poison (issue 14): each case recovers within one second of good TF
# ------------------------------------------------------------------------------------------------
T0 = 1_700_000_000 * S   # a live-looking stamp
HZ = 30


def _truth(k):
    return rt([0, 0, 1], 0.01 * k, [0.02 * k, 0.01 * k, 0.0])


def _stream(b, ks, parent="odom", child="camera_link", clock=None):
    """Good TF at 30 Hz (sample k at T0 + k/30 s); before each sample, the node's image lookup one sample back
    (``note_reference`` + lookup, like BuiltinLookup). Returns the ks whose lookup failed."""
    failed = []
    for k in ks:
        stamp = T0 + k * S // HZ
        if clock is not None:
            clock[0] = stamp
        b.set_transform(parent, child, stamp, _truth(k))
        img = stamp - S // (2 * HZ)   # an image between the last two samples
        b.note_reference(img)
        try:
            T = b.lookup(parent, child, img)
            np.testing.assert_allclose(T[:3, 3], (_truth(k - 1)[:3, 3] + _truth(k)[:3, 3]) / 2, atol=1e-9)
        except Exception:  # noqa: BLE001 - any failure counts
            failed.append(k)
    return failed


def test_far_future_transform_is_rejected_and_never_prunes_good_data():
    from mvs_depth_ros.ros.tf_buffer import FutureStampError
    clock = [T0]
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5, max_future_s=5, clock=lambda: clock[0])
    assert _stream(b, range(1, 30), clock=clock) == [1]        # the first image has no sample before it
    with pytest.raises(FutureStampError, match="after the reference time"):
        b.set_transform("odom", "camera_link", 2147483646 * S, _truth(0))
    with pytest.raises(FutureStampError):                        # 6 s ahead of the clock: beyond the bound
        b.set_transform("odom", "camera_link", T0 + 36 * S, _truth(0))
    b.set_transform("odom", "camera_link", clock[0] + 4 * S, _truth(0))  # within the bound: kept, but harmless
    assert _stream(b, range(30, 90), clock=clock) == []
    # no clock (sim time before the first /clock): the newest image stamp is the reference
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5, clock=None)
    assert _stream(b, range(1, 30)) == [1]
    with pytest.raises(FutureStampError):
        b.set_transform("odom", "camera_link", 2147483646 * S, _truth(0))
    assert _stream(b, range(30, 90)) == []
    # no reference at all yet (TF before the first image, no clock): the outlier is accepted, and the first
    # image stamp drops it; good data works again from the third image on
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5, clock=None)
    b.set_transform("odom", "camera_link", T0, _truth(0))
    b.set_transform("odom", "camera_link", 2147483646 * S, _truth(0))
    assert _stream(b, range(1, 60)) == [1, 2]
    assert b._dynamic["camera_link"].stamps[-1] == T0 + 59 * S // HZ


def test_reversed_edge_loop_heals_within_one_second():
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5, clock=None)
    assert _stream(b, range(1, 30)) == [1]
    s = T0 + 29 * S // HZ + S // 100
    b.set_transform("camera_link", "odom", s, np.linalg.inv(_truth(29)))   # one reversed message
    with pytest.raises(ConnectivityError, match="loop"):
        b.lookup("odom", "camera_link", s)
    failed = _stream(b, range(30, 30 + 9 * HZ))                             # 9 s of good TF
    assert failed and max(failed) < 30 + HZ, f"frames without a pose {failed}: must heal within 1 s"


def test_reparented_frames_follow_the_latest_parent_and_stray_parents_age_out():
    b = TfBuffer(cache_time_s=10, max_gap_s=0.5, clock=None)
    T_opt = rt([1, 0, 0], -np.pi / 2, [0, 0.05, 0])
    b.set_transform("camera_link", "camera_optical", 0, T_opt, static=True)
    assert _stream(b, range(1, 30)) == [1]
    s = T0 + 29 * S // HZ + S // 100
    b.set_transform("base_wrong", "camera_optical", s, np.eye(4))           # a mis-launched publisher, once
    b.set_transform("base_wrong", "camera_link", s + 1, np.eye(4))          # and a stray parent of camera_link
    failed = []
    for k in range(30, 30 + 3 * HZ):
        stamp = T0 + k * S // HZ
        b.set_transform("odom", "camera_link", stamp, _truth(k))
        b.note_reference(stamp)
        try:
            np.testing.assert_allclose(b.lookup("odom", "camera_optical", stamp), _truth(k) @ T_opt, atol=1e-9)
        except Exception:  # noqa: BLE001
            failed.append(k)
    assert failed and max(failed) < 30 + HZ, failed
    # a real re-parenting: camera_link now hangs below base_link; the latest parent wins from its stamp on
    t1 = T0 + 200 * S
    b.note_reference(t1)   # images go on (a camera moved to a new mount 200 s later)
    for k in range(5):
        b.set_transform("odom", "base_link", t1 + k * S // 10, rt([0, 0, 1], 0, [k, 0, 0]))
        b.set_transform("base_link", "camera_link", t1 + k * S // 10, rt([0, 0, 1], 0, [0, 0, 1]))
    b.note_reference(t1 + S // 4)
    np.testing.assert_allclose(b.lookup("odom", "camera_optical", t1 + S // 4)[:3, 3], [2.5, 0.05, 1], atol=1e-9)
    assert "base_wrong" not in b.frames()   # old samples pruned with the cache window


def test_disconnection_heals_and_samples_are_bounded():
    b = TfBuffer(cache_time_s=2, max_gap_s=0.5, clock=None, max_samples=100)
    assert _stream(b, range(1, 30)) == [1]
    # the tree changes to a disconnected one for an instant (camera_link under another root), then good data
    s = T0 + 29 * S // HZ + S // 100
    b.set_transform("other_root", "camera_link", s, np.eye(4))
    failed = _stream(b, range(30, 30 + 2 * HZ))
    assert failed and max(failed) < 30 + HZ, failed
    # a stalled camera (no new image stamp) with TF flowing: samples per frame stay bounded
    for k in range(1000):
        b.set_transform("odom", "camera_link", T0 + 3 * S + k * S // 1000, np.eye(4))
    assert len(b._dynamic["camera_link"].stamps) <= 100


def test_parent_bookkeeping_follows_inserts_and_pruning():
    b = TfBuffer(cache_time_s=1, max_gap_s=0.5, clock=None)
    b.set_transform("odom", "cam", T0, np.eye(4))
    b.set_transform("stray", "cam", T0 + S // 10, np.eye(4))
    b.set_transform("stray", "cam", T0 + S // 10, np.eye(4))      # the same stamp again: replaced, not added
    b.set_transform("odom", "cam", T0 + S // 10, np.eye(4))       # ... and re-parented at that stamp
    assert b._dynamic["cam"].parent_count == {"odom": 2}
    b.set_transform("stray", "cam", T0 + S // 5, np.eye(4))
    assert b.frames() == ["cam", "odom", "stray"]
    b.note_reference(T0 + 3 * S)                                   # everything older than the cache: gone
    assert b.frames() == []
