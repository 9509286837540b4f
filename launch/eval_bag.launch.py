"""Evaluate the depth node on a converted dataset bag over DDS; ends by itself when the bag is done.

    ros2 launch mvs_depth_ros eval_bag.launch.py bag:=bags/hololens-000 dataset:=hololens output_dir:=out/eval

Starts, all with ``use_sim_time`` (the bag's ``/clock``), each in its own process:

* the bag source: ``player_node`` (default; works without ``ros2 bag``), or ``ros2 bag play --clock``
  with ``use_player:=false``; the player announces the end of the bag on ``/end_of_bag`` with the number of
  messages it sent per topic;
* ``mvs_node`` (the video MVS depth node) on the bag's camera topics (``image``, ``camera_info``), every frame
  processed in order (``frame_queue`` 1000), each image waiting up to ``tf_wait`` seconds for the transform at
  its stamp; once every image the player sent is accounted for it reports on ``/mvs/end_of_stream``;
* ``evaluator_node``, which pairs the node's depth with the bag's ground truth (``gt_depth``, within
  ``gt_stamp_tolerance`` seconds) and, once both reports and every prediction and ground truth they count
  have arrived, writes the ``mvs-depth run`` output contract (``metrics.json`` ...) to ``output_dir`` and
  exits: 0 when every frame was processed, 1 when frames were lost, still queued or dropped for lack of time
  (the log says which, with the counts). Its exit ends the launch: ``ros2 launch`` returns 0, or 1 with
  "evaluation incomplete" in the log.

Remapping for other bags, e.g. one recorded from an RGB-D camera::

    ros2 launch mvs_depth_ros eval_bag.launch.py bag:=rgbd_bag dataset:=hololens image:=/camera/color/image_raw \\
        camera_info:=/camera/color/camera_info gt_depth:=/camera/aligned_depth_to_color/image_raw \\
        camera_frame:=camera_color_optical_frame gt_stamp_tolerance:=0.005

Parameters come from ``config/player.yaml``, ``config/evaluator.yaml`` and then the dataset file
``config/datasets/<dataset>.yaml`` (later files win). Machines without ``ros2 launch`` run the same
graph in one process with ``mvs-depth launch eval-bag`` (same arguments, same exit status).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

#: launch argument -> (default, description); None = required. The runner (mvs_depth_ros.ros.runner) reads it too.
ARGUMENTS = {
    "bag": (None, "rosbag2 written by `mvs-depth bag convert`"),
    "dataset": ("hololens", "config/datasets/<dataset>.yaml: hololens, synthetic, tum"),
    "output_dir": ("out/eval_bag", "metrics.json etc."),
    "model": ("planesweep", "depth estimator (registry name)"),
    "rate": ("1.0", "playback speed factor"),
    "use_player": ("true", "true: player_node; false: ros2 bag play --clock"),
    "image": ("/camera/image_raw", "image topic of the bag"),
    "camera_info": ("/camera/camera_info", "camera_info topic of the bag"),
    "gt_depth": ("/camera/depth_gt", "ground-truth depth topic of the bag (32FC1 m or 16UC1 mm)"),
    "camera_frame": ("", "camera optical frame ('' = the image header's frame_id)"),
    "gt_stamp_tolerance": ("0.0", "seconds between a prediction's stamp and its ground truth's (0 = equal stamps; "
                                  "> 0 for a camera whose depth carries its own stamp)"),
    "tf_wait": ("30.0", "seconds an image waits for the transform at its stamp before it is dropped (and the "
                        "evaluation fails)"),
}

#: where the depth node and the player report the end of their stream
END_OF_BAG = "/end_of_bag"
END_OF_STREAM = "/mvs/end_of_stream"


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory("mvs_depth_ros")
    cfg = lambda *p: os.path.join(share, "config", *p)  # noqa: E731
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    dataset_file = cfg("datasets", f"{get('dataset')}.yaml")
    if not os.path.isfile(dataset_file):
        raise RuntimeError(f"unknown dataset {get('dataset')!r}: no {dataset_file}")
    bag = get("bag")
    sim = {"use_sim_time": True}
    evaluator = Node(
        package="mvs_depth_ros", executable="evaluator_node", name="evaluator", output="screen",
        parameters=[cfg("evaluator.yaml"), dataset_file, sim,
                    {"output_dir": get("output_dir"), "names_bag": bag, "gt_topic": get("gt_depth"),
                     "match_tolerance": float(get("gt_stamp_tolerance")), "end_of_stream_topic": END_OF_STREAM,
                     "end_of_bag_topic": END_OF_BAG if get("use_player").lower() == "true" else ""}])

    def on_evaluator_exit(event, ctx):
        if event.returncode != 0:   # ros2 launch returns non-zero only for an error raised in launch itself
            raise RuntimeError(f"evaluation incomplete: evaluator_node exited with {event.returncode} (its log "
                               f"above says which frames were lost or dropped)")
        return [EmitEvent(event=Shutdown(reason="evaluation complete"))]

    return [
        Node(package="mvs_depth_ros", executable="player_node", name="player", output="screen",
             condition=IfCondition(LaunchConfiguration("use_player")),
             parameters=[cfg("player.yaml"), dataset_file,
                         {"bag": bag, "rate": float(get("rate")), "wait_for_topics": [get("image")],
                          "wait_timeout": 60.0, "end_of_bag_topic": END_OF_BAG}]),
        ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", get("rate")], output="screen",
                       condition=UnlessCondition(LaunchConfiguration("use_player"))),
        # namespace "mvs": publishes /mvs/depth_estimate, /mvs/depth, ... (evaluator.yaml's prediction_topic)
        Node(package="mvs_depth_ros", executable="mvs_node", name="mvs_node", namespace="mvs", output="screen",
             remappings=[("image", get("image")), ("camera_info", get("camera_info"))],
             # every frame processed in order (frame_queue), so the evaluated keyframes are the offline run's
             parameters=[dataset_file, sim, {"model": get("model"), "qos_reliability": "reliable",
                                             "frame_queue": 1000, "qos_depth": 100, "queue_size": 100,
                                             "camera_frame": get("camera_frame"),
                                             "tf_timeout": float(get("tf_wait")),
                                             "end_of_bag_topic": END_OF_BAG if get("use_player").lower() == "true"
                                             else ""}]),
        evaluator,
        RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=on_evaluator_exit)),
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, description=h) if d is None else DeclareLaunchArgument(k, default_value=d, description=h)
         for k, (d, h) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes)])
