"""Topic and frame names shared by the bag writer, the bag reader, the player and the evaluator.

No rclpy and no rosbags here: this module is the one place where the default names live, so a bag
written by ``mvs-depth bag convert`` is read back, played and evaluated with the same names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: REP 103: rotation of an optical frame (x right, y down, z forward) in its body frame (x forward,
#: y left, z up). Columns are the optical axes expressed in the body frame.
R_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])


def T_link_optical() -> np.ndarray:
    """4x4 pose of the optical frame in the camera body frame (pure rotation, REP 103)."""
    T = np.eye(4)
    T[:3, :3] = R_LINK_OPTICAL
    return T


@dataclass(frozen=True)
class BagTopics:
    """Topic names of a converted dataset bag. ``from_prefix('/cam')`` moves the camera topics."""

    image: str = "/camera/image_raw"
    camera_info: str = "/camera/camera_info"
    depth_gt: str = "/camera/depth_gt"
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    clock: str = "/clock"

    @classmethod
    def from_prefix(cls, prefix: str) -> "BagTopics":
        p = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return cls(image=f"{p}/image_raw", camera_info=f"{p}/camera_info", depth_gt=f"{p}/depth_gt")

    def with_(self, **kw) -> "BagTopics":
        return replace(self, **kw)


@dataclass(frozen=True)
class BagFrames:
    """TF frame names: ``world`` (continuous frame, REP 105 ``odom``), the camera's optical frame, and
    an optional camera body frame (``mount``). With a mount, ``/tf`` carries world -> mount and
    ``/tf_static`` the fixed mount -> optical rotation (REP 103); without one, ``/tf`` carries
    world -> optical directly and ``/tf_static`` stays empty."""

    world: str = "odom"
    camera: str = "camera_optical_frame"
    mount: str = "camera_link"


#: bag metadata ``custom_data`` key holding the frame names and stamps (JSON) of a converted dataset
CUSTOM_FRAMES_KEY = "mvs_depth_ros.frames"
#: custom_data key describing where the bag came from
CUSTOM_SOURCE_KEY = "mvs_depth_ros.source"
