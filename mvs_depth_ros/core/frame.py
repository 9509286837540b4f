"""Value types that flow through the ROS-free core.

Conventions (used everywhere in the package):

* images are RGB ``uint8`` arrays of shape ``(H, W, 3)``;
* ``K`` is the 3x3 pinhole intrinsic matrix (float64) *of that image*;
* ``T_world_cam`` is the 4x4 camera-to-world pose (float64) in OpenCV optical axes
  (x right, y down, z forward), or ``None`` when the pose is unknown (tracking lost);
* depth is metres along the optical axis, ``float32``, ``NaN`` where invalid;
* ``stamp`` is an integer in nanoseconds (ROS time).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

import cv2
import numpy as np

_uid_counter = itertools.count()


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics of an image stretched by ``sx`` along x and ``sy`` along y.

    Uses the pixel-corner convention (a pixel centre ``u`` maps to ``u * sx``), the convention that
    DeepVideoMVS, PatchmatchNet and IterMVS use when they resize their inputs.
    """
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, :] *= sx
    K2[1, :] *= sy
    K2[2, :] = (0.0, 0.0, 1.0)
    return K2


def is_valid_pose(T: Optional[np.ndarray]) -> bool:
    """True for a finite, rigid 4x4 transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    if T is None:
        return False
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    if not np.allclose(T[3], (0.0, 0.0, 0.0, 1.0), atol=1e-6):
        return False
    return bool(np.allclose(R @ R.T, np.eye(3), atol=1e-3) and abs(np.linalg.det(R) - 1.0) < 1e-3)


@dataclass
class Frame:
    """One posed camera image.

    ``uid`` identifies the frame for caches (an estimator may keep the features of a keyframe keyed by
    it); it is unique within the process and survives :meth:`resized` only when the size is unchanged.
    """

    image: np.ndarray
    K: np.ndarray
    T_world_cam: Optional[np.ndarray] = None
    stamp: int = 0
    frame_id: str = "camera"
    name: str = ""
    depth_gt: Optional[np.ndarray] = None
    uid: int = field(default_factory=lambda: next(_uid_counter))
    #: the un-rounded float32 (0-255) RGB that ``image`` was rounded from after a resize. Networks whose
    #: official loaders resize float images (DeepVideoMVS, IterMVS, PatchmatchNet) use it to match them
    #: exactly; None for images as captured.
    image_float: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"Frame {self.name!r}: image must be HxWx3 uint8 RGB, got {img.dtype} {img.shape}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"Frame {self.name!r}: zero-size image {img.shape}")
        self.image = img
        K = np.asarray(self.K, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"Frame {self.name!r}: K must be a finite 3x3 matrix with fx, fy > 0, got {K.tolist()}")
        self.K = K
        if self.T_world_cam is not None:
            self.T_world_cam = np.asarray(self.T_world_cam, dtype=np.float64)
        if self.image_float is not None and self.image_float.shape != img.shape:
            raise ValueError(f"Frame {self.name!r}: image_float {self.image_float.shape} does not match image {img.shape}")
        if self.depth_gt is not None and self.depth_gt.shape[:2] != img.shape[:2]:
            raise ValueError(f"Frame {self.name!r}: depth_gt {self.depth_gt.shape} does not match image {img.shape}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def has_pose(self) -> bool:
        return is_valid_pose(self.T_world_cam)

    def resized(self, width: int, height: int) -> "Frame":
        """The same frame stretched to ``width x height`` (no crop) with ``K`` rescaled in the same call.

        Colour uses bilinear interpolation on the float image (what DeepVideoMVS does); ground-truth depth
        uses nearest neighbour, so no depth is invented across object boundaries.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"invalid target size {width}x{height}")
        if (width, height) == (self.width, self.height):
            return self
        src = self.image_float if self.image_float is not None else self.image.astype(np.float32)
        img_f = cv2.resize(src, (width, height), interpolation=cv2.INTER_LINEAR)
        img = np.clip(np.rint(img_f), 0, 255).astype(np.uint8)
        depth = None
        if self.depth_gt is not None:
            depth = cv2.resize(self.depth_gt, (width, height), interpolation=cv2.INTER_NEAREST)
        K = scale_intrinsics(self.K, width / self.width, height / self.height)
        return replace(self, image=img, K=K, depth_gt=depth, uid=next(_uid_counter), image_float=img_f)


@dataclass
class StereoFrame:
    """A rectified stereo pair: ``K`` of the left image, ``baseline`` in metres (right camera at +x).

    ``doffs`` is the principal-point offset ``cx_right - cx_left`` in pixels (0 for most cameras;
    Middlebury publishes one): depth ``Z = fx * baseline / (disparity + doffs)``.
    """

    left: np.ndarray
    right: np.ndarray
    K: np.ndarray
    baseline: float
    stamp: int = 0
    frame_id: str = "camera"
    name: str = ""
    T_world_cam: Optional[np.ndarray] = None
    disparity_gt: Optional[np.ndarray] = None
    doffs: float = 0.0

    def __post_init__(self) -> None:
        for side, img in (("left", self.left), ("right", self.right)):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.size == 0:
                raise ValueError(f"StereoFrame {self.name!r}: {side} must be HxWx3 uint8 RGB, got {img.dtype} {img.shape}")
        if self.left.shape != self.right.shape:
            raise ValueError(f"StereoFrame {self.name!r}: left {self.left.shape} and right {self.right.shape} differ")
        self.K = np.asarray(self.K, dtype=np.float64)
        if not (np.isfinite(self.baseline) and self.baseline > 0):
            raise ValueError(f"StereoFrame {self.name!r}: baseline must be > 0, got {self.baseline}")
        if not np.isfinite(self.doffs):
            raise ValueError(f"StereoFrame {self.name!r}: doffs must be finite, got {self.doffs}")


@dataclass
class DepthResult:
    """What every estimator returns.

    ``depth``: (H, W) float32 metres, NaN where invalid. ``confidence``: (H, W) float32 in [0, 1].
    ``K``: intrinsics of the depth image. ``state``: the recurrent state to pass to the next call.
    ``info``: free-form diagnostics (timings, plane count, ...), never needed for correctness.
    ``fused``: depth and confidence are the temporal fusion of this prediction with ``fusion_keyframes``
    earlier (offline: also later) keyframes (``core.fusion``); False for the estimator's own output.
    """

    depth: np.ndarray
    confidence: np.ndarray
    K: np.ndarray
    state: Any = None
    info: Dict[str, Any] = field(default_factory=dict)
    fused: bool = False
    fusion_keyframes: int = 0

    def __post_init__(self) -> None:
        if self.depth.dtype != np.float32 or self.depth.ndim != 2:
            raise ValueError(f"DepthResult.depth must be 2-D float32, got {self.depth.dtype} {self.depth.shape}")
        if self.confidence.shape != self.depth.shape:
            raise ValueError(f"confidence {self.confidence.shape} does not match depth {self.depth.shape}")

    def filtered(self, min_confidence: float) -> np.ndarray:
        """Depth with pixels below ``min_confidence`` set to NaN (a new array)."""
        out = self.depth.copy()
        out[~(self.confidence >= min_confidence)] = np.nan
        return out
