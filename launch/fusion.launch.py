"""Video multi-view stereo depth from a posed camera: the package's main launch file.

    ros2 launch mvs_depth_ros fusion.launch.py image:=/camera/color/image_rect camera_info:=/camera/color/camera_info \
        world_frame:=odom checkpoint:=/path/to/dvmvs/fusionnet/weights device:=auto

Starts ``mvs_node`` (DeepVideoMVS fusion network by default; with no ``checkpoint`` it runs the classical
plane sweep, which needs no weights, and logs that) with ``config/mvs.yaml`` (``params_file:=`` to use another), remapped to the camera
topics, publishing ``depth``, ``confidence``, ``depth/camera_info``, ``points`` and ``depth_estimate``
in ``namespace`` (default ``mvs``). The project's Fast DDS profile is used unless
``FASTDDS_DEFAULT_PROFILES_FILE`` is already set. ``map:=true`` also starts ``map_node`` (TSDF fusion of
the depth maps into a map, ``config/map.yaml``). Without ``ros2 launch``: ``mvs-depth launch fusion
image:=... camera_info:=...`` runs the same nodes with the same YAML in one process.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

#: launch argument -> (default, description); the runner (mvs_depth_ros.ros.runner) reads this table too
ARGUMENTS = {
    "image": ("image", "input image topic (rectified rgb8 / bgr8 / mono8)"),
    "camera_info": ("camera_info", "input camera_info topic"),
    "namespace": ("mvs", "namespace of the outputs"),
    "model": ("dvmvs_fusionnet", "depth estimator: dvmvs_fusionnet, dvmvs_pairnet, itermvs, patchmatchnet, mvsnet, "
              "mvdepthnet, planesweep"),
    "checkpoint": ("", "weights of a learned model ('' = the classical planesweep, with a log line saying so)"),
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
    "world_frame": ("odom", "continuous frame of the camera poses"),
    "camera_frame": ("", "camera optical frame ('' = the image header's frame_id)"),
    "pose_source": ("tf", "tf | pose | odometry"),
    "pose": ("pose", "PoseStamped topic for pose_source:=pose"),
    "odometry": ("odometry", "Odometry topic for pose_source:=odometry"),
    "use_sim_time": ("false", "use /clock (bag playback, simulation)"),
    "params_file": ("", "parameter YAML ('' = the package's config/mvs.yaml)"),
    "map": ("false", "also start map_node (TSDF fusion of the depth maps into a map, config/map.yaml)"),
}


def _bool(s: str) -> bool:
    return s.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory("mvs_depth_ros")
    get = lambda n: LaunchConfiguration(n).perform(context)  # noqa: E731
    params_file = get("params_file") or os.path.join(share, "config", "mvs.yaml")
    overrides = {"model": get("model"), "checkpoint": get("checkpoint"), "device": get("device"),
                 "world_frame": get("world_frame"), "camera_frame": get("camera_frame"),
                 "pose_source": get("pose_source"), "use_sim_time": _bool(get("use_sim_time"))}
    remaps = [("image", get("image")), ("camera_info", get("camera_info")),
              ("pose", get("pose")), ("odometry", get("odometry"))]
    return [
        Node(package="mvs_depth_ros", executable="mvs_node", name="mvs_node", namespace=get("namespace"),
             output="screen", emulate_tty=True, parameters=[params_file, overrides], remappings=remaps),
        # TSDF map from mvs_node's outputs (same namespace), coloured from the input image
        Node(package="mvs_depth_ros", executable="map_node", name="map_node", namespace=get("namespace"),
             output="screen", condition=IfCondition(LaunchConfiguration("map")),
             parameters=[os.path.join(share, "config", "map.yaml"),
                         {"world_frame": get("world_frame"), "use_sim_time": _bool(get("use_sim_time"))}],
             remappings=[("image", get("image"))]),
    ]


def generate_launch_description():
    share = get_package_share_directory("mvs_depth_ros")
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGUMENTS.items()]
        + [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                  EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile)),
           OpaqueFunction(function=_nodes)])
