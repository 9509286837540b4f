"""Cost of each ROS message conversion at 640x480 (median of N runs, milliseconds).

    .venv/bin/python benchmarks/bench_conversions.py [--width 640 --height 480 --repeat 30]

Includes the slow ways the conversions avoid (assigning bytes / a list to ``msg.data``), to show why
payloads go through ``array.array('B')``.
"""
import argparse
import array
import statistics
import time

import numpy as np


def bench(fn, repeat):
    fn()  # warm up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--no-tune", action="store_true", help="keep glibc's default mmap threshold (as a library user would)")
    a = ap.parse_args()
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image, PointCloud2

    from mvs_depth_ros.ros import conversions as C

    w, h, n = a.width, a.height, a.repeat
    tuned = False if a.no_tune else C.tune_allocator_for_large_messages()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 8, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = np.nan
    conf = rng.random((h, w)).astype(np.float32)
    K = np.array([[500.0, 0, w / 2], [0, 500.0, h / 2], [0, 0, 1]])
    hdr = C.make_header(123, "camera")
    m_rgb = C.array_to_image(rgb, "rgb8", hdr)
    m_bgr = C.array_to_image(rgb, "bgr8", hdr)
    m_mono = C.array_to_image(rgb[:, :, 0].copy(), "mono8", hdr)
    m_depth = C.depth_to_image(depth, hdr)
    m_mm = C.depth_to_image(depth, hdr, "16UC1")
    info = C.make_camera_info(K, w, h, hdr)
    T = np.eye(4)
    T[:3, 3] = (1, 2, 3)
    pc = C.depth_to_pointcloud2(depth, K, hdr, rgb=rgb, confidence=conf)
    rows = [
        ("Image rgb8 -> ndarray (zero copy)", lambda: C.image_to_rgb(m_rgb)),
        ("Image bgr8 -> RGB ndarray", lambda: C.image_to_rgb(m_bgr)),
        ("Image mono8 -> RGB ndarray", lambda: C.image_to_rgb(m_mono)),
        ("ndarray -> Image rgb8", lambda: C.array_to_image(rgb, "rgb8", hdr)),
        ("depth -> Image 32FC1", lambda: C.depth_to_image(depth, hdr)),
        ("depth -> Image 16UC1 (mm)", lambda: C.depth_to_image(depth, hdr, "16UC1")),
        ("Image 32FC1 -> depth", lambda: C.image_to_depth(m_depth)),
        ("Image 16UC1 -> depth", lambda: C.image_to_depth(m_mm)),
        ("CameraInfo -> K", lambda: C.camera_info_to_K(info)),
        ("K -> CameraInfo", lambda: C.make_camera_info(K, w, h, hdr)),
        ("4x4 -> Transform -> 4x4", lambda: C.transform_to_matrix(C.matrix_to_transform(T))),
        ("PointCloud2 organised xyz", lambda: C.depth_to_pointcloud2(depth, K, hdr)),
        ("PointCloud2 organised xyz+rgb+conf", lambda: C.depth_to_pointcloud2(depth, K, hdr, rgb=rgb, confidence=conf)),
        ("PointCloud2 dense xyz+rgb", lambda: C.depth_to_pointcloud2(depth, K, hdr, rgb=rgb, dense=True)),
        ("PointCloud2 stride 2 xyz+rgb", lambda: C.depth_to_pointcloud2(depth, K, hdr, rgb=rgb, stride=2)),
        ("PointCloud2 -> structured array", lambda: C.pointcloud2_to_array(pc)),
        ("serialize Image rgb8 (rclpy)", lambda: serialize_message(m_rgb)),
        ("deserialize Image rgb8 (rclpy)", lambda: deserialize_message(serialize_message(m_rgb), Image)),
        ("serialize PointCloud2 (rclpy)", lambda: serialize_message(pc)),
    ]
    print(f"conversions at {w}x{h}, median of {n} runs; allocator tuned for large messages: {tuned}")
    for name, fn in rows:
        print(f"  {name:<40s} {bench(fn, n):9.3f} ms")

    def slow_ndarray():
        m = Image()
        m.data = rgb.reshape(-1)  # converted element by element by the generated setter

    def slow_memoryview():
        m = Image()
        m.data = memoryview(rgb.reshape(-1))

    def plain_bytes():
        m = Image()
        m.data = rgb.tobytes()  # fine unless field checks are on (then checked element by element)
    def fast_array():
        m = Image()
        buf = array.array("B")
        buf.frombytes(rgb.reshape(-1))
        m.data = buf
    print("payload assignment (why conversions build an array.array):")
    print(f"  {'msg.data = ndarray':<40s} {bench(slow_ndarray, 3):9.3f} ms")
    print(f"  {'msg.data = memoryview(ndarray)':<40s} {bench(slow_memoryview, 3):9.3f} ms")
    print(f"  {'msg.data = arr.tobytes()':<40s} {bench(plain_bytes, n):9.3f} ms")
    print(f"  {'msg.data = array.array(B) from buffer':<40s} {bench(fast_array, n):9.3f} ms")
    _ = PointCloud2


if __name__ == "__main__":
    main()
