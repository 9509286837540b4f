"""Keyframe selection: DeepVideoMVS' heuristic, conformance with the official index files."""
import numpy as np
import pytest

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.core.keyframes import KeyframeBuffer, KeyframeConfig, KeyframeStatus
from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index

_IMG = np.zeros((4, 4, 3), np.uint8)
_K = np.array([[2.0, 0, 2], [0, 2.0, 2], [0, 0, 1]])


def _frame(T, name=""):
    return Frame(image=_IMG, K=_K, T_world_cam=T, name=name)


def _translation(x, y=0.0, z=0.0):
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def _simulate(poses, names, n_meas):
    """Run the buffer causally over a pose list; returns index lines (reference, [measurements])."""
    buf = KeyframeBuffer(KeyframeConfig())
    lines = []
    for T, name in zip(poses, names):
        if buf.offer(_frame(T, name)) == KeyframeStatus.KEYFRAME:
            lines.append((name, [f.name for f in buf.measurement_frames(n_meas)]))
    return lines


@pytest.mark.parametrize("n_meas", [1, 2, 3])
def test_matches_official_hololens_index(n_meas):
    root = require_shared("data", "hololens-000")
    scene = load_scene(root)
    names = [p.name for p in scene.image_paths]
    ours = _simulate(scene.poses, names, n_meas)
    official = read_keyframe_index(root / "indices" / f"keyframe+hololens-dataset+000+nmeas+{n_meas}")
    assert len(official) == 146
    assert len(ours) == len(official)
    for i, ((ref, meas), (oref, omeas)) in enumerate(zip(ours, official)):
        assert ref == oref, f"line {i}: reference {ref} != official {oref}"
        assert set(meas) == set(omeas), f"line {i}: measurement frames {meas} != official {omeas}"


def test_keyframe_threshold_and_first_frame():
    buf = KeyframeBuffer(KeyframeConfig(keyframe_pose_distance=0.1))
    assert buf.offer(_frame(_translation(0.0))) == KeyframeStatus.FIRST
    assert buf.offer(_frame(_translation(0.05))) == KeyframeStatus.TOO_CLOSE
    assert buf.offer(_frame(_translation(0.1))) == KeyframeStatus.KEYFRAME
    assert len(buf) == 2


def test_penalty_prefers_optimal_baseline_and_punishes_small_ones():
    buf = KeyframeBuffer(KeyframeConfig(keyframe_pose_distance=0.0))
    for i, x in enumerate([0.0, 0.10, 0.20, 0.36, 0.45]):
        buf.offer(_frame(_translation(x), name=str(i)))
    # reference at 0.45: candidates at 0.45, 0.35, 0.25 and 0.09 from it. The 0.09 baseline is closer to
    # the optimum 0.15 (0.06 short) than 0.25 is (0.10 long), but the x5 factor for too-small baselines
    # makes it lose: 5 * 0.06^2 = 0.018 > 0.10^2 = 0.01.
    assert buf.penalty(0.09, 0.0) == pytest.approx(5 * 0.06 ** 2)
    assert buf.penalty(0.25, 0.0) == pytest.approx(0.10 ** 2)
    assert [f.name for f in buf.measurement_frames(2)] == ["2", "3"]
    assert [f.name for f in buf.measurement_frames(1)] == ["2"]


def test_buffer_size_is_bounded():
    buf = KeyframeBuffer(KeyframeConfig(buffer_size=5, keyframe_pose_distance=0.0))
    for i in range(20):
        buf.offer(_frame(_translation(0.2 * i), name=str(i)))
    assert [f.name for f in buf.keyframes] == ["15", "16", "17", "18", "19"]


def test_tracking_lost_after_31_frames_without_pose():
    cfg = KeyframeConfig(tracking_lost_frames=30)
    buf = KeyframeBuffer(cfg)
    buf.offer(_frame(_translation(0.0)))
    nan_pose = np.full((4, 4), np.nan)
    statuses = [buf.offer(_frame(nan_pose)) for _ in range(31)]
    assert statuses[:30] == [KeyframeStatus.NO_POSE] * 30
    assert statuses[30] == KeyframeStatus.TRACKING_LOST
    assert len(buf) == 0
    assert buf.offer(_frame(None)) == KeyframeStatus.STILL_LOST
    # a pose resets the counter and starts a new buffer
    assert buf.offer(_frame(_translation(1.0))) == KeyframeStatus.FIRST


def test_non_rigid_pose_is_treated_as_missing():
    buf = KeyframeBuffer()
    T = np.eye(4)
    T[0, 0] = 2.0  # scaled, not a rotation
    assert buf.offer(_frame(T)) == KeyframeStatus.NO_POSE
