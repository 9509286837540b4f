"""Message <-> numpy conversions: round trips, step / endianness handling, PointCloud2 contents."""
import numpy as np
import pytest

from ros_helpers import require_rclpy

require_rclpy()

from mvs_depth_ros.core.geometry import backproject  # noqa: E402
from mvs_depth_ros.ros import conversions as C  # noqa: E402

RNG = np.random.default_rng(0)
K = np.array([[100.0, 0, 40.0], [0, 110.0, 30.0], [0, 0, 1]])


@pytest.mark.parametrize("enc,shape,dtype", [("rgb8", (6, 7, 3), np.uint8), ("bgr8", (6, 7, 3), np.uint8),
                                             ("mono8", (6, 7), np.uint8), ("32FC1", (6, 7), np.float32),
                                             ("16UC1", (6, 7), np.uint16)])
def test_image_round_trip(enc, shape, dtype):
    a = (RNG.random(shape) * 200).astype(dtype)
    msg = C.array_to_image(a, enc, C.make_header(1_500_000_123, "cam"))
    assert msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert msg.header.stamp.sec == 1 and msg.header.stamp.nanosec == 500_000_123
    assert type(msg.data).__name__ == "array"  # rclpy's fast path, not a per-element copy
    np.testing.assert_array_equal(C.image_to_array(msg), a)


def test_colour_conversions():
    rgb = RNG.integers(0, 255, (5, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(C.image_to_rgb(C.array_to_image(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(C.image_to_rgb(C.array_to_image(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    g = rgb[:, :, 0].copy()
    np.testing.assert_array_equal(C.image_to_rgb(C.array_to_image(g, "mono8")), np.stack([g] * 3, -1))
    with pytest.raises(C.UnsupportedEncoding, match="not a colour input"):
        C.image_to_rgb(C.array_to_image(np.zeros((2, 2), np.float32), "32FC1"))
    bad = C.array_to_image(rgb, "rgb8")
    bad.encoding = "yuv422"
    with pytest.raises(C.UnsupportedEncoding):
        C.image_to_array(bad)


def test_padded_step_and_big_endian():
    from sensor_msgs.msg import Image
    a = RNG.integers(0, 60000, (3, 5), dtype=np.uint16)
    padded = np.zeros((3, 16), np.uint8)  # 10 bytes of pixels + 6 bytes of padding per row
    padded[:, :10] = a.astype(">u2").view(np.uint8).reshape(3, 10)
    msg = Image(height=3, width=5, encoding="16UC1", is_bigendian=1, step=16)
    msg.data = padded.tobytes()
    out = C.image_to_array(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_corrupt_images_raise_clear_errors():
    msg = C.array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.height = 10
    with pytest.raises(C.ConversionError, match="needs"):
        C.image_to_array(msg)
    msg = C.array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.step = 5
    with pytest.raises(C.ConversionError, match="step"):
        C.image_to_array(msg)


def test_depth_encodings():
    d = np.array([[0.5, np.nan, 2.0], [70.0, -1.0, 1.2345]], np.float32)
    f = C.image_to_depth(C.depth_to_image(d))
    np.testing.assert_array_equal(np.isnan(f), np.isnan(d))
    mm = C.depth_to_image(d, encoding="16UC1")
    raw = C.image_to_array(mm)
    np.testing.assert_array_equal(raw, [[500, 0, 2000], [0, 0, 1234]])  # NaN, negative, > 65.535 m -> 0
    back = C.image_to_depth(mm)
    assert np.isnan(back[0, 1]) and back[1, 2] == pytest.approx(1.234)


def test_camera_info_round_trip():
    msg = C.make_camera_info(K, 80, 60, C.make_header(5, "cam"))
    K2, size, D = C.camera_info_to_K(msg)
    np.testing.assert_array_equal(K2, K)
    assert size == (80, 60) and not D.any()
    assert list(msg.p) == [100.0, 0, 40.0, 0, 0, 110.0, 30.0, 0, 0, 0, 1, 0]
    msg.k = [0.0] * 9
    with pytest.raises(C.ConversionError, match="no valid K"):
        C.camera_info_to_K(msg)


def test_pose_round_trip_and_nan():
    import transforms3d.euler as te
    T = np.eye(4)
    T[:3, :3] = te.euler2mat(0.3, -1.2, 2.5)
    T[:3, 3] = (1.0, -2.0, 3.5)
    np.testing.assert_allclose(C.transform_to_matrix(C.matrix_to_transform(T)), T, atol=1e-12)
    np.testing.assert_allclose(C.pose_to_matrix(C.matrix_to_pose(T)), T, atol=1e-12)
    tr = C.matrix_to_transform(T)
    tr.rotation.x = float("nan")
    with pytest.raises(C.ConversionError, match="non-finite"):
        C.transform_to_matrix(tr)
    tr = C.matrix_to_transform(T)
    tr.rotation.w = tr.rotation.x = tr.rotation.y = tr.rotation.z = 0.0
    with pytest.raises(C.ConversionError, match="zero quaternion"):
        C.transform_to_matrix(tr)
    # unnormalised quaternions are normalised
    tr = C.matrix_to_transform(T)
    tr.rotation.w *= 2; tr.rotation.x *= 2; tr.rotation.y *= 2; tr.rotation.z *= 2  # noqa: E702
    np.testing.assert_allclose(C.transform_to_matrix(tr), T, atol=1e-12)
    # quaternions whose norm overflows / underflows still normalise (not to the identity)
    for scale in (1e200, 1e-200, 1e300):
        tr = C.matrix_to_transform(T)
        tr.rotation.w *= scale; tr.rotation.x *= scale; tr.rotation.y *= scale; tr.rotation.z *= scale  # noqa: E702
        np.testing.assert_allclose(C.transform_to_matrix(tr), T, atol=1e-12)
    tr = C.matrix_to_transform(np.eye(4))
    tr.rotation.w, tr.rotation.x = 1e200, 1e200   # 90 degrees about x, not the identity
    np.testing.assert_allclose(C.transform_to_matrix(tr)[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    tr.rotation.w = float("inf")
    with pytest.raises(C.ConversionError, match="non-finite"):
        C.transform_to_matrix(tr)
    # translations beyond physical bounds
    for far in (1e300, -2e6):
        tr = C.matrix_to_transform(T)
        tr.translation.y = far
        with pytest.raises(C.ConversionError, match="beyond physical bounds"):
            C.transform_to_matrix(tr)
    p = C.matrix_to_pose(T)
    p.position.z = 1e300
    with pytest.raises(C.ConversionError, match="beyond physical bounds"):
        C.pose_to_matrix(p)


def test_camera_info_beyond_physical_bounds():
    for i, v in ((0, 1e300), (4, 2e6), (2, -5e6)):
        msg = C.make_camera_info(K, 80, 60)
        k = list(msg.k)
        k[i] = v
        msg.k = k
        with pytest.raises(C.ConversionError, match="beyond physical bounds"):
            C.camera_info_to_K(msg)
    msg = C.make_camera_info(K * [[1e3], [1e3], [1]], 80, 60)   # a long lens: accepted
    assert C.camera_info_to_K(msg)[0][0, 0] == pytest.approx(1e5)


def test_pointcloud_organised_with_colour_and_confidence():
    h, w = 6, 8
    depth = RNG.uniform(0.5, 4.0, (h, w)).astype(np.float32)
    depth[2, 3] = np.nan
    rgb = RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)
    conf = RNG.random((h, w)).astype(np.float32)
    msg = C.depth_to_pointcloud2(depth, K, C.make_header(7, "cam"), rgb=rgb, confidence=conf)
    assert (msg.height, msg.width, msg.point_step, msg.is_dense) == (h, w, 20, False)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "confidence"]
    arr = C.pointcloud2_to_array(msg)
    pts = backproject(depth, K)
    for i, n in enumerate("xyz"):
        np.testing.assert_array_equal(arr[n], pts[..., i])
    assert np.isnan(arr["x"][2, 3])
    np.testing.assert_array_equal(C.unpack_rgb(arr["rgb"]), rgb)
    np.testing.assert_array_equal(arr["confidence"], conf)
    # a pixel's point lies on its ray: u = fx x / z + cx
    np.testing.assert_allclose(K[0, 0] * arr["x"][4, 5] / arr["z"][4, 5] + K[0, 2], 5, atol=1e-4)


def test_pointcloud_dense_stride_max_range():
    depth = np.full((8, 10), 2.0, np.float32)
    depth[:, :5] = 9.0
    depth[0, 6] = np.nan
    msg = C.depth_to_pointcloud2(depth, K, dense=True, max_range=5.0)
    arr = C.pointcloud2_to_array(msg)
    assert msg.height == 1 and msg.is_dense and msg.width == 8 * 5 - 1
    assert np.all(np.isfinite(arr["z"])) and np.all(arr["z"] == 2.0)
    s = C.depth_to_pointcloud2(depth, K, stride=2)
    a2 = C.pointcloud2_to_array(s)
    assert (s.height, s.width) == (4, 5)
    # stride keeps the ray of the kept pixels: pixel (row 2, col 4) of the full image
    full = backproject(depth, K)
    np.testing.assert_allclose([a2["x"][1, 2], a2["y"][1, 2], a2["z"][1, 2]], full[2, 4], rtol=1e-6)


def test_stamp_conversions():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789):
        assert C.stamp_to_ns(C.ns_to_stamp(ns)) == ns
