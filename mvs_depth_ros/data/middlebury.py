"""Middlebury stereo data: PFM files, ``calib.txt`` and a loader for a 2014-style scene folder.

A scene folder holds ``im0.png``/``im1.png`` (rectified left/right), ``disp0GT.pfm`` (left disparity,
``inf`` = unknown), optionally ``disp1GT.pfm`` and ``mask0nocc.png`` (255 = not occluded, 128 = occluded,
0 = no ground truth) and ``calib.txt`` (``cam0``, ``cam1``, ``doffs``, ``baseline`` [mm], ``width``,
``height``, ``ndisp``, ...). Depth: ``Z[mm] = baseline * f / (d + doffs)``.

The shared Motorcycle quarter-resolution pair is found with
``shared_path("data", "middlebury-2014-motorcycle-q")``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import cv2
import numpy as np

from ..core.frame import StereoFrame
from ..core.stereo import disparity_to_depth

PathLike = Union[str, os.PathLike]


class MiddleburyError(ValueError):
    """A Middlebury file that cannot be read; the message names the file."""


def read_pfm(path: PathLike) -> np.ndarray:
    """A PFM image as float32, top row first: (H, W) for ``Pf``, (H, W, 3) for ``PF``.

    PFM stores rows bottom-up; a negative scale means little-endian data, a positive one big-endian.
    Values are returned as stored (Middlebury writes ``inf`` for unknown disparity).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        header = fh.readline().strip()
        if header not in (b"PF", b"Pf"):
            raise MiddleburyError(f"{path}: not a PFM file (header {header[:10]!r})")
        channels = 3 if header == b"PF" else 1
        dims = fh.readline()
        m = re.fullmatch(rb"\s*(\d+)\s+(\d+)\s*", dims)
        if not m:
            raise MiddleburyError(f"{path}: bad PFM size line {dims[:40]!r}")
        width, height = int(m.group(1)), int(m.group(2))
        try:
            scale = float(fh.readline().strip())
        except ValueError:
            raise MiddleburyError(f"{path}: bad PFM scale line") from None
        if scale == 0:
            raise MiddleburyError(f"{path}: PFM scale must be non-zero")
        dtype = np.dtype("<f4") if scale < 0 else np.dtype(">f4")
        data = np.frombuffer(fh.read(), dtype=dtype)
    expected = width * height * channels
    if data.size < expected:
        raise MiddleburyError(f"{path}: truncated PFM ({data.size} of {expected} values)")
    img = data[:expected].reshape((height, width, channels) if channels == 3 else (height, width))
    return np.ascontiguousarray(img[::-1]).astype(np.float32)


def write_pfm(path: PathLike, image: np.ndarray) -> None:
    """Write (H, W) or (H, W, 3) float32 as little-endian PFM (rows bottom-up, scale -1)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) images, got {img.shape}")
    header = b"PF" if img.ndim == 3 else b"Pf"
    with open(path, "wb") as fh:
        fh.write(header + b"\n" + f"{img.shape[1]} {img.shape[0]}\n".encode() + b"-1.0\n")
        fh.write(np.ascontiguousarray(img[::-1]).astype("<f4").tobytes())


def _parse_matrix(text: str, path: Path, key: str) -> np.ndarray:
    rows = [r.split() for r in text.strip().strip("[]").split(";")]
    try:
        M = np.array([[float(x) for x in r] for r in rows], dtype=np.float64)
    except ValueError:
        raise MiddleburyError(f"{path}: {key} is not a numeric matrix: {text!r}") from None
    if M.shape != (3, 3):
        raise MiddleburyError(f"{path}: {key} must be 3x3, got {M.shape}")
    return M


@dataclass(frozen=True)
class MiddleburyCalib:
    """``calib.txt``: ``K0``/``K1`` (3, 3) pixel intrinsics, ``doffs`` px, ``baseline_mm``, image size,
    ``ndisp`` (a bound on the disparity range) and any other key as a string in ``extra``."""

    K0: np.ndarray
    K1: np.ndarray
    doffs: float
    baseline_mm: float
    width: int
    height: int
    ndisp: int
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def baseline_m(self) -> float:
        return self.baseline_mm / 1000.0


def read_calib(path: PathLike) -> MiddleburyCalib:
    """Parse a Middlebury ``calib.txt`` (``key=value`` lines; ``cam0=[f 0 cx; 0 f cy; 0 0 1]``)."""
    path = Path(path)
    if not path.is_file():
        raise MiddleburyError(f"{path}: missing calib.txt")
    kv: Dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            raise MiddleburyError(f"{path}:{lineno}: expected key=value, got {line.strip()[:60]!r}")
        k, v = line.split("=", 1)
        kv[k.strip()] = v.strip()
    missing = [k for k in ("cam0", "cam1", "doffs", "baseline", "width", "height", "ndisp") if k not in kv]
    if missing:
        raise MiddleburyError(f"{path}: missing key(s) {missing}")
    try:
        calib = MiddleburyCalib(
            K0=_parse_matrix(kv["cam0"], path, "cam0"), K1=_parse_matrix(kv["cam1"], path, "cam1"),
            doffs=float(kv["doffs"]), baseline_mm=float(kv["baseline"]), width=int(kv["width"]),
            height=int(kv["height"]), ndisp=int(kv["ndisp"]),
            extra={k: v for k, v in kv.items()
                   if k not in ("cam0", "cam1", "doffs", "baseline", "width", "height", "ndisp")})
    except ValueError as e:
        raise MiddleburyError(f"{path}: {e}") from None
    if calib.baseline_mm <= 0 or calib.K0[0, 0] <= 0:
        raise MiddleburyError(f"{path}: baseline and focal length must be > 0")
    return calib


@dataclass
class MiddleburyPair:
    """A loaded scene: ``frame`` (left/right RGB, ``K`` = cam0, baseline in metres, ``doffs``,
    ``disparity_gt`` float32 NaN unknown), ``depth_gt`` metres (NaN unknown), ``nonocc`` mask (bool,
    None when absent), ``disparity_right_gt`` (None when absent) and the parsed ``calib``."""

    frame: StereoFrame
    depth_gt: np.ndarray
    nonocc: Optional[np.ndarray]
    disparity_right_gt: Optional[np.ndarray]
    calib: MiddleburyCalib


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MiddleburyError(f"{path}: missing or unreadable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _gt_disparity(path: Path) -> np.ndarray:
    d = read_pfm(path)
    if d.ndim != 2:
        raise MiddleburyError(f"{path}: disparity PFM must have one channel")
    d = d.copy()
    d[~np.isfinite(d)] = np.nan
    return d


def load_middlebury(folder: PathLike, name: Optional[str] = None) -> MiddleburyPair:
    """Load a Middlebury 2014-style scene folder (see the module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        raise MiddleburyError(f"{root}: scene folder does not exist")
    calib = read_calib(root / "calib.txt")
    left, right = _read_rgb(root / "im0.png"), _read_rgb(root / "im1.png")
    if left.shape != right.shape or left.shape[:2] != (calib.height, calib.width):
        raise MiddleburyError(f"{root}: images {left.shape} / {right.shape} do not match calib size "
                              f"{calib.width}x{calib.height}")
    disp = _gt_disparity(root / "disp0GT.pfm")
    if disp.shape != left.shape[:2]:
        raise MiddleburyError(f"{root / 'disp0GT.pfm'}: size {disp.shape} differs from the images")
    disp_r = _gt_disparity(root / "disp1GT.pfm") if (root / "disp1GT.pfm").is_file() else None
    nonocc = None
    if (root / "mask0nocc.png").is_file():
        m = cv2.imread(str(root / "mask0nocc.png"), cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != disp.shape:
            raise MiddleburyError(f"{root / 'mask0nocc.png'}: unreadable or wrong size")
        nonocc = m == 255
    frame = StereoFrame(left=left, right=right, K=calib.K0, baseline=calib.baseline_m,
                              frame_id="camera", name=name or root.name, disparity_gt=disp, doffs=calib.doffs)
    depth = disparity_to_depth(disp, calib.K0[0, 0], calib.baseline_m, calib.doffs)
    return MiddleburyPair(frame=frame, depth_gt=depth, nonocc=nonocc, disparity_right_gt=disp_r, calib=calib)


def middlebury_num_disparities(calib: MiddleburyCalib, multiple: int = 16) -> int:
    """``ndisp`` rounded up to a multiple of ``multiple`` (what ``cv2.StereoSGBM`` needs)."""
    return int(-(-calib.ndisp // multiple) * multiple)


__all__ = ["MiddleburyCalib", "MiddleburyError", "MiddleburyPair", "load_middlebury", "middlebury_num_disparities",
           "read_calib", "read_pfm", "write_pfm"]
