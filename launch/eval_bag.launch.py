"""Evaluate the depth node on a converted dataset bag over DDS.

    ros2 launch mvs_depth_ros eval_bag.launch.py bag:=bags/hololens-000 dataset:=hololens output_dir:=out/eval

Starts, all with ``use_sim_time`` (the bag's ``/clock``):

* the bag source: ``player_node`` (default; works without ``ros2 bag``), or ``ros2 bag play --clock``
  with ``use_player:=false``;
* ``mvs_node`` (the video MVS depth node), subscribed to the bag's camera topics;
* ``evaluator_node``, which pairs the node's depth with the bag's ``/camera/depth_gt`` and writes the
  ``mvs-depth run`` output contract (``metrics.json`` ...) to ``output_dir`` at shutdown.

Parameters come from ``config/player.yaml``, ``config/evaluator.yaml`` and then the dataset file
``config/datasets/<dataset>.yaml`` (later files win). Machines without ``ros2 launch`` run the same
graph in one process with ``mvs-depth launch eval-bag``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory("mvs_depth_ros")
    cfg = lambda *p: os.path.join(share, "config", *p)  # noqa: E731
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    dataset_file = cfg("datasets", f"{get('dataset')}.yaml")
    if not os.path.isfile(dataset_file):
        raise RuntimeError(f"unknown dataset {get('dataset')!r}: no {dataset_file}")
    bag = get("bag")
    sim = {"use_sim_time": True}
    return [
        Node(package="mvs_depth_ros", executable="player_node", name="player", output="screen",
             condition=IfCondition(LaunchConfiguration("use_player")),
             parameters=[cfg("player.yaml"), dataset_file,
                         {"bag": bag, "rate": float(get("rate")), "wait_for_topics": ["/camera/image_raw"],
                          "wait_timeout": 60.0}]),
        ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", get("rate")], output="screen",
                       condition=UnlessCondition(LaunchConfiguration("use_player"))),
        # namespace "mvs": publishes /mvs/depth_estimate, /mvs/depth, ... (evaluator.yaml's prediction_topic)
        Node(package="mvs_depth_ros", executable="mvs_node", name="mvs_node", namespace="mvs", output="screen",
             remappings=[("image", "/camera/image_raw"), ("camera_info", "/camera/camera_info")],
             # every frame processed in order (frame_queue), so the evaluated keyframes are the offline run's
             parameters=[dataset_file, sim, {"model": get("model"), "qos_reliability": "reliable",
                                             "frame_queue": 1000}]),
        Node(package="mvs_depth_ros", executable="evaluator_node", name="evaluator", output="screen",
             parameters=[cfg("evaluator.yaml"), dataset_file, sim,
                         {"output_dir": get("output_dir"), "names_bag": bag}]),
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 written by `mvs-depth bag convert`"),
        DeclareLaunchArgument("dataset", default_value="hololens",
                              description="config/datasets/<dataset>.yaml: hololens, synthetic, tum"),
        DeclareLaunchArgument("output_dir", default_value="out/eval_bag", description="metrics.json etc."),
        DeclareLaunchArgument("model", default_value="planesweep", description="depth estimator (registry name)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("use_player", default_value="true",
                              description="true: player_node; false: ros2 bag play --clock"),
        OpaqueFunction(function=_nodes),
    ])
