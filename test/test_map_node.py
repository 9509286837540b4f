"""map_node across processes: synthetic depth in (DepthEstimate, or depth + camera_info + /tf), the published
map matches the synthetic scene within a voxel; save / reset services; bad input is counted, not fatal."""
import time

import numpy as np
import pytest

from ros_helpers import NodeProcess, Probe, require_rclpy

pytest.importorskip("open3d", reason="open3d is needed for the map")
require_rclpy()

from mvs_depth_ros.core.geometry import backproject, transform_points  # noqa: E402
from mvs_depth_ros.data.synthetic import render_sequence  # noqa: E402
from mvs_depth_ros.recon.metrics import nearest_distances  # noqa: E402

VOXEL = 0.04


@pytest.fixture(scope="module")
def frames():
    return render_sequence(n_frames=12, width=128, height=96, seed=5).frames[::2]


def gt_points(frames):
    pts = np.concatenate([transform_points(f.T_world_cam, backproject(f.depth_gt, f.K)).reshape(-1, 3) for f in frames])
    return pts[np.all(np.isfinite(pts), axis=1)]


def map_qos():
    from mvs_depth_ros.ros.qos import make_qos
    return make_qos("reliable", 1, "transient_local")


def cloud_points(msg):
    from mvs_depth_ros.ros import conversions as C
    a = C.pointcloud2_to_array(msg).reshape(-1)
    rgb = C.unpack_rgb(a["rgb"]) if "rgb" in a.dtype.names else None
    return np.stack([a["x"], a["y"], a["z"]], 1).astype(np.float64), rgb


def diag_values(probe, name="map_node"):
    from mvs_depth_ros.ros.diagnostics import status_values
    for _, arr in reversed(probe.received.get("/diagnostics", [])):
        for st in arr.status:
            if name in st.name:
                return status_values(st)
    return {}


def check_map(points, frames):
    assert len(points) > 1000
    d = nearest_distances(points, gt_points(frames))
    assert np.median(d) < VOXEL / 2 and np.percentile(d, 95) < VOXEL, (np.median(d), np.percentile(d, 95))


def test_map_from_depth_estimates(frames, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, PointCloud2
    from std_srvs.srv import Trigger
    from visualization_msgs.msg import Marker
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros.interfaces import depth_estimate_type
    DepthEstimate = depth_estimate_type()
    if DepthEstimate is None:
        pytest.skip("mvs_depth_ros/msg/DepthEstimate is not built (tools/install_ros.sh)")
    save = tmp_path / "saved.ply"
    params = {"voxel_size": VOXEL, "max_depth": 6.0, "publish_rate": 4.0, "world_frame": "odom",
              "save_path": str(save), "diagnostics_period": 0.3, "publish_mesh": True, "mesh_rate": 2.0,
              "mesh_max_triangles": 3000}
    probe = Probe("map_probe")
    try:
        maps = probe.subscribe(PointCloud2, "map", map_qos())
        meshes = probe.subscribe(Marker, "map_mesh", map_qos())
        probe.subscribe(DiagnosticArray, "/diagnostics")
        pub = probe.publisher(DepthEstimate, "depth_estimate")
        pub_img = probe.publisher(Image, "image")
        with NodeProcess("mvs_depth_ros.ros.map_node", params) as node:
            assert probe.wait_matched(pub, timeout=30), node.output()
            probe.wait_for(lambda: pub_img.get_subscription_count() >= 1, 10)
            # bad input first: a NaN pose, and camera_info that does not match the depth size
            for bad in ("pose", "info"):
                f = frames[0]
                est = make_estimate(DepthEstimate, C, f)
                if bad == "pose":
                    est.pose.pose.orientation.w = float("nan")
                else:
                    est.camera_info.width = 17
                pub.publish(est)
            for f in frames:
                hdr = C.make_header(f.stamp, "camera")
                pub_img.publish(C.array_to_image(f.image, "rgb8", hdr))
                time.sleep(0.05)
                pub.publish(make_estimate(DepthEstimate, C, f))
                time.sleep(0.1)
            ok = probe.wait_for(lambda: diag_values(probe).get("integrated") == str(len(frames)), 60, node)
            assert ok, (diag_values(probe), node.output())
            n_before = len(maps)
            assert probe.wait_for(lambda: len(maps) > n_before, 20, node), node.output()
            pts, rgb = cloud_points(maps[-1][1])
            assert maps[-1][1].header.frame_id == "odom"
            check_map(pts, frames)
            assert (rgb.astype(int).std(0) > 10).all()            # coloured from the images, not grey
            v = diag_values(probe)
            assert int(v["rejected"]) == 2 and int(v["color_matched"]) >= len(frames) // 2 and node.alive(), v
            assert v["errors"] == "0", v
            # the mesh marker: a decimated triangle list on the same surfaces
            assert probe.wait_for(lambda: meshes and len(meshes[-1][1].points) > 300, 20, node), node.output()
            mk = meshes[-1][1]
            assert mk.type == Marker.TRIANGLE_LIST and len(mk.points) % 3 == 0 and len(mk.points) <= 3 * 3000
            assert len(mk.colors) == len(mk.points)
            mp = np.array([[p.x, p.y, p.z] for p in mk.points])
            assert np.median(nearest_distances(mp, gt_points(frames))) < VOXEL

            client = probe.node.create_client(Trigger, "map_node/save_map")
            assert client.wait_for_service(timeout_sec=20)
            res = wait_future(client.call_async(Trigger.Request()))
            assert res.success and save.stat().st_size > 0, res.message
            assert (tmp_path / "saved_mesh.ply").stat().st_size > 0
            reset = probe.node.create_client(Trigger, "map_node/reset_map")
            assert reset.wait_for_service(timeout_sec=20)
            assert wait_future(reset.call_async(Trigger.Request())).success
            assert probe.wait_for(lambda: diag_values(probe).get("blocks") == "0", 20, node), diag_values(probe)
            assert probe.wait_for(lambda: maps[-1][1].width == 0, 20, node)   # the empty map is published
        # a late subscriber gets the latched (transient-local) map: checked implicitly by 'maps' above
    finally:
        probe.close()


def test_map_from_depth_camera_info_and_tf(frames):
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros.interfaces import tf_message_type
    from mvs_depth_ros.ros.qos import tf_qos
    TFMessage = tf_message_type()
    if TFMessage is None:
        pytest.skip("tf2_msgs/TFMessage is not available")
    params = {"input": "depth", "voxel_size": VOXEL, "max_depth": 6.0, "publish_rate": 4.0,
              "use_color": False, "world_frame": "odom", "tf_backend": "builtin", "tf_timeout": 1.0}
    probe = Probe("map_probe_tf")
    try:
        maps = probe.subscribe(PointCloud2, "map", map_qos())
        pub_d = probe.publisher(Image, "depth")
        pub_i = probe.publisher(CameraInfo, "depth/camera_info")
        pub_tf = probe.publisher(TFMessage, "/tf", tf_qos())
        with NodeProcess("mvs_depth_ros.ros.map_node", params) as node:
            assert probe.wait_matched(pub_d, timeout=30), node.output()
            probe.wait_for(lambda: pub_tf.get_subscription_count() >= 1, 10)
            f0 = frames[0]
            pub_i.publish(C.make_camera_info(f0.K, f0.width, f0.height, C.make_header(f0.stamp, "camera")))
            time.sleep(0.3)
            for f in frames:
                pub_tf.publish(TFMessage(transforms=[C.make_transform_stamped(f.T_world_cam, "odom", "camera", f.stamp)]))
                time.sleep(0.05)
                pub_d.publish(C.depth_to_image(f.depth_gt, C.make_header(f.stamp, "camera")))
                time.sleep(0.1)
            # a depth whose stamp has no transform: counted, not fused
            pub_d.publish(C.depth_to_image(f0.depth_gt, C.make_header(frames[-1].stamp + 10**10, "camera")))

            def full():
                if not maps:
                    return False
                pts, _ = cloud_points(maps[-1][1])
                return len(pts) > 1000 and np.percentile(nearest_distances(gt_points(frames), pts), 90) < VOXEL
            assert probe.wait_for(full, 60, node), node.output()
            pts, rgb = cloud_points(maps[-1][1])
            assert rgb is None                                      # use_color false: x y z only
            check_map(pts, frames)
            assert probe.wait_for(lambda: "depth not fused" in node.output(), 20, node), node.output()
            assert node.alive()
    finally:
        probe.close()


def make_estimate(DepthEstimate, C, f):
    hdr = C.make_header(f.stamp, "camera")
    est = DepthEstimate()
    est.header = hdr
    est.depth = C.depth_to_image(f.depth_gt, hdr)
    est.confidence = C.array_to_image(np.ones_like(f.depth_gt, dtype=np.float32), "32FC1", hdr)
    est.camera_info = C.make_camera_info(f.K, f.width, f.height, hdr)
    est.pose = C.make_pose_stamped(f.T_world_cam, "odom", f.stamp)
    est.model = "exact"
    return est


def wait_future(fut, timeout=20.0):
    t_end = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < t_end:
        time.sleep(0.02)
    assert fut.done(), "service call timed out"
    return fut.result()


def test_map_yaml_matches_declared_parameters_and_validation():
    import yaml
    from mvs_depth_ros.ros.map_node import MAP_SPECS, MapConfig
    from mvs_depth_ros.ros.params import ParameterError
    from ros_helpers import REPO_ROOT
    y = yaml.safe_load((REPO_ROOT / "config" / "map.yaml").read_text())["map_node"]["ros__parameters"]
    assert set(y) == set(MAP_SPECS) - {"command"}
    for k, v in y.items():
        assert v == MAP_SPECS[k].default, (k, v)
    values = {k: s.default for k, s in MAP_SPECS.items()}
    cfg = MapConfig.from_values(values)
    assert cfg.tsdf().trunc == pytest.approx(4 * cfg.voxel_size)
    for bad in ({"min_depth": 6.0}, {"trunc": 0.001}, {"command": "explode"}, {"world_frame": ""}):
        with pytest.raises(ParameterError):
            MapConfig.from_values(dict(values, **bad))
