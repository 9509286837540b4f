"""Launch files, parameter YAML, the one-process runner, and the Fast DDS profile.

The launch files are loaded and introspected with the real ``launch`` library when it is importable
(a ROS 2 distribution); the PyPI wheels have none, so those tests skip saying so. Everything the runner
does is tested without it: the arguments it reads from the launch files, the YAML it applies, and a
runner process that turns real images into depth over DDS.
"""
import importlib.util
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from ros_helpers import DDS_PROFILE, REPO_ROOT, NodeProcess, Probe, require_rclpy

from mvs_depth_ros.ros import runner

LAUNCH = REPO_ROOT / "launch"


def _launch_available():
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
        return None
    except ImportError as exc:
        return f"`launch`/`launch_ros` not importable ({exc}): no ROS 2 distribution; the runner tests cover the graph"


@pytest.mark.parametrize("name", ["fusion.launch.py", "pair.launch.py", "stereo.launch.py", "eval_bag.launch.py"])
def test_launch_file_loads_and_declares_arguments(name, monkeypatch):
    why = _launch_available()
    if why:
        pytest.skip(why)
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    import ament_index_python.packages as aip
    monkeypatch.setattr(aip, "get_package_share_directory", lambda pkg: str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    declared = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) == set(mod.ARGUMENTS)


def test_runner_reads_the_launch_files_arguments():
    fusion = runner.launch_arguments(LAUNCH / "fusion.launch.py")
    for k in ("model", "checkpoint", "device", "image", "camera_info", "world_frame", "camera_frame",
              "use_sim_time", "map"):
        assert k in fusion, k
    assert fusion["map"][0] == "false" and fusion["world_frame"][0] == "odom"
    assert fusion["model"][0] == "dvmvs_fusionnet" and fusion["checkpoint"][0] == ""
    pair = runner.profile_arguments("pair", REPO_ROOT)
    assert set(fusion) == set(pair) and pair["model"][0] == "dvmvs_pairnet"
    stereo = runner.launch_arguments(LAUNCH / "stereo.launch.py")
    assert {"left_image", "right_image", "left_info", "right_info", "bag"} <= set(stereo)
    ev = runner.launch_arguments(LAUNCH / "eval_bag.launch.py")
    assert "bag" in ev and ev["bag"][0] is None and ev["dataset"][0]
    assert {"image", "camera_info", "gt_depth", "camera_frame", "gt_stamp_tolerance", "tf_wait"} <= set(ev)


def test_mvs_yaml_matches_the_declared_parameters():
    from mvs_depth_ros.ros.params import MVS_SPECS, MvsConfig
    values = runner.yaml_parameters(REPO_ROOT / "config" / "mvs.yaml", "mvs_node", "mvs")  # as launched
    assert set(values) == set(MVS_SPECS), "config/mvs.yaml and the node's parameters must list the same names"
    for k, v in values.items():
        spec = MVS_SPECS[k]
        assert type(v) is type(spec.default) or isinstance(spec.default, float) and isinstance(v, int), k
        spec.check(k, v)
        assert v == spec.default, f"{k}: YAML {v!r} != node default {spec.default!r} (keep them equal)"
    MvsConfig.from_values(values)


def test_yaml_sections_and_cli_parsing(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        /**:
          ros__parameters: {use_sim_time: true, width: 100}
        /**/mvs_node:
          ros__parameters: {width: 200, nested: {a: 1}}
        /mvs/mvs_node:
          ros__parameters: {height: 64}
        mvs_node:
          ros__parameters: {width: 7}
        /*/mvs_*:
          ros__parameters: {min_depth: 0.5}
        /other/**:
          ros__parameters: {width: 5}
    """))
    # rcl's rules: a bare `mvs_node` is /mvs_node (not /mvs/mvs_node); * one token, ** any; file order
    p = runner.yaml_parameters(f, "mvs_node", "mvs")
    assert p == {"use_sim_time": True, "width": 200, "nested.a": 1, "height": 64, "min_depth": 0.5}
    assert runner.yaml_parameters(f, "mvs_node")["width"] == 7
    assert runner.yaml_parameters(f, "mvs_node", "other/deep")["width"] == 5
    args, node_params, opts = runner.parse_cli(["image:=/cam/image", "--device", "cpu", "mvs_node.width:=160",
                                                "mvs_node.min_depth:=0.5", "--duration=3", "camera_frame:="])
    assert args == {"image": "/cam/image", "device": "cpu", "camera_frame": ""}
    assert node_params == {"mvs_node": {"width": 160, "min_depth": 0.5}} and opts == {"duration": "3"}
    with pytest.raises(runner.LaunchError, match="unexpected argument"):
        runner.parse_cli(["image"])


def test_plan_applies_yaml_then_arguments(tmp_path):
    specs = runner.plan("fusion", {"image": "/cam/image", "device": "cpu", "use_sim_time": "true"},
                        {"mvs_node": {"width": 160}})
    assert [s.name for s in specs] == ["mvs_node"]
    s = specs[0]
    params = s.parameters()
    assert params["device"] == "cpu" and params["width"] == 160 and params["use_sim_time"] is True
    assert params["height"] == 256  # from config/mvs.yaml
    assert ("image", "/cam/image") in s.remaps and s.namespace == "mvs"
    with_map = runner.plan("fusion", {"map": "true", "world_frame": "map", "image": "/cam/image"})
    assert [x.name for x in with_map] == ["mvs_node", "map_node"]
    if (REPO_ROOT / "config" / "map.yaml").is_file():
        mp = with_map[1].parameters()
        assert mp["world_frame"] == "map" and "voxel_size" in mp and ("image", "/cam/image") in with_map[1].remaps
    with pytest.raises(runner.LaunchError, match="unknown argument"):
        runner.plan("fusion", {"imgae": "x"})
    with pytest.raises(runner.LaunchError, match="no node named"):
        runner.plan("fusion", {}, {"nobody": {"x": 1}})
    with pytest.raises(runner.LaunchError, match="bag:=PATH"):
        runner.plan("eval-bag", {})
    custom = tmp_path / "mine.yaml"
    custom.write_text("/**/mvs_node:\n  ros__parameters: {width: 96, height: 80}\n")
    p = runner.plan("fusion", {"params_file": str(custom)})[0].parameters()
    assert (p["width"], p["height"]) == (96, 80)


def test_cli_errors_are_clear(capsys):
    assert runner.cli_main(["nope"]) == 2
    assert "unknown profile" in capsys.readouterr().err
    assert runner.cli_main(["fusion", "--help"]) == 0
    assert "world_frame:=odom" in capsys.readouterr().out


def test_dds_profile_is_valid_fast_dds_xml():
    root = ET.parse(DDS_PROFILE).getroot()
    ns = {"d": "http://www.eprosima.com"}
    seg = root.find(".//d:transport_descriptor[d:type='SHM']/d:segment_size", ns)
    assert seg is not None and int(seg.text) >= 8 * 1024 * 1024, "SHM segment must hold several 1 MB images"
    part = root.find(".//d:participant[@is_default_profile='true']", ns)
    assert part is not None and part.find(".//d:useBuiltinTransports", ns).text == "false"


_PUBLISHER = textwrap.dedent("""
    import sys, time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from mvs_depth_ros.ros import conversions as C
    rclpy.init()
    n = rclpy.create_node("big_image_pub")
    pub = n.create_publisher(Image, "big_image", qos_profile_sensor_data)
    t_end = time.monotonic() + 30
    while pub.get_subscription_count() < 1 and time.monotonic() < t_end:
        time.sleep(0.05)
    time.sleep(0.5)
    for i in range(20):
        img = np.full((480, 640, 3), i, np.uint8)
        img[::7, ::5, 1] = 255 - i
        pub.publish(C.array_to_image(img, "rgb8", C.make_header(i + 1, "cam")))
        time.sleep(0.05)
    time.sleep(1.0)
    n.destroy_node(); rclpy.shutdown()
""")


def test_dds_profile_delivers_large_best_effort_images_across_processes(tmp_path):
    """640x480 rgb8 (~0.9 MB) best effort from another process: with the profile nearly all arrive intact."""
    require_rclpy()
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from mvs_depth_ros.ros import conversions as C
    script = tmp_path / "pub.py"
    script.write_text(_PUBLISHER)
    probe = Probe("big_image_sub")
    try:
        box = probe.subscribe(Image, "big_image", qos_profile_sensor_data)
        proc = NodeProcess.__new__(NodeProcess)
        NodeProcess.__init__(proc, "x")
        proc.cmd = [sys.executable, str(script)]
        with proc:
            probe.wait_for(lambda: not proc.alive(), 60)
            out = proc.output()
        assert proc.proc.returncode == 0, out[-2000:]
        got = [m for _, m in box]
        assert len(got) >= 18, f"only {len(got)}/20 large best-effort images arrived\n{out[-2000:]}"
        for m in got:
            i = C.stamp_to_ns(m.header.stamp) - 1
            a = C.image_to_array(m)
            assert a.shape == (480, 640, 3) and a[0, 1, 0] == i and a[0, 0, 1] == 255 - i
    finally:
        probe.close()


def test_runner_process_turns_images_into_depth():
    """`mvs-depth launch fusion` with remapped topics, namespace and YAML params, fed over DDS."""
    require_rclpy()
    from mvs_depth_ros.ros import conversions as C
    from mvs_depth_ros.ros import interfaces
    from sensor_msgs.msg import CameraInfo, Image
    if not interfaces.tf_message_available():
        pytest.skip("tf2_msgs/TFMessage not available (tools/install_ros.sh generates it)")
    from mvs_depth_ros.data.synthetic import render_sequence
    seq = render_sequence(n_frames=8, width=160, height=128, supersample=1, step=0.05)
    args = ["launch", "fusion", "image:=/cam/image_raw", "camera_info:=/cam/camera_info", "device:=cpu",
            "mvs_node.width:=160", "mvs_node.height:=128", "mvs_node.n_planes:=16", "mvs_node.tf_timeout:=0.3",
            "--duration", "90"]
    proc = NodeProcess("mvs_depth_ros.cli", args=args)
    probe = Probe("runner_test")
    try:
        depth = probe.subscribe(Image, "/mvs/depth")
        TFMessage = interfaces.tf_message_type()
        pub_img = probe.publisher(Image, "/cam/image_raw")
        pub_info = probe.publisher(CameraInfo, "/cam/camera_info")
        pub_tf = probe.publisher(TFMessage, "/tf")
        with proc:
            assert probe.wait_matched(pub_img, timeout=60), proc.output()[-3000:]
            assert probe.wait_matched(pub_tf, timeout=30), proc.output()[-3000:]
            assert probe.wait_matched(pub_info, timeout=30), proc.output()[-3000:]
            for f in seq.frames:  # camera_info with every image, as camera drivers do
                pub_info.publish(C.make_camera_info(seq.K, 160, 128, C.make_header(f.stamp, "camera")))
                pub_tf.publish(TFMessage(transforms=[C.make_transform_stamped(f.T_world_cam, "odom", "camera", f.stamp),
                                                     C.make_transform_stamped(f.T_world_cam, "odom", "camera",
                                                                              f.stamp + 1_000_000)]))
                time.sleep(0.01)
                pub_img.publish(C.array_to_image(f.image, "rgb8", C.make_header(f.stamp, "camera")))
                time.sleep(0.3)
            ok = probe.wait_for(lambda: len(depth) >= 2, 30, proc)
            out = proc.output()
            assert ok, f"no depth on /mvs/depth from the runner\n{out[-4000:]}"
            assert proc.stop() in (0, -2), out[-2000:]
        stamps = {f.stamp for f in seq.frames}
        for _, m in depth:
            assert C.stamp_to_ns(m.header.stamp) in stamps and (m.width, m.height) == (160, 128)
            assert np.isfinite(C.image_to_depth(m)).mean() > 0.5
    finally:
        probe.close()


def test_rviz_config_shows_the_fusion_outputs():
    cfg = yaml.safe_load((REPO_ROOT / "rviz" / "mvs_depth.rviz").read_text())
    displays = {d["Name"]: d for d in cfg["Visualization Manager"]["Displays"]}
    ns = runner.launch_arguments(LAUNCH / "fusion.launch.py")["namespace"][0]
    topics = {d["Topic"]["Value"] for d in displays.values() if "Topic" in d}
    assert {f"/{ns}/depth", f"/{ns}/confidence", f"/{ns}/points"} <= topics
    assert displays["Points"]["Color Transformer"] == "RGB8"
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "odom"


def test_runner_eval_bag_end_to_end(tmp_path):
    """`mvs-depth launch eval-bag`: player (/clock, transient-local /tf_static) -> mvs_node with use_sim_time
    -> evaluator, in one process; stops by itself after the bag and writes metrics.json."""
    require_rclpy()
    import json
    from mvs_depth_ros.ros import interfaces
    if not (interfaces.tf_message_available() and interfaces.depth_estimate_available()):
        pytest.skip("eval-bag needs tf2_msgs and mvs_depth_ros/msg (tools/install_ros.sh builds them)")
    from mvs_depth_ros.cli import main as cli_main
    from mvs_depth_ros.data.bags import write_bag
    from mvs_depth_ros.data.synthetic import render_sequence
    seq = render_sequence(n_frames=16, width=160, height=128, supersample=1)
    bag = tmp_path / "bag"
    write_bag(seq.frames, bag)
    out = tmp_path / "eval"
    args = ["launch", "eval-bag", f"bag:={bag}", "dataset:=synthetic", f"output_dir:={out}", "mvs_node.device:=cpu",
            "mvs_node.width:=160", "mvs_node.height:=128", "mvs_node.n_planes:=16", "--duration", "150"]
    with NodeProcess("mvs_depth_ros.cli", args=args) as proc:
        rc = proc.proc.wait(170)
        log = proc.output()
    assert rc == 0, log[-3000:]
    assert "end of stream: all 16 frames processed" in log and "evaluation complete" in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    ev = metrics["summary"]["evaluator"]
    assert ev["evaluated"] >= 2 and ev["ground_truth"] >= 12, ev
    assert metrics["summary"]["dense"]["abs_rel"] < 0.3, metrics["summary"]["dense"]
    # offline from the same bag, with its own online keyframe selection: eval-bag processes every frame in
    # order (frame_queue), so the ROS graph picks the same keyframes and its numbers are the offline numbers
    offline = tmp_path / "offline"
    # both sides fuse causally (the node's temporal_fusion and the CLI's default)
    assert cli_main(["run", "--bag", str(bag), "--width", "160", "--height", "128", "--device", "cpu",
                     "--model-option", "n_planes=16", "--pictures", "0", "--out", str(offline)]) == 0
    ref = json.loads((offline / "metrics.json").read_text())
    assert (out / "keyframes.txt").read_text() == (offline / "keyframes.txt").read_text()
    assert ref["summary"]["keyframes"] == metrics["summary"]["keyframes"] == ev["evaluated"]
    for kind in ("dense", "filtered"):
        for key, value in ref["summary"][kind].items():
            assert value == pytest.approx(metrics["summary"][kind][key], abs=1e-6), (kind, key)
