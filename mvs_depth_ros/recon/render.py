"""Headless pictures of clouds and meshes: z-buffered point splatting into a virtual pinhole camera (numpy).

open3d's offscreen renderer needs an EGL / OSMesa context that headless CI machines often lack, so the
pictures are drawn here: points (or mesh vertices) are projected, each covers a ``splat x splat`` pixel
footprint, and the nearest point wins per pixel (sort by pixel then depth, keep the first). With normals,
points facing away from the viewer are culled (so a room seen from outside shows its inside, like a
doll's house) and shaded with a head light.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def look_at(position: Sequence[float], target: Sequence[float], up: Sequence[float]) -> np.ndarray:
    """Camera-to-world (4, 4) at ``position`` looking at ``target`` (OpenCV axes: x right, y down, z forward)."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-9:   # looking along 'up': pick any perpendicular
        x = np.cross(z, [1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, position
    return T


def default_view(points: np.ndarray, camera_poses: Optional[Sequence[np.ndarray]] = None, width: int = 800,
                 height: int = 600, hfov_deg: float = 60.0, elevation: float = 0.7, distance: float = 1.2
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``(K, T_world_cam)`` of an overview camera: behind and above the recording cameras, looking at the
    cloud's centre. "Up" is the recording cameras' mean up direction (``-y``), or +z without poses.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise ValueError("no points to look at")
    center = np.median(pts, axis=0)
    radius = float(np.percentile(np.linalg.norm(pts - center, axis=1), 90)) + 1e-6
    if camera_poses is not None and len(camera_poses):
        P = np.asarray(camera_poses, np.float64)
        fwd = P[:, :3, 2].mean(0)
        up = -P[:, :3, 1].mean(0)
    else:
        fwd, up = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    up /= np.linalg.norm(up) + 1e-12
    fwd = fwd - up * (fwd @ up)
    if np.linalg.norm(fwd) < 1e-6:
        fwd = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    fwd /= np.linalg.norm(fwd)
    dist = distance * radius / np.tan(np.radians(hfov_deg) / 2)
    position = center - fwd * dist + up * dist * elevation
    f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return K, look_at(position, center, up)


def render_points(points: np.ndarray, colors: Optional[np.ndarray], K: np.ndarray, T_world_cam: np.ndarray,
                  width: int, height: int, normals: Optional[np.ndarray] = None, splat: int = 2,
                  background: Tuple[int, int, int] = (255, 255, 255), shade: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 picture of coloured points (``colors`` (N, 3): uint8 0-255, or float 0-1; None: grey).

    ``normals`` (N, 3) enable back-face culling and head-light shading.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    if len(pts) == 0:
        return img
    if colors is None:
        col = np.full((len(pts), 3), 180.0)
    else:
        c = np.asarray(colors).reshape(-1, 3)
        # uint8 as is; floats are [0, 1] (open3d's convention; interpolation can overshoot slightly)
        col = c.astype(np.float64) if c.dtype == np.uint8 else np.clip(c.astype(np.float64), 0.0, 1.0) * 255.0
    T_cw = np.linalg.inv(np.asarray(T_world_cam, np.float64))
    Xc = pts @ T_cw[:3, :3].T + T_cw[:3, 3]
    keep = np.all(np.isfinite(Xc), axis=1) & (Xc[:, 2] > 1e-3)
    if normals is not None:
        n = np.asarray(normals, np.float64).reshape(-1, 3) @ T_cw[:3, :3].T
        view = -Xc / (np.linalg.norm(Xc, axis=1, keepdims=True) + 1e-12)   # towards the camera
        facing = np.sum(n * view, axis=1)
        keep &= facing > 0
        if shade:
            col = col * (0.35 + 0.65 * np.clip(facing, 0, 1))[:, None]
    Xc, col = Xc[keep], col[keep]
    u = np.floor(K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2] + 0.5).astype(np.int64)
    v = np.floor(K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2] + 0.5).astype(np.int64)
    z = Xc[:, 2]
    s = max(1, int(splat))
    off = np.arange(s) - (s - 1) // 2
    du, dv = np.meshgrid(off, off)
    U = (u[:, None] + du.reshape(1, -1)).reshape(-1)
    V = (v[:, None] + dv.reshape(1, -1)).reshape(-1)
    Z = np.repeat(z, s * s)
    C = np.repeat(col, s * s, axis=0)
    inside = (U >= 0) & (U < width) & (V >= 0) & (V < height)
    U, V, Z, C = U[inside], V[inside], Z[inside], C[inside]
    if len(U) == 0:
        return img
    pix = V * width + U
    order = np.lexsort((Z, pix))            # by pixel, then nearest first
    pix_sorted = pix[order]
    first = np.concatenate([[True], pix_sorted[1:] != pix_sorted[:-1]])
    win = order[first]
    img.reshape(-1, 3)[pix[win]] = np.clip(np.rint(C[win]), 0, 255).astype(np.uint8)
    return img


def auto_splat(points: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, spacing: float, max_splat: int = 7) -> int:
    """Splat size (pixels) that closes the gaps between points ``spacing`` metres apart at the median depth."""
    T_cw = np.linalg.inv(T_world_cam)
    z = (np.asarray(points, np.float64) @ T_cw[:3, :3].T + T_cw[:3, 3])[:, 2]
    z = z[z > 1e-3]
    if z.size == 0 or spacing <= 0:
        return 1
    return int(np.clip(np.ceil(K[0, 0] * spacing / np.median(z) * 1.5), 1, max_splat))


def render_mesh_picture(mesh, camera_poses: Optional[Sequence[np.ndarray]] = None, width: int = 800,
                        height: int = 600, splat: Optional[int] = None,
                        view: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Picture of an open3d ``TriangleMesh`` (or ``PointCloud``) from :func:`default_view` (or ``view``).

    ``splat=None`` picks the splat size from the mesh's mean edge length (or the cloud's point spacing).
    """
    if hasattr(mesh, "vertices"):
        pts = np.asarray(mesh.vertices)
        cols = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None
        if not mesh.has_vertex_normals() and len(mesh.triangles):
            mesh.compute_vertex_normals()
        nrm = np.asarray(mesh.vertex_normals) if mesh.has_vertex_normals() else None
    else:
        pts = np.asarray(mesh.points)
        cols = np.asarray(mesh.colors) if mesh.has_colors() else None
        nrm = np.asarray(mesh.normals) if mesh.has_normals() else None
    if len(pts) == 0:
        img = np.full((height, width, 3), 255, np.uint8)
        return img
    K, T = view if view is not None else default_view(pts, camera_poses, width, height)
    if splat is None:
        if hasattr(mesh, "triangles") and len(mesh.triangles):
            tri = np.asarray(mesh.triangles)[:20000]
            spacing = float(np.mean(np.linalg.norm(pts[tri[:, 0]] - pts[tri[:, 1]], axis=1)))
        else:
            nn = np.asarray(mesh.compute_nearest_neighbor_distance()) if hasattr(mesh, "compute_nearest_neighbor_distance") else np.zeros(0)
            spacing = float(np.median(nn)) if nn.size else 0.0
        splat = auto_splat(pts, K, T, spacing)
    return render_points(pts, cols, K, T, width, height, normals=nrm, splat=splat)


def caption(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``img`` with ``text`` in its top-left corner (black on white outline)."""
    import cv2
    out = np.ascontiguousarray(img).copy()
    scale = max(0.5, img.shape[1] / 900.0)
    org = (8, int(24 * scale))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 4, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
