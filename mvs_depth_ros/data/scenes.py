"""Dataset readers that yield :class:`~mvs_depth_ros.core.frame.Frame` streams.

Supported layouts:

* **DeepVideoMVS scene** (``images/*.png|jpg``, ``depth/*.png`` uint16 millimetres with 0 = none,
  ``poses.txt`` one row-major 4x4 camera-to-world pose per image in sorted-name order, ``K.txt`` 3x3);
* **TUM / DeMoN two-view pairs** (``0000.jpg``, ``0001.jpg``, ``0000.npy``/``0001.npy`` depth in metres,
  ``cam.txt`` 3x3 K, ``poses.txt`` one row-major 3x4 world-to-camera ``[R|t]`` per image).

Malformed input raises :class:`SceneError` naming the file (and line) at fault.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..core.frame import Frame, is_valid_pose

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
log = logging.getLogger(__name__)


class SceneError(ValueError):
    """A dataset folder that cannot be read; the message names the file (and line) at fault."""


def read_matrix_file(path: Path, cols: int, what: str) -> np.ndarray:
    """Rows of ``cols`` whitespace-separated numbers; errors name the file and line."""
    if not path.is_file():
        raise SceneError(f"{path}: missing {what}")
    rows = []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                raise SceneError(f"{path}:{lineno}: {what}: non-numeric value in {line.strip()[:80]!r}") from None
            if len(vals) != cols:
                raise SceneError(f"{path}:{lineno}: {what}: expected {cols} numbers, got {len(vals)}")
            rows.append(vals)
    if not rows:
        raise SceneError(f"{path}: {what} file is empty")
    return np.asarray(rows, dtype=np.float64)


def read_intrinsics(path: Path) -> np.ndarray:
    K = read_matrix_file(path, 3, "intrinsics (3x3)")
    if K.shape != (3, 3):
        raise SceneError(f"{path}: intrinsics must be 3 rows of 3 numbers, got {K.shape[0]} rows")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise SceneError(f"{path}: intrinsics must be finite with fx, fy > 0, got {K.tolist()}")
    return K


def read_image_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); grey images are expanded. Raises SceneError for unreadable files."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise SceneError(f"{path}: unreadable or empty image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth_png_mm(path: Path) -> np.ndarray:
    """uint16 millimetre PNG -> float32 metres with NaN where 0."""
    d = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if d is None or d.size == 0:
        raise SceneError(f"{path}: unreadable or empty depth image")
    if d.dtype != np.uint16:
        raise SceneError(f"{path}: depth PNG must be 16-bit (millimetres), got {d.dtype}")
    out = d.astype(np.float32) / 1000.0
    out[d == 0] = np.nan
    return out


def _list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise SceneError(f"{folder}: missing images folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SceneError(f"{folder}: no images (.png/.jpg)")
    return files


@dataclass
class Scene:
    """A DeepVideoMVS-layout scene. Frames are read lazily, in sorted-name order."""

    root: Path
    image_paths: List[Path]
    depth_paths: List[Optional[Path]]
    poses: np.ndarray            # (N, 4, 4) camera-to-world; rows that are not rigid are kept and flagged
    K: np.ndarray                # (3, 3) of the stored images
    frame_rate: float = 30.0
    frame_id: str = "camera"

    @property
    def names(self) -> List[str]:
        return [p.stem for p in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def index_of(self, name: str) -> int:
        stem = Path(name).stem
        try:
            return self.names.index(stem)
        except ValueError:
            raise SceneError(f"{self.root}: no image named {name!r}") from None

    def frame(self, i: int, with_depth: bool = True) -> Frame:
        img = read_image_rgb(self.image_paths[i])
        depth = None
        if with_depth and self.depth_paths[i] is not None:
            depth = read_depth_png_mm(self.depth_paths[i])
            if depth.shape != img.shape[:2]:
                raise SceneError(f"{self.depth_paths[i]}: depth size {depth.shape[::-1]} differs from image "
                                 f"size {img.shape[1::-1]}")
        pose = self.poses[i]
        return Frame(image=img, K=self.K, T_world_cam=pose if is_valid_pose(pose) else None,
                     stamp=int(round(i * 1e9 / self.frame_rate)), frame_id=self.frame_id,
                     name=self.image_paths[i].stem, depth_gt=depth)

    def frames(self, start: int = 0, stop: Optional[int] = None, with_depth: bool = True) -> Iterator[Frame]:
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            yield self.frame(i, with_depth=with_depth)


def load_scene(path: os.PathLike | str, frame_rate: float = 30.0) -> Scene:
    """Open a DeepVideoMVS-layout scene folder (validates structure, reads images lazily)."""
    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder does not exist")
    images = _list_images(root / "images")
    K = read_intrinsics(root / "K.txt")
    raw = read_matrix_file(root / "poses.txt", 16, "camera-to-world pose (16 numbers, row-major 4x4)")
    if len(raw) != len(images):
        raise SceneError(f"{root / 'poses.txt'}: {len(raw)} poses for {len(images)} images in {root / 'images'}")
    poses = raw.reshape(-1, 4, 4)
    for i, T in enumerate(poses):
        if np.all(np.isfinite(T)) and not is_valid_pose(T):
            raise SceneError(f"{root / 'poses.txt'}:{i + 1}: not a rigid transform (rotation not orthonormal "
                             f"or last row not 0 0 0 1)")
    # Non-finite rows are kept: they mean "no pose for this frame" (tracking lost), as in DeepVideoMVS.
    missing = [i + 1 for i, T in enumerate(poses) if not np.all(np.isfinite(T))]
    if missing:
        log.warning("%s: %d non-finite pose(s) (lines %s): those frames have no pose and are treated as "
                    "tracking loss", root / "poses.txt", len(missing), ", ".join(map(str, missing[:10])))
    depth_dir = root / "depth"
    depth_paths: List[Optional[Path]] = []
    for p in images:
        d = depth_dir / (p.stem + ".png")
        depth_paths.append(d if d.is_file() else None)
    return Scene(root=root, image_paths=images, depth_paths=depth_paths, poses=poses, K=K, frame_rate=frame_rate)


def read_keyframe_index(path: os.PathLike | str) -> List[Tuple[str, List[str]]]:
    """DeepVideoMVS keyframe index: each line ``reference measurement1 [measurement2 ...]``."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path}: keyframe index file does not exist")
    out = []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise SceneError(f"{path}:{lineno}: a keyframe line needs a reference and >= 1 measurement frame")
            out.append((parts[0], parts[1:]))
    return out


def format_keyframe_line(reference: str, measurements: Sequence[str]) -> str:
    return " ".join([reference, *measurements])


# --------------------------------------------------------------------------------------------- TUM pairs
def load_tum_pair(folder: os.PathLike | str) -> List[Frame]:
    """The two frames of a DeMoN-style TUM pair folder (poses converted to camera-to-world)."""
    root = Path(folder)
    if not root.is_dir():
        raise SceneError(f"{root}: pair folder does not exist")
    K = read_intrinsics(root / "cam.txt")
    w2c = read_matrix_file(root / "poses.txt", 12, "world-to-camera pose (12 numbers, row-major 3x4)")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(images) != len(w2c):
        raise SceneError(f"{root / 'poses.txt'}: {len(w2c)} poses for {len(images)} images")
    frames = []
    for i, (img_path, row) in enumerate(zip(images, w2c)):
        T = np.eye(4)
        T[:3, :4] = row.reshape(3, 4)
        if not is_valid_pose(T):
            raise SceneError(f"{root / 'poses.txt'}:{i + 1}: not a rigid transform")
        depth_path = img_path.with_suffix(".npy")
        depth = None
        if depth_path.is_file():
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
            depth[~(depth > 0)] = np.nan
        frames.append(Frame(image=read_image_rgb(img_path), K=K, T_world_cam=np.linalg.inv(T),
                            stamp=i, frame_id="camera", name=f"{root.name}/{img_path.stem}", depth_gt=depth))
    return frames
