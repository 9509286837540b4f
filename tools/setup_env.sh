#!/usr/bin/env bash
# Set up everything mvs_depth_ros needs on a plain machine (no ROS 2 distribution required):
#   * a virtual environment at .venv in the repository root,
#   * torch==2.13.0 (pinned: a CPU wheel where the machine provides one; any other spec pulls a CUDA build),
#   * the package itself (editable) with its test and reconstruction extras, the `mvs-depth` command in .venv/bin,
#   * open3d's system library (libusb) when apt is available and we are root,
#   * the ROS 2 Python wheels and this package's interfaces (tools/install_ros.sh; optional, never fatal).
# Idempotent: a second run only checks. Override the interpreter with PYTHON=/path/to/python3.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
PY_BOOT="${PYTHON:-python3}"
STAMP="$VENV/.mvs_depth_setup"
say() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip, with the machine-specific "Location ... is ignored" index warnings filtered out (exit code kept)
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }
  return "${PIPESTATUS[0]}"
}

# Re-install only when the packaging changed since the last successful run.
want="$(cat setup.py setup.cfg tools/setup_env.sh | sha1sum | cut -c1-16)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! "$PY" -c "import mvs_depth_ros, torch, cv2, kornia, rosbags" 2>/dev/null; then
  say "installing torch==2.13.0 and the package (first run: a few minutes)"
  pip_install "torch==2.13.0"
  pip_install -e ".[test,reconstruction]"
  echo "$want" > "$STAMP"
else
  say "python packages: up to date"
fi

# open3d (TSDF reconstruction) needs libusb at import time.
if ! "$PY" -c "import open3d" 2>/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    say "installing libusb-1.0-0 for open3d"
    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1; }) \
      || say "WARNING: could not install libusb-1.0-0: reconstruction (open3d) is off"
  else
    say "WARNING: open3d does not import (it needs the system package libusb-1.0-0): reconstruction is off"
  fi
fi

# ROS 2 wheels + interfaces (optional: the core, the CLI and the offline tools work without them).
if [ -x tools/install_ros.sh ] || [ -f tools/install_ros.sh ]; then
  bash tools/install_ros.sh "$VENV" || say "WARNING: ROS 2 set-up failed: ROS nodes are off"
fi
say "done: $VENV/bin/mvs-depth"
