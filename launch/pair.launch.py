"""Stereo depth from a rectified camera pair.

    ros2 launch mvs_depth_ros pair.launch.py left_image:=/stereo/left/image_rect right_image:=/stereo/right/image_rect \
        left_info:=/stereo/left/camera_info right_info:=/stereo/right/camera_info

Starts ``stereo_node`` with ``config/stereo.yaml`` when present (``params_file:=`` to use another),
remapped to the pair's topics; outputs in ``namespace`` (default ``stereo``). Same Fast DDS profile
handling as fusion.launch.py. Without ``ros2 launch``: ``mvs-depth launch pair left_image:=...``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = {
    "left_image": ("left/image_rect", "left rectified image topic"),
    "right_image": ("right/image_rect", "right rectified image topic"),
    "left_info": ("left/camera_info", "left camera_info topic"),
    "right_info": ("right/camera_info", "right camera_info topic"),
    "namespace": ("stereo", "namespace of the outputs"),
    "model": ("sgbm", "stereo backend"),
    "checkpoint": ("", "weights of a learned stereo model"),
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
    "use_sim_time": ("false", "use /clock"),
    "params_file": ("", "parameter YAML ('' = the package's config/stereo.yaml when present)"),
}


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory("mvs_depth_ros")
    get = lambda n: LaunchConfiguration(n).perform(context)  # noqa: E731
    default = os.path.join(share, "config", "stereo.yaml")
    params = [p for p in (get("params_file") or default,) if os.path.isfile(p)]
    params.append({"model": get("model"), "checkpoint": get("checkpoint"), "device": get("device"),
                   "use_sim_time": get("use_sim_time").lower() in ("1", "true", "yes", "on")})
    remaps = [("left/image_rect", get("left_image")), ("right/image_rect", get("right_image")),
              ("left/camera_info", get("left_info")), ("right/camera_info", get("right_info"))]
    return [Node(package="mvs_depth_ros", executable="stereo_node", name="stereo_node", namespace=get("namespace"),
                 output="screen", emulate_tty=True, parameters=params, remappings=remaps)]


def generate_launch_description():
    share = get_package_share_directory("mvs_depth_ros")
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGUMENTS.items()]
        + [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                  EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile)),
           OpaqueFunction(function=_nodes)])
