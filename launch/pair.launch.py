"""DeepVideoMVS pair network (no recurrent fusion) on a posed camera: fusion.launch.py with another model.

    ros2 launch mvs_depth_ros pair.launch.py image:=/camera/color/image_rect camera_info:=/camera/color/camera_info \
        checkpoint:=/path/to/dvmvs/pairnet/weights

Every argument of fusion.launch.py applies (they are passed through to it); only the default ``model``
differs. Without a checkpoint the node falls back to the classical plane sweep and says so. Without
``ros2 launch``: ``mvs-depth launch pair image:=... checkpoint:=...``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

#: the arguments this file changes; mvs_depth_ros.ros.runner reads this table too
ARGUMENTS = {
    "model": ("dvmvs_pairnet", "depth estimator (default: the DeepVideoMVS pair network)"),
}


def generate_launch_description():
    fusion = os.path.join(get_package_share_directory("mvs_depth_ros"), "launch", "fusion.launch.py")
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGUMENTS.items()]
        + [IncludeLaunchDescription(PythonLaunchDescriptionSource(fusion),
                                    launch_arguments={"model": LaunchConfiguration("model")}.items())])
