"""The synthetic renderer: exact, deterministic, geometrically and photometrically consistent."""
from dataclasses import replace

import cv2
import numpy as np
import pytest

from mvs_depth_ros.core.geometry import backproject, pose_distance, relative_pose, transform_points
from mvs_depth_ros.core.keyframes import KeyframeBuffer, KeyframeStatus
from mvs_depth_ros.data.synthetic import (camera_trajectory, depth_to_mm, look_at, make_intrinsics, make_scene,
                                          render_sequence, render_stereo_sequence, render_view, write_scene)

W, H = 160, 128


@pytest.fixture(scope="module")
def scene():
    return make_scene(0)


@pytest.fixture(scope="module")
def seq(scene):
    return render_sequence(13, W, H, seed=0, scene=scene)


def _sample(img: np.ndarray, u: np.ndarray, v: np.ndarray, interp=cv2.INTER_LINEAR) -> np.ndarray:
    """Sample ``img`` at float pixel coordinates (same shape as ``u``); NaN outside."""
    src = img.astype(np.float32)
    out = cv2.remap(src, u.astype(np.float32), v.astype(np.float32), interp,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    return out


def _reproject(depth_i, K, T_i, T_j):
    """Pixel coordinates (u, v) and depth z of frame i's pixels seen from camera j."""
    P = transform_points(relative_pose(T_j, T_i), backproject(depth_i, K).astype(np.float64))
    z = P[..., 2]
    u = K[0, 0] * P[..., 0] / z + K[0, 2]
    v = K[1, 1] * P[..., 1] / z + K[1, 2]
    return u, v, z


def test_deterministic_from_seed(scene):
    a = render_sequence(3, 64, 48, seed=0, scene=scene)
    b = render_sequence(3, 64, 48, seed=0)           # scene rebuilt from the seed
    c = render_sequence(3, 64, 48, seed=1)
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.depth_gt, fb.depth_gt)
        np.testing.assert_array_equal(fa.T_world_cam, fb.T_world_cam)
    assert np.mean(np.abs(a.frames[0].image.astype(int) - c.frames[0].image.astype(int))) > 10


def test_frame_metadata(seq):
    f = seq.frames[2]
    assert [x.name for x in seq.frames[:3]] == ["00000", "00001", "00002"]
    assert seq.frames[1].stamp - seq.frames[0].stamp == 100_000_000  # 10 Hz
    assert f.frame_id == "camera" and f.has_pose
    assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    assert f.depth_gt.dtype == np.float32 and f.depth_gt.shape == (H, W)
    np.testing.assert_array_equal(seq.poses[2], f.T_world_cam)
    np.testing.assert_array_equal(seq.K, f.K)


def test_depth_is_exact_on_a_fronto_parallel_wall(scene):
    """Empty room, camera 2 m in front of the +x wall looking straight at it: depth is 2 m everywhere
    on that wall (depth is along the optical axis, not the ray length)."""
    empty = replace(scene, boxes=[], textures=scene.textures[:6])
    K = make_intrinsics(W, H, hfov_deg=40.0)  # narrow enough to see only that wall
    x_wall = empty.room.hi[0]
    T = look_at(np.array([x_wall - 2.0, 0.0, 1.3]), np.array([x_wall, 0.0, 1.3]))
    _, depth = render_view(empty, K, T, W, H)
    np.testing.assert_allclose(depth, 2.0, atol=1e-6)
    # the same wall seen with a 10 degree yaw
    yaw = np.radians(10.0)
    target = np.array([x_wall, 2.0 * np.tan(yaw), 1.3])
    T = look_at(np.array([x_wall - 2.0, 0.0, 1.3]), target)
    _, depth = render_view(empty, K, T, W, H)
    # camera axes in the world: z = (cos, sin, 0), x = z cross up = (sin, -cos, 0), y = (0, 0, -1).
    # The ray (x, y, 1) of pixel u (x = (u - cx) / fx) advances cos + x sin along the wall normal per
    # unit depth, whatever y: the wall 2 m away is hit at depth 2 / (cos + x sin).
    x = (np.arange(W) - K[0, 2]) / K[0, 0]
    expected = 2.0 / (np.cos(yaw) + x * np.sin(yaw))
    np.testing.assert_allclose(depth[H // 2], expected, rtol=1e-6)


def test_trajectory_suits_the_keyframe_heuristic(seq):
    poses = camera_trajectory(60)
    d = np.array([pose_distance(poses[i], poses[i + 1])[0] for i in range(59)])
    assert 0.03 <= d.min() and d.max() <= 0.05
    buf = KeyframeBuffer()
    key = [i for i, f in enumerate(seq.frames) if buf.offer(f) in (KeyframeStatus.FIRST, KeyframeStatus.KEYFRAME)]
    gaps = np.diff(key)
    assert len(key) >= 4 and gaps.min() >= 2 and gaps.max() <= 4
    depth = np.stack([f.depth_gt for f in seq.frames])
    assert np.all(np.isfinite(depth)) and 0.5 <= depth.min() and depth.max() <= 6.0


@pytest.mark.parametrize("i,j", [(0, 3), (12, 6)])
def test_reprojection_consistency(seq, i, j):
    """Pixels of frame i reprojected into frame j with GT depth + poses land on the same colour, and on
    frame j's depth where visible. A pose error of 5 cm makes both checks fail (the test can fail)."""
    fi, fj = seq.frames[i], seq.frames[j]
    K = seq.K

    def errors(T_j):
        u, v, z = _reproject(fi.depth_gt, K, fi.T_world_cam, T_j)
        dj = _sample(fj.depth_gt, u, v)
        visible = np.isfinite(dj) & (np.abs(z - dj) < 0.01 * dj)
        cj = _sample(fj.image, u, v)
        cerr = np.abs(cj - fi.image.astype(np.float32)).mean(axis=-1)
        return visible, np.abs(z - dj) / dj, cerr

    visible, derr, cerr = errors(fj.T_world_cam)
    assert visible.mean() > 0.7
    assert np.median(derr[visible]) < 1e-3
    good_colour = np.median(cerr[visible])
    assert good_colour < 4.0, good_colour

    T_bad = fj.T_world_cam.copy()
    T_bad[:3, 3] += T_bad[:3, 0] * 0.05   # 5 cm sideways
    vis_bad, _, cerr_bad = errors(T_bad)
    assert vis_bad.mean() < 0.5 * visible.mean() or np.median(cerr_bad[vis_bad]) > 3 * good_colour
    both = np.isfinite(cerr_bad)
    assert np.median(cerr_bad[both]) > 3 * good_colour


def test_write_scene_round_trip(seq, tmp_path):
    frames = seq.frames[:3]
    out = write_scene(frames, tmp_path / "scene")
    poses = np.loadtxt(out / "poses.txt").reshape(-1, 4, 4)
    np.testing.assert_array_equal(poses, np.stack([f.T_world_cam for f in frames]))
    np.testing.assert_array_equal(np.loadtxt(out / "K.txt"), seq.K)
    for f in frames:
        rgb = cv2.cvtColor(cv2.imread(str(out / "images" / f"{f.name}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, f.image)
        mm = cv2.imread(str(out / "depth" / f"{f.name}.png"), cv2.IMREAD_UNCHANGED)
        assert mm.dtype == np.uint16
        np.testing.assert_allclose(mm / 1000.0, f.depth_gt, atol=0.0005 + 1e-7)
    # and through the project's reader of that layout
    from mvs_depth_ros.data.scenes import load_scene
    scene = load_scene(out)
    assert scene.names == [f.name for f in frames]
    for i, f in enumerate(frames):
        g = scene.frame(i)
        np.testing.assert_array_equal(g.image, f.image)
        np.testing.assert_array_equal(g.T_world_cam, f.T_world_cam)
        np.testing.assert_allclose(g.depth_gt, f.depth_gt, atol=0.0005 + 1e-7)


def test_depth_to_mm_invalid_is_zero():
    mm = depth_to_mm(np.array([[np.nan, 0.0, -1.0, 1.2344, 70.0]], np.float32))
    np.testing.assert_array_equal(mm, [[0, 0, 0, 1234, 0]])


def test_stereo_disparity_consistency(scene):
    pairs = render_stereo_sequence(2, W, H, baseline=0.1, seed=0, scene=scene)
    p = pairs[1]
    fx = p.K[0, 0]
    _, depth = render_view(scene, p.K, p.T_world_cam, W, H, time=1)
    np.testing.assert_allclose(p.disparity_gt, fx * 0.1 / depth, rtol=1e-6)
    assert p.disparity_gt.dtype == np.float32 and np.all(p.disparity_gt > 0)
    np.testing.assert_array_equal(p.T_world_cam, camera_trajectory(2)[1])

    v, u = np.mgrid[0:H, 0:W].astype(np.float32)

    def colour_error(disp):
        right = _sample(p.right, u - disp, v)
        return np.abs(right - p.left.astype(np.float32)).mean(axis=-1)

    err = colour_error(p.disparity_gt)
    ok = np.isfinite(err)
    assert ok.mean() > 0.8
    good = np.median(err[ok])
    assert good < 4.0, good
    wrong = colour_error(p.disparity_gt + 2.0)
    assert np.median(wrong[np.isfinite(wrong)]) > 3 * good


def test_moving_object_moves_only_itself(scene):
    moving = make_scene(0, moving_object=True)
    K = make_intrinsics(W, H)
    T = camera_trajectory(1)[0]
    _, d0 = render_view(moving, K, T, W, H, time=0)
    _, d10 = render_view(moving, K, T, W, H, time=10)
    _, static = render_view(scene, K, T, W, H, time=10)
    changed = d0 != d10
    assert 0.005 < changed.mean() < 0.3
    # where the moving box is absent at both times the depth equals the static scene's
    absent = (d0 == static) & (d10 == static)
    assert absent.mean() > 0.6


def test_bad_inputs(scene):
    K = make_intrinsics(W, H)
    outside = np.eye(4)
    outside[:3, 3] = (10.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="outside the room"):
        render_view(scene, K, outside, W, H)
    with pytest.raises(ValueError):
        render_view(scene, np.eye(4), camera_trajectory(1)[0], W, H)
    with pytest.raises(ValueError):
        render_stereo_sequence(1, W, H, baseline=0.0)
