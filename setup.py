"""Python packaging for mvs_depth_ros.

Two install worlds use this file:
* pip (``pip install -e .``) on machines without a ROS 2 distribution: the ``mvs-depth`` CLI runs the
  same nodes in one process;
* colcon in a ROS 2 workspace (see CMakeLists.txt / package.xml for the interface build).
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "mvs_depth_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/config/datasets", glob("config/datasets/*.yaml")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
        ("share/" + package_name + "/msg", glob("msg/*.msg")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "kornia>=0.7",
        "opencv-python-headless>=4.8",
        "transforms3d>=0.4",
        "rosbags>=0.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "numba>=0.58",
    ],
    extras_require={
        "reconstruction": ["open3d>=0.18"],
        "test": ["pytest>=7"],
    },
    zip_safe=True,
    maintainer="mvs_depth_ros maintainers",
    maintainer_email="maintainers@mvs-depth-ros.invalid",
    description="Dense metric depth from posed monocular video (multi-view stereo) and stereo cameras, for ROS 2.",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "mvs-depth = mvs_depth_ros.cli:main",
            "mvs_node = mvs_depth_ros.ros.mvs_node:main",
            "stereo_node = mvs_depth_ros.ros.stereo_node:main",
            "player_node = mvs_depth_ros.ros.player_node:main",
            "evaluator_node = mvs_depth_ros.ros.evaluator_node:main",
            "map_node = mvs_depth_ros.ros.map_node:main",
        ],
    },
)
