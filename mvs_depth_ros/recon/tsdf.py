"""TSDF fusion of posed depth maps with open3d's ``t.geometry.VoxelBlockGrid`` (CPU or CUDA).

``ScalableTSDFVolume`` (the legacy API) returns an empty volume in open3d 0.20.0; the tensor
``VoxelBlockGrid`` is the maintained path and runs on ``CUDA:0`` when open3d was built with CUDA.

Poses are camera-to-world (``T_world_cam``, OpenCV optical axes); open3d wants the extrinsic
world-to-camera, so ``extrinsic = inv(T_world_cam)``. Depth is float32 metres with NaN invalid; it is
handed to open3d with ``depth_scale = 1`` and NaN replaced by 0 (open3d's "no measurement").

Memory is bounded by ``max_blocks`` voxel blocks (``block_resolution``^3 voxels each): when the budget
is reached the map stops growing (new blocks are not allocated, existing ones keep being refined) and
:attr:`TSDFVolume.budget_reached` turns true, with one clear warning in the log.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TSDFConfig:
    voxel_size: float = 0.02        # metres
    trunc: float = 0.08             # truncation distance, metres (open3d: trunc_voxel_multiplier * voxel_size)
    min_depth: float = 0.1          # depth below this is ignored (metres)
    max_depth: float = 5.0          # depth beyond this is ignored (metres)
    block_resolution: int = 8       # voxels per block side
    max_blocks: int = 50_000        # memory budget in blocks (8^3 voxels x (tsdf, weight, rgb) = 10 KB each)
    device: str = "cpu"             # cpu | cuda | cuda:N | auto (cuda when open3d has it)
    color: bool = True              # integrate colour when given

    def __post_init__(self) -> None:
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if not self.trunc >= self.voxel_size:
            raise ValueError(f"trunc ({self.trunc}) must be >= voxel_size ({self.voxel_size})")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.block_resolution < 1 or self.max_blocks < 1:
            raise ValueError(f"block_resolution and max_blocks must be >= 1, got {self.block_resolution}, "
                             f"{self.max_blocks}")

    @property
    def block_bytes(self) -> int:
        """Bytes of one voxel block (tsdf + weight + rgb float32)."""
        return self.block_resolution ** 3 * 4 * (5 if self.color else 2)


def o3d_device(name: str = "cpu"):
    """``open3d.core.Device`` from ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` (CUDA when available)."""
    import open3d.core as o3c
    s = (name or "cpu").strip().lower()
    if s == "auto":
        return o3c.Device("CUDA:0") if o3c.cuda.is_available() else o3c.Device("CPU:0")
    if s.startswith("cuda"):
        if not o3c.cuda.is_available():
            raise ValueError(f"device {name!r}: open3d was built without CUDA or no GPU is visible")
        idx = s.split(":", 1)[1] if ":" in s else "0"
        return o3c.Device(f"CUDA:{int(idx)}")
    if s.startswith("cpu"):
        return o3c.Device("CPU:0")
    raise ValueError(f"unknown device {name!r} (cpu | cuda | cuda:N | auto)")


@dataclass
class IntegrateStats:
    integrated: bool
    new_blocks: int = 0
    dropped_blocks: int = 0         # blocks not allocated because of the budget
    valid_pixels: int = 0
    ms: float = 0.0
    reason: str = ""


class TSDFVolume:
    """A growing TSDF map. Not thread safe: callers serialise access (the map node holds a lock)."""

    def __init__(self, config: TSDFConfig = TSDFConfig()):
        import open3d as o3d  # noqa: F401 - fail here, with the real error, when open3d is missing
        self.config = config
        self.device = o3d_device(config.device)
        self.frames = 0
        self.budget_reached = False
        self._warned_budget = False
        self._vbg = None
        self.reset()

    # ------------------------------------------------------------------------------------------ state
    def reset(self) -> None:
        import open3d as o3d
        import open3d.core as o3c
        c = self.config
        names, dtypes, channels = ("tsdf", "weight"), (o3c.float32, o3c.float32), ((1), (1))
        if c.color:
            names, dtypes, channels = names + ("color",), dtypes + (o3c.float32,), channels + ((3),)
        # the hash map is allocated for the whole budget up front (no rehash at run time)
        self._vbg = o3d.t.geometry.VoxelBlockGrid(attr_names=names, attr_dtypes=dtypes, attr_channels=channels,
                                                  voxel_size=c.voxel_size, block_resolution=c.block_resolution,
                                                  block_count=c.max_blocks, device=self.device)
        self.frames = 0
        self.budget_reached = False
        self._warned_budget = False

    @property
    def n_blocks(self) -> int:
        return int(self._vbg.hashmap().size())

    @property
    def memory_bytes(self) -> int:
        return self.n_blocks * self.config.block_bytes

    @property
    def grid(self):
        """The underlying ``open3d.t.geometry.VoxelBlockGrid``."""
        return self._vbg

    # ------------------------------------------------------------------------------------------ fusion
    def integrate(self, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  rgb: Optional[np.ndarray] = None) -> IntegrateStats:
        """Fuse one depth map ((H, W) float32 metres, NaN invalid) seen from ``T_world_cam``.

        ``rgb`` (any size, HxWx3 uint8) is resized to the depth's size. Returns what happened; a frame
        without a valid pose or valid depth is skipped with a reason (never raises for bad data).
        """
        import open3d as o3d
        import open3d.core as o3c
        t0 = time.perf_counter()
        c = self.config
        d = np.asarray(depth, dtype=np.float32)
        T = np.asarray(T_world_cam, dtype=np.float64) if T_world_cam is not None else None
        if d.ndim != 2 or d.size == 0:
            return IntegrateStats(False, reason=f"depth must be a non-empty 2-D array, got shape {d.shape}")
        if T is None or T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return IntegrateStats(False, reason="no valid camera pose")
        Kf = np.asarray(K, dtype=np.float64)
        if Kf.shape != (3, 3) or not np.all(np.isfinite(Kf)) or Kf[0, 0] <= 0 or Kf[1, 1] <= 0:
            return IntegrateStats(False, reason="invalid intrinsics")
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(d) & (d >= c.min_depth) & (d <= c.max_depth)
        n_valid = int(ok.sum())
        if n_valid == 0:
            return IntegrateStats(False, reason="no valid depth in range")
        d = np.where(ok, d, np.float32(0.0))
        depth_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(d))).to(self.device)
        intr = o3c.Tensor(Kf, o3c.float64)
        extr = o3c.Tensor(np.linalg.inv(T), o3c.float64)
        mult = c.trunc / c.voxel_size
        try:
            coords = self._vbg.compute_unique_block_coordinates(depth_img, intr, extr, 1.0, c.max_depth, mult)
        except RuntimeError as exc:   # open3d aborts when the valid pixels touch no block (very sparse depth)
            if "no block is touched" not in str(exc).lower():
                raise
            return IntegrateStats(False, valid_pixels=n_valid, reason="the valid depth touches no voxel block",
                                  ms=(time.perf_counter() - t0) * 1e3)
        stats = IntegrateStats(True, valid_pixels=n_valid)
        coords, stats.new_blocks, stats.dropped_blocks = self._within_budget(coords)
        if coords.shape[0] == 0:
            stats.integrated = False
            stats.reason = "memory budget reached and the view sees no allocated block"
            stats.ms = (time.perf_counter() - t0) * 1e3
            return stats
        if c.color and rgb is not None:
            img = np.asarray(rgb)
            if img.ndim != 3 or img.shape[2] != 3:
                return IntegrateStats(False, reason=f"rgb must be HxWx3, got {img.shape}")
            if img.shape[:2] != d.shape:
                img = cv2.resize(img, (d.shape[1], d.shape[0]), interpolation=cv2.INTER_AREA)
            color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(img, dtype=np.float32) / 255.0)).to(self.device)
            self._vbg.integrate(coords, depth_img, color, intr, extr, 1.0, c.max_depth, mult)
        elif c.color:
            # no colour for this frame: integrate mid-grey so the colour channel stays defined
            grey = np.full(d.shape + (3,), 0.5, np.float32)
            color = o3d.t.geometry.Image(o3c.Tensor(grey)).to(self.device)
            self._vbg.integrate(coords, depth_img, color, intr, extr, 1.0, c.max_depth, mult)
        else:
            self._vbg.integrate(coords, depth_img, intr, extr, 1.0, c.max_depth, mult)
        self.frames += 1
        stats.ms = (time.perf_counter() - t0) * 1e3
        return stats

    def _within_budget(self, coords) -> Tuple[object, int, int]:
        """Keep the block coordinates the budget allows: all existing blocks, new ones while room is left."""
        import open3d.core as o3c
        hm = self._vbg.hashmap()
        _, found = hm.find(coords)
        found_np = found.cpu().numpy().astype(bool)
        n_new = int((~found_np).sum())
        room = self.config.max_blocks - int(hm.size())
        if n_new <= room:
            return coords, n_new, 0
        keep = found_np.copy()
        if room > 0:
            keep[np.flatnonzero(~found_np)[:room]] = True
        dropped = n_new - max(room, 0)
        self.budget_reached = True
        if not self._warned_budget:
            self._warned_budget = True
            c = self.config
            log.warning("TSDF memory budget reached: %d voxel blocks (%.0f MB at %.3f m voxels); the map stops "
                        "growing and only refines what it has. Raise max_blocks, use larger voxels, lower "
                        "max_depth, or reset the map.", c.max_blocks, c.max_blocks * c.block_bytes / 1e6,
                        c.voxel_size)
        idx = o3c.Tensor(np.flatnonzero(keep).astype(np.int64), device=coords.device)
        return coords[idx], min(n_new, max(room, 0)), dropped

    # ------------------------------------------------------------------------------------------ outputs
    @staticmethod
    def _extract(fn, weight_threshold: float):
        """open3d 0.20 raises (instead of returning an empty geometry) when no voxel passes the weight
        threshold yet, e.g. after the first frame: None then."""
        try:
            return fn(weight_threshold)
        except RuntimeError as exc:
            if "shape {0}" in str(exc) or "is empty" in str(exc).lower():
                return None
            raise

    def point_cloud(self, weight_threshold: float = 1.0) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Surface points ``(N, 3)`` float32 (world) and colours ``(N, 3)`` uint8 (or None)."""
        empty = np.zeros((0, 3), np.float32), (np.zeros((0, 3), np.uint8) if self.config.color else None)
        if self.n_blocks == 0:
            return empty
        pcd = self._extract(self._vbg.extract_point_cloud, weight_threshold)
        if pcd is None:
            return empty
        pts = pcd.point.positions.cpu().numpy().astype(np.float32) if "positions" in pcd.point else np.zeros((0, 3), np.float32)
        cols = None
        if self.config.color and "colors" in pcd.point:
            cols = np.clip(np.rint(pcd.point.colors.cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
        return pts, cols

    def o3d_point_cloud(self, weight_threshold: float = 1.0):
        """The extracted cloud as a legacy ``open3d.geometry.PointCloud`` (with normals and colours)."""
        import open3d as o3d
        pcd = self._extract(self._vbg.extract_point_cloud, weight_threshold) if self.n_blocks else None
        return o3d.geometry.PointCloud() if pcd is None else pcd.to_legacy()

    def mesh(self, weight_threshold: float = 1.0):
        """Marching-cubes mesh as a legacy ``open3d.geometry.TriangleMesh`` (vertex colours and normals)."""
        import open3d as o3d
        m = self._extract(self._vbg.extract_triangle_mesh, weight_threshold) if self.n_blocks else None
        if m is None:
            return o3d.geometry.TriangleMesh()
        m = m.to_legacy()
        if not m.has_vertex_normals():
            m.compute_vertex_normals()
        return m

    def save(self, cloud_path: Optional[Path] = None, mesh_path: Optional[Path] = None,
             weight_threshold: float = 1.0) -> dict:
        """Write the cloud and/or mesh as PLY (binary); returns {"cloud": n_points, "mesh": n_triangles}."""
        import open3d as o3d
        out = {}
        if cloud_path is not None:
            Path(cloud_path).parent.mkdir(parents=True, exist_ok=True)
            pcd = self.o3d_point_cloud(weight_threshold)
            if pcd.has_colors():   # interpolated colours can leave [0, 1] by a rounding error
                pcd.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(pcd.colors), 0.0, 1.0))
            if not o3d.io.write_point_cloud(str(cloud_path), pcd, write_ascii=False):
                raise OSError(f"could not write {cloud_path}")
            out["cloud"] = len(pcd.points)
        if mesh_path is not None:
            Path(mesh_path).parent.mkdir(parents=True, exist_ok=True)
            m = self.mesh(weight_threshold)
            if m.has_vertex_colors():
                m.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.asarray(m.vertex_colors), 0.0, 1.0))
            if not o3d.io.write_triangle_mesh(str(mesh_path), m, write_ascii=False):
                raise OSError(f"could not write {mesh_path}")
            out["mesh"] = len(m.triangles)
        return out


def fuse(depths, Ks, poses, images=None, config: TSDFConfig = TSDFConfig()) -> TSDFVolume:
    """A volume with every (depth, K, pose[, image]) integrated in order."""
    vol = TSDFVolume(config)
    for i, (d, K, T) in enumerate(zip(depths, Ks, poses)):
        st = vol.integrate(d, K, T, None if images is None else images[i])
        if not st.integrated:
            log.info("frame %d not integrated: %s", i, st.reason)
    return vol
