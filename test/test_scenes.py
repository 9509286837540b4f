"""Dataset readers: real layouts and clear errors on malformed input."""
import logging

import cv2
import numpy as np
import pytest

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.data.scenes import SceneError, load_scene, load_tum_pair, read_keyframe_index


def _write_scene(root, n=3, size=(24, 16)):
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        cv2.imwrite(str(root / "depth" / f"{i:05d}.png"), np.full((size[1], size[0]), 1500 + i, np.uint16))
    poses = []
    for i in range(n):
        T = np.eye(4)
        T[0, 3] = 0.1 * i
        poses.append(" ".join(f"{v:.6f}" for v in T.ravel()))
    (root / "poses.txt").write_text("\n".join(poses) + "\n")
    (root / "K.txt").write_text("20 0 12\n0 20 8\n0 0 1\n")
    return root


def test_reads_scene(tmp_path):
    scene = load_scene(_write_scene(tmp_path / "s"))
    assert len(scene) == 3 and scene.names == ["00000", "00001", "00002"]
    f = scene.frame(2)
    assert f.image.shape == (16, 24, 3) and f.image.dtype == np.uint8
    assert f.depth_gt.dtype == np.float32 and np.allclose(f.depth_gt, 1.502)
    assert f.T_world_cam[0, 3] == pytest.approx(0.2)
    assert f.has_pose


def test_missing_K(tmp_path):
    root = _write_scene(tmp_path / "s")
    (root / "K.txt").unlink()
    with pytest.raises(SceneError, match=r"K\.txt: missing intrinsics"):
        load_scene(root)


def test_pose_count_mismatch(tmp_path):
    root = _write_scene(tmp_path / "s")
    lines = (root / "poses.txt").read_text().splitlines()
    (root / "poses.txt").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(SceneError, match=r"poses\.txt: 2 poses for 3 images"):
        load_scene(root)


def test_pose_line_with_wrong_count_names_line(tmp_path):
    root = _write_scene(tmp_path / "s")
    lines = (root / "poses.txt").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:15])
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneError, match=r"poses\.txt:2: .*expected 16 numbers, got 15"):
        load_scene(root)


def test_non_rigid_pose_names_line(tmp_path):
    root = _write_scene(tmp_path / "s")
    lines = (root / "poses.txt").read_text().splitlines()
    vals = lines[2].split()
    vals[0] = "2.0"
    lines[2] = " ".join(vals)
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneError, match=r"poses\.txt:3: not a rigid transform"):
        load_scene(root)


def test_nan_pose_is_reported_and_means_no_pose(tmp_path, caplog):
    root = _write_scene(tmp_path / "s")
    lines = (root / "poses.txt").read_text().splitlines()
    lines[1] = " ".join(["nan"] * 16)
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        scene = load_scene(root)
    assert "poses.txt: 1 non-finite pose(s) (lines 2)" in caplog.text
    assert scene.frame(1).T_world_cam is None and scene.frame(0).has_pose


def test_corrupt_png(tmp_path):
    root = _write_scene(tmp_path / "s")
    (root / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    scene = load_scene(root)
    with pytest.raises(SceneError, match=r"00001\.png: unreadable or empty image"):
        scene.frame(1)


def test_zero_size_image_rejected():
    with pytest.raises(ValueError, match="zero-size image"):
        Frame(image=np.zeros((0, 10, 3), np.uint8), K=np.eye(3))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Frame(image=np.zeros((4, 4), np.uint8), K=np.eye(3))


def test_depth_size_mismatch(tmp_path):
    root = _write_scene(tmp_path / "s")
    cv2.imwrite(str(root / "depth" / "00000.png"), np.ones((5, 5), np.uint16))
    with pytest.raises(SceneError, match="depth size"):
        load_scene(root).frame(0)


def test_keyframe_index_errors(tmp_path):
    p = tmp_path / "idx"
    p.write_text("a.png b.png\nc.png\n")
    with pytest.raises(SceneError, match=r"idx:2: a keyframe line needs"):
        read_keyframe_index(p)
    with pytest.raises(SceneError, match="does not exist"):
        read_keyframe_index(tmp_path / "nope")


def test_resize_rescales_intrinsics(tmp_path):
    f = load_scene(_write_scene(tmp_path / "s")).frame(0)
    g = f.resized(12, 32)
    assert g.image.shape == (32, 12, 3) and g.depth_gt.shape == (32, 12)
    assert g.K[0, 0] == pytest.approx(10.0) and g.K[0, 2] == pytest.approx(6.0)
    assert g.K[1, 1] == pytest.approx(40.0) and g.K[1, 2] == pytest.approx(16.0)


def test_hololens_scene():
    root = require_shared("data", "hololens-000")
    scene = load_scene(root)
    assert len(scene) == 200
    f = scene.frame(0)
    assert f.image.shape == (360, 540, 3)
    valid = np.isfinite(f.depth_gt)
    assert 0.5 < valid.mean() <= 1.0 and 0.2 < np.nanmedian(f.depth_gt) < 10


def test_tum_pair_poses_are_camera_to_world():
    root = require_shared("data", "tum-demon-pairs", "rgbd_test_00000")
    a, b = load_tum_pair(root)
    assert a.image.shape == (480, 640, 3) and a.depth_gt.shape == (480, 640)
    # project frame a's depth into b: most points must land inside b with similar depth
    from mvs_depth_ros.core.geometry import backproject, transform_points
    pts = backproject(a.depth_gt, a.K)[::8, ::8].reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(1)]
    pb = transform_points(np.linalg.inv(b.T_world_cam) @ a.T_world_cam, pts)
    uv = pb[:, :2] / pb[:, 2:] * [b.K[0, 0], b.K[1, 1]] + [b.K[0, 2], b.K[1, 2]]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < 639) & (uv[:, 1] >= 0) & (uv[:, 1] < 479) & (pb[:, 2] > 0)
    assert inside.mean() > 0.6
    u, v = uv[inside].round().astype(int).T
    db = b.depth_gt[v, u]
    ok = np.isfinite(db)
    assert np.median(np.abs(db[ok] - pb[inside][ok, 2]) / db[ok]) < 0.05
