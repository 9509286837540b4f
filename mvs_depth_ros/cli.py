"""``mvs-depth``: one command with subcommands.

Subcommands live next to the code they drive; this module only dispatches, so importing the CLI never
imports rclpy, open3d or a network that the chosen subcommand does not need.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

#: subcommand -> ("module:function", one-line help). The function takes argv (list of str) and returns
#: an exit code.
SUBCOMMANDS = {
    "run": ("mvs_depth_ros.apps.run:main", "depth for a posed sequence (scene folder or synthetic) + metrics + pictures"),
    "bag": ("mvs_depth_ros.data.bags:cli_main", "convert datasets to rosbag2, inspect bags"),
    "stereo-bag": ("mvs_depth_ros.data.stereo_bags:cli_main", "convert stereo datasets (synthetic stereo video, Middlebury) to rosbag2, inspect them"),
    "launch": ("mvs_depth_ros.ros.runner:cli_main", "run the ROS nodes of a launch file in one process (no ros2 launch needed)"),
    "stereo": ("mvs_depth_ros.apps.stereo:main", "stereo depth on a rectified pair or a synthetic stereo video + metrics"),
    "reconstruct": ("mvs_depth_ros.apps.reconstruct:main", "TSDF reconstruction from a depth run or a scene"),
    "train": ("mvs_depth_ros.apps.train:main", "supervised / self-supervised training"),
    "finetune": ("mvs_depth_ros.apps.train:finetune_main", "self-supervised fine-tuning on a rosbag2"),
    "models": ("mvs_depth_ros.apps.run:list_models", "list the available depth estimators"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvs-depth", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        _parser().print_usage(sys.stderr)
        print(f"mvs-depth: unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    target = SUBCOMMANDS[name][0]
    module_name, func = target.split(":")
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"mvs-depth {name}: not available in this install ({exc})", file=sys.stderr)
        return 2
    return int(getattr(module, func)(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
