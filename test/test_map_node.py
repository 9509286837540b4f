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


def final_map(maps, node, quiet=1.0, timeout=20.0):
    """The map published after the last fusion, called once ``/diagnostics`` reported every depth map fused.

    map_node publishes only when the map changed, within one publish period (0.25 s in these tests) after
    the change, so the final map is the last one received once the topic stayed quiet for ``quiet`` s
    (counted from this call too: the final map may have arrived before the diagnostics did)."""
    t0, t_end = time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < t_end and node.alive():
        if maps and time.monotonic() - max(maps[-1][0], t0) > quiet:
            return maps[-1][1]
        time.sleep(0.05)
    raise AssertionError(f"no map published ({len(maps)} received)\n{node.output()}")


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
            msg = final_map(maps, node)
            pts, rgb = cloud_points(msg)
            assert msg.header.frame_id == "odom"
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


def low_confidence_estimate(DepthEstimate, C, f, recommended=0.5):
    """A DepthEstimate whose right half has confidence 0.2 and wrong depth (a ghost surface 40 % too near),
    the left half confidence 0.9 and exact depth; the estimator recommends ``recommended``."""
    est = make_estimate(DepthEstimate, C, f)
    w = f.depth_gt.shape[1]
    depth = f.depth_gt.astype(np.float32).copy()
    depth[:, w // 2:] *= 0.6
    conf = np.full(depth.shape, 0.9, np.float32)
    conf[:, w // 2:] = 0.2
    est.depth = C.depth_to_image(depth, est.header)
    est.confidence = C.array_to_image(conf, "32FC1", est.header)
    est.confidence_threshold = recommended
    return est


def ghost_points(frames):
    """World points of the ghost half of :func:`low_confidence_estimate`'s depth."""
    out = []
    for f in frames:
        d = f.depth_gt.astype(np.float32) * np.float32(0.6)
        d[:, : d.shape[1] // 2] = np.nan
        out.append(transform_points(f.T_world_cam, backproject(d, f.K)).reshape(-1, 3))
    pts = np.concatenate(out)
    return pts[np.all(np.isfinite(pts), axis=1)]


@pytest.mark.parametrize("override", [None, 0.0], ids=["default_from_message", "override_0"])
def test_confidence_threshold_follows_depth_estimate_unless_overridden(frames, override):
    """Default (-1): the estimator's recommendation carried by each DepthEstimate (0.5 here) drops the
    low-confidence ghost half; confidence_threshold:=0 fuses it."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros.interfaces import depth_estimate_type
    DepthEstimate = depth_estimate_type()
    if DepthEstimate is None or not hasattr(DepthEstimate(), "confidence_threshold"):
        pytest.skip("mvs_depth_ros/msg/DepthEstimate (with confidence_threshold) is not built")
    params = {"voxel_size": VOXEL, "max_depth": 6.0, "publish_rate": 4.0, "use_color": False,
              "diagnostics_period": 0.3}
    if override is not None:
        params["confidence_threshold"] = override
    probe = Probe("map_probe_conf")
    try:
        maps = probe.subscribe(PointCloud2, "map", map_qos())
        probe.subscribe(DiagnosticArray, "/diagnostics")
        pub = probe.publisher(DepthEstimate, "depth_estimate")
        with NodeProcess("mvs_depth_ros.ros.map_node", params) as node:
            assert probe.wait_matched(pub, timeout=30), node.output()
            for f in frames:
                pub.publish(low_confidence_estimate(DepthEstimate, C, f))
                time.sleep(0.1)
            ok = probe.wait_for(lambda: diag_values(probe).get("integrated") == str(len(frames)), 60, node)
            assert ok, (diag_values(probe), node.output())
            pts, _ = cloud_points(final_map(maps, node))
            v = diag_values(probe)
        # map points on a ghost surface and off the true ones
        on_ghost = np.mean((nearest_distances(pts, gt_points(frames)) > 3 * VOXEL)
                           & (nearest_distances(pts, ghost_points(frames)) < VOXEL))
        ghost_px = sum(int(np.isfinite(f.depth_gt[:, f.width // 2:]).sum()) for f in frames)
        print(f"confidence_threshold={override}: {len(pts)} map points, {100 * on_ghost:.2f} % on the ghost surfaces; "
              f"to GT median {np.median(nearest_distances(pts, gt_points(frames))):.4f} "
              f"p90 {np.percentile(nearest_distances(pts, gt_points(frames)), 90):.4f}")
        if override is None:
            assert v["confidence_threshold_used"] == "0.500", v
            assert int(v["low_confidence_px"]) == ghost_px, (v, ghost_px)     # every ghost pixel, nothing else
            assert on_ghost < 0.002, on_ghost
            d = nearest_distances(pts, gt_points(frames))    # the half-frame edges leave a few more stray voxels
            assert len(pts) > 1000 and np.median(d) < VOXEL / 2 and np.percentile(d, 90) < VOXEL, \
                (len(pts), np.median(d), np.percentile(d, 90))
        else:
            assert v["confidence_threshold_used"] == "0.000", v
            assert v["low_confidence_px"] == "0", v
            assert on_ghost > 0.1, on_ghost                                    # the ghost surfaces are in the map
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
    from mvs_depth_ros.ros import runner
    from mvs_depth_ros.ros.map_node import MAP_SPECS, MapConfig
    from mvs_depth_ros.ros.params import ParameterError
    from ros_helpers import REPO_ROOT
    y = runner.yaml_parameters(REPO_ROOT / "config" / "map.yaml", "map_node", "mvs")  # as launched
    assert set(y) == set(MAP_SPECS) - {"command"}
    for k, v in y.items():
        assert v == MAP_SPECS[k].default, (k, v)
    values = {k: s.default for k, s in MAP_SPECS.items()}
    cfg = MapConfig.from_values(values)
    assert cfg.tsdf().trunc == pytest.approx(4 * cfg.voxel_size)
    for bad in ({"min_depth": 6.0}, {"trunc": 0.001}, {"command": "explode"}, {"world_frame": ""}):
        with pytest.raises(ParameterError):
            MapConfig.from_values(dict(values, **bad))
    # confidence_threshold: -1 (the default) = from each DepthEstimate, [0, 1] explicit, nothing else
    spec = MAP_SPECS["confidence_threshold"]
    assert spec.default == -1.0 and not spec.read_only and "DepthEstimate" in spec.description
    rng = spec.descriptor("confidence_threshold").floating_point_range[0]
    assert (rng.from_value, rng.to_value) == (-1.0, 1.0)
    for ok in (-1.0, 0.0, 0.7, 1.0):
        assert spec.check("confidence_threshold", ok) == ok
    for bad in (-1.5, 1.01):
        with pytest.raises(ParameterError):
            spec.check("confidence_threshold", bad)


def test_map_from_played_synthetic_bag(tmp_path):
    """Three processes: player_node plays a synthetic bag written by `mvs-depth bag convert --synthetic`
    (/clock, /tf world -> camera_link, transient-local /tf_static camera_link -> optical, camera_info,
    image_raw, depth_gt); map_node (use_sim_time, input=depth remapped to the bag's ground-truth depth)
    fuses it; this process joins late and gets the transient-local map, which must lie on the rendered
    scene's surfaces within the voxel size and cover them, in the bag's world frame, stamped in bag time."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2
    from mvs_depth_ros.data import bags
    from mvs_depth_ros.ros.interfaces import tf_message_type
    if tf_message_type() is None:
        pytest.skip("tf2_msgs/TFMessage is not available: the bag's /tf cannot be played")
    n, w, h = 16, 128, 96
    bag = tmp_path / "synthetic_bag"
    assert bags.cli_main(["convert", "--synthetic", "--frames", str(n), "--width", str(w), "--height", str(h),
                          "--world-frame", "world", "--rate", "10", "--out", str(bag)]) == 0
    info = bags.bag_info(bag)
    assert info["topics"]["/camera/depth_gt"]["count"] == n
    frames = render_sequence(n_frames=n, width=w, height=h, seed=0).frames   # the scene the converter rendered
    map_params = {"input": "depth", "use_sim_time": True, "world_frame": "world", "voxel_size": VOXEL,
                  "max_depth": 6.0, "publish_rate": 4.0, "tf_timeout": 1.0, "diagnostics_period": 0.3}
    remaps = {"depth": "/camera/depth_gt", "depth/camera_info": "/camera/camera_info", "image": "/camera/image_raw"}
    player_params = {"bag": str(bag), "rate": 1.0, "delay": 1.0, "wait_timeout": 30.0,
                     "wait_for_topics": "['/camera/depth_gt', '/camera/camera_info', '/tf']"}
    probe = Probe("map_probe_bag")
    try:
        probe.subscribe(DiagnosticArray, "/diagnostics")
        with NodeProcess("mvs_depth_ros.ros.map_node", map_params, remaps=remaps) as node:
            assert probe.wait_for(lambda: "TSDF map in 'world'" in node.output(), 30, node), node.output()
            with NodeProcess("mvs_depth_ros.ros.player_node", player_params) as player:
                assert probe.wait_for(lambda: not player.alive(), 40), player.output()
                assert player.proc.returncode == 0 and "playback finished" in player.output(), player.output()

            def settled():
                v = diag_values(probe)
                done = int(v.get("integrated", 0)) + int(v.get("no_camera_info", 0)) + int(v.get("tf_failures", 0))
                return done == n and v.get("queue") == "0"
            assert probe.wait_for(settled, 30, node), (diag_values(probe), node.output())
            v = diag_values(probe)
            # the first depth map may beat the first camera_info across topics; every other one is fused
            assert int(v["integrated"]) >= n - 1 and v["errors"] == "0" and v["rejected"] == "0", v
            assert int(v["color_matched"]) >= n - 2, v                    # image_raw matched by stamp
            time.sleep(1.0)                                            # > 2 publish periods: the final map is out
            maps = probe.subscribe(PointCloud2, "map", map_qos())      # a late joiner: transient local
            assert probe.wait_for(lambda: maps, 20, node), node.output()
            msg = maps[-1][1]
            assert int(diag_values(probe)["integrated"]) == int(v["integrated"])
        assert msg.header.frame_id == "world"
        stamp = bags.stamp_to_ns(msg.header.stamp)
        assert info["start_ns"] <= stamp <= info["end_ns"] + 10**9, (stamp, info["start_ns"], info["end_ns"])
        pts, rgb = cloud_points(msg)
        gt = gt_points(frames)
        acc = nearest_distances(pts, gt)           # map -> scene surfaces
        comp = nearest_distances(gt, pts)          # scene surfaces -> map
        print(f"bag map: {len(pts)} points, {v['integrated']}/{n} depth maps fused ({v['color_matched']} coloured); "
              f"map->scene median {np.median(acc):.4f} p90 {np.percentile(acc, 90):.4f} m; scene->map p90 "
              f"{np.percentile(comp, 90):.4f} m, {100 * np.mean(comp <= VOXEL):.1f} % within a voxel")
        assert len(pts) > 2000
        assert np.median(acc) <= VOXEL / 2 and np.percentile(acc, 90) <= VOXEL, (np.median(acc), np.percentile(acc, 90))
        assert np.percentile(comp, 90) <= VOXEL and np.mean(comp <= VOXEL) > 0.9, np.percentile(comp, 90)
        assert rgb is not None and (rgb.astype(int).std(0) > 10).all()
    finally:
        probe.close()
