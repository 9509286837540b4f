"""Stereo depth from a rectified pair, live or from a stereo bag.

    ros2 launch mvs_depth_ros stereo.launch.py left_image:=/cam/left/image_rect right_image:=/cam/right/image_rect \
        left_info:=/cam/left/camera_info right_info:=/cam/right/camera_info temporal:=true world_frame:=odom

    # a bag written by `mvs-depth stereo-bag convert` (its topics are the defaults below)
    ros2 launch mvs_depth_ros stereo.launch.py bag:=bags/stereo_synthetic temporal:=true world_frame:=odom

Starts ``stereo_node`` with ``config/stereo.yaml`` (``params_file:=`` to use another), remapped to the pair's
topics, publishing ``disparity``, ``depth``, ``confidence``, ``depth/camera_info`` and ``points`` in
``namespace`` (default ``stereo``). With ``bag:=PATH`` it also starts ``player_node`` on that bag and runs
everything on the bag's ``/clock`` (``use_sim_time``). The project's Fast DDS profile is used unless
``FASTDDS_DEFAULT_PROFILES_FILE`` is already set. ``pair.launch.py`` is the minimal form (node only).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

#: launch argument -> (default, description); mvs_depth_ros.ros.runner reads this table too
ARGUMENTS = {
    "left_image": ("/stereo/left/image_rect", "left rectified image topic (rgb8 / bgr8 / mono8)"),
    "right_image": ("/stereo/right/image_rect", "right rectified image topic"),
    "left_info": ("/stereo/left/camera_info", "left camera_info topic"),
    "right_info": ("/stereo/right/camera_info", "right camera_info topic (P[0,3] = Tx = -fx * baseline)"),
    "namespace": ("stereo", "namespace of the outputs"),
    "model": ("sgbm", "stereo estimator: sgbm | dynamic_stereo (needs checkpoint)"),
    "checkpoint": ("", "weights of a learned stereo model ('' = sgbm)"),
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
    "temporal": ("false", "temporal filtering of the disparity"),
    "world_frame": ("", "TF frame of the camera poses for the temporal warp ('' = no poses)"),
    "approximate_sync": ("false", "pair left/right by nearest stamp (cameras without hardware sync)"),
    "bag": ("", "play this stereo rosbag2 (from `mvs-depth stereo-bag convert`) with player_node"),
    "rate": ("1.0", "bag playback speed factor"),
    "wait_for": ("", "with bag:=, comma-separated topics that must also have a subscriber before playback starts "
                     "(a recorder's, a viewer's: outputs published before they connect are not received)"),
    "use_sim_time": ("false", "use /clock (forced on with bag:=)"),
    "params_file": ("", "parameter YAML ('' = the package's config/stereo.yaml)"),
}


def _bool(s: str) -> bool:
    return s.strip().lower() in ("1", "true", "yes", "on")


def _topics(s: str) -> list:
    return [t.strip() for t in s.split(",") if t.strip()]


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory("mvs_depth_ros")
    get = lambda n: LaunchConfiguration(n).perform(context)  # noqa: E731
    params_file = get("params_file") or os.path.join(share, "config", "stereo.yaml")
    bag = get("bag")
    sim = _bool(get("use_sim_time")) or bool(bag)
    overrides = {"model": get("model"), "checkpoint": get("checkpoint"), "device": get("device"),
                 "temporal": _bool(get("temporal")), "world_frame": get("world_frame"),
                 "approximate_sync": _bool(get("approximate_sync")), "use_sim_time": sim}
    if bag:  # a played bag must not lose pairs (as `mvs-depth launch stereo`): reliable, every pair in order
        overrides.update(qos_reliability="reliable", frame_queue=1000, qos_depth=100, queue_size=100)
    remaps = [("left/image_rect", get("left_image")), ("right/image_rect", get("right_image")),
              ("left/camera_info", get("left_info")), ("right/camera_info", get("right_info"))]
    nodes = [Node(package="mvs_depth_ros", executable="stereo_node", name="stereo_node", namespace=get("namespace"),
                  output="screen", emulate_tty=True, parameters=[params_file, overrides], remappings=remaps)]
    if bag:
        nodes.append(Node(package="mvs_depth_ros", executable="player_node", name="player", output="screen",
                          parameters=[os.path.join(share, "config", "player.yaml"),
                                      {"bag": bag, "rate": float(get("rate")),
                                       "wait_for_topics": [get("left_image"), get("right_image"), get("left_info"),
                                                           get("right_info")] + _topics(get("wait_for")),
                                       "wait_timeout": 60.0}]))
    return nodes


def generate_launch_description():
    share = get_package_share_directory("mvs_depth_ros")
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGUMENTS.items()]
        + [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                  EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile)),
           OpaqueFunction(function=_nodes)])
