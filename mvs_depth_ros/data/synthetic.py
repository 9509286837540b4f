"""Synthetic indoor scenes with exact ground truth, for tests and benchmarks.

A room (floor, ceiling, four walls) with a few boxes, ray-cast analytically and vectorised in numpy.
Every surface carries its own procedural texture (multi-octave value noise + random coloured blobs),
a fixed function of the *surface* coordinates, with view-independent (Lambertian, point-light) shading,
so a surface point has the same colour from every view: photometric consistency holds by construction.

What is exact:

* depth: metres along the optical axis (``float32``), ray-cast through the pixel centres;
* poses: camera-to-world, OpenCV optical axes (x right, y down, z forward);
* intrinsics: pinhole ``K`` with the principal point at the image centre (pixel-centre convention:
  pixel ``(u, v)`` has its centre at integer coordinates).

Colour is rendered with ``supersample x supersample`` rays per pixel (box-filtered), which gives the
slight blur a real lens has and keeps window matching (ZNCC, SGBM) well behaved. Optional Gaussian
sensor noise is deterministic from the seed.

The world frame is z-up (ROS REP 103 style): the floor is ``z = 0``.

Typical use::

    seq = render_sequence(60, 320, 256, seed=0)          # posed video, Frame.depth_gt set
    pairs = render_stereo_sequence(60, 320, 256, 0.1)    # rectified stereo, disparity_gt set
    write_scene(seq, "/tmp/synthetic-000")               # DeepVideoMVS scene layout
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..core.frame import Frame, StereoFrame

__all__ = [
    "Box",
    "Room",
    "SyntheticScene",
    "SyntheticSequence",
    "make_scene",
    "make_intrinsics",
    "camera_trajectory",
    "look_at",
    "render_view",
    "render_sequence",
    "render_stereo_sequence",
    "write_scene",
    "disparity_from_depth",
    "depth_to_mm",
]

_EPS_T = 1e-6      # minimum ray parameter for a hit (metres along the optical axis)
_TINY = 1e-12      # replaces exact zeros in ray directions before dividing
_REMAP_COLS = 1024  # width of the folded maps handed to cv2.remap


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Room:
    """Axis-aligned room seen from the inside: ``lo``/``hi`` corners (metres, world frame, z up)."""

    lo: Tuple[float, float, float] = (-2.5, -2.0, 0.0)
    hi: Tuple[float, float, float] = (2.5, 2.0, 2.6)


@dataclass(frozen=True)
class Box:
    """A box: ``center`` (world, metres), ``half`` extents along its own axes, ``yaw`` about world z (rad).

    ``velocity`` (metres per frame, world) moves the box: its centre at frame ``t`` is
    ``center + t * velocity``. ``(0, 0, 0)`` for a static box.
    """

    center: Tuple[float, float, float]
    half: Tuple[float, float, float]
    yaw: float = 0.0
    velocity: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def rotation(self) -> np.ndarray:
        """``R_world_box`` (3, 3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def center_at(self, t: float) -> np.ndarray:
        return np.asarray(self.center, dtype=np.float64) + float(t) * np.asarray(self.velocity, dtype=np.float64)


@dataclass
class SyntheticScene:
    """Geometry + textures. ``textures[k]`` is the RGB float32 tile of face ``k``.

    Faces are numbered room first (6 faces: axis ``a`` low side ``2a``, high side ``2a + 1``), then 6 per
    box in the same order. A tile's column runs along the face's first in-plane axis and its row along the
    second (see :func:`_face_axes`), one texel per ``texel_size`` metres, starting at the face's low corner.
    """

    room: Room
    boxes: List[Box]
    textures: List[np.ndarray]
    texel_size: float
    light: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 2.4]))
    seed: int = 0

    @property
    def n_faces(self) -> int:
        return 6 * (1 + len(self.boxes))


@dataclass
class SyntheticSequence:
    """A rendered posed video. ``poses``: (N, 4, 4) camera-to-world; ``K``: (3, 3)."""

    frames: List[Frame]
    K: np.ndarray
    poses: np.ndarray
    scene: SyntheticScene

    def __len__(self) -> int:
        return len(self.frames)


def _face_axes(axis: int) -> Tuple[int, int]:
    """The two in-plane axes ``(column axis, row axis)`` of a face whose normal is along ``axis``."""
    return {0: (1, 2), 1: (0, 2), 2: (0, 1)}[axis]


# --------------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, h: int, w: int, cells: Sequence[int]) -> np.ndarray:
    """Multi-octave value noise ``(h, w)`` float32 in about [0, 1]: random lattices, bicubic upsampling.

    ``cells``: lattice spacing of each octave in texels; amplitude grows with sqrt(spacing).
    """
    out = np.zeros((h, w), np.float32)
    total = 0.0
    for c in cells:
        gh, gw = h // c + 3, w // c + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (gw * c, gh * c), interpolation=cv2.INTER_CUBIC)
        oy, ox = rng.integers(0, c, size=2)
        amp = float(np.sqrt(c))
        out += amp * up[oy:oy + h, ox:ox + w]
        total += amp
    return out / total


def _texture_tile(rng: np.random.Generator, h: int, w: int, texel_size: float) -> np.ndarray:
    """One face texture ``(h, w, 3)`` float32 RGB in [0, 255]: coloured noise plus random blobs."""
    # Lattice spacings from ~50 cm down to ~2.5 cm whatever the texel size.
    cells = sorted({max(2, int(round(m / texel_size))) for m in (0.5, 0.25, 0.12, 0.06, 0.035, 0.025)},
                   reverse=True)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    mix = rng.normal(0.0, 1.0, size=(3, 3)).astype(np.float32)
    mix = 0.5 * mix + np.eye(3, dtype=np.float32) * 0.2 + 1.0  # mostly luminance, some colour
    noise = np.stack([_value_noise(rng, h, w, cells) for _ in range(3)], axis=-1) - 0.5
    tile = base + 110.0 * noise @ mix.T / 3.0 * 1.8
    # Random blobs: discs, ellipses and short strokes of random colour, sizes 1-8 cm.
    area_m2 = h * w * texel_size ** 2
    n_blobs = int(rng.poisson(60.0 * area_m2))
    px = 1.0 / texel_size
    for _ in range(n_blobs):
        colour = tuple(float(c) for c in rng.uniform(10, 245, size=3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(tile, (cx, cy), max(1, int(rng.uniform(0.01, 0.05) * px)), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            axes = (max(1, int(rng.uniform(0.01, 0.08) * px)), max(1, int(rng.uniform(0.01, 0.04) * px)))
            cv2.ellipse(tile, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            d = rng.uniform(0.02, 0.1) * px
            a = rng.uniform(0, np.pi)
            p2 = (int(cx + d * np.cos(a)), int(cy + d * np.sin(a)))
            cv2.line(tile, (cx, cy), p2, colour, max(1, int(0.008 * px)), cv2.LINE_AA)
    return np.clip(tile, 0.0, 255.0).astype(np.float32)


def _face_extents(lo: np.ndarray, hi: np.ndarray) -> List[Tuple[float, float]]:
    """(column extent, row extent) in metres of the 6 faces of an axis-aligned box ``lo``..``hi``."""
    ext = hi - lo
    out = []
    for a in range(3):
        b, c = _face_axes(a)
        out += [(ext[b], ext[c])] * 2
    return out


def make_scene(seed: int = 0, texel_size: float = 0.008, moving_object: bool = False,
               room: Room = Room()) -> SyntheticScene:
    """The default room with six boxes, positions jittered and textures drawn from ``seed``.

    ``moving_object`` adds a floating box that slides sideways (+y, 1.5 cm per frame) through the view
    in front of the far wall: depth and disparity stay exact, only the static-scene assumption breaks.
    """
    if texel_size <= 0:
        raise ValueError(f"texel_size must be > 0, got {texel_size}")
    rng = np.random.default_rng(seed)
    j = lambda s: rng.uniform(-s, s)  # noqa: E731  jitter
    boxes = [
        Box((1.3 + j(0.1), -1.0 + j(0.1), 0.35), (0.35, 0.3, 0.35), 0.3 + j(0.2)),
        Box((1.3 + j(0.05), -1.0 + j(0.05), 0.85), (0.15, 0.15, 0.15), j(0.5)),
        Box((1.9 + j(0.1), 0.7 + j(0.1), 0.5), (0.3, 0.4, 0.5), -0.2 + j(0.2)),
        Box((0.9 + j(0.1), 1.1 + j(0.1), 0.2), (0.2, 0.25, 0.2), 0.6 + j(0.2)),
        Box((room.hi[0] - 0.04, -0.3 + j(0.2), 1.6 + j(0.1)), (0.03, 0.45, 0.3), 0.0),
        Box((0.4 + j(0.1), -1.75, 1.3), (0.15, 0.15, 1.3), 0.0),
    ]
    if moving_object:
        boxes.append(Box((1.4, -0.5, 1.5), (0.2, 0.2, 0.2), 0.4, velocity=(0.0, 0.015, 0.0)))
    extents = _face_extents(np.asarray(room.lo), np.asarray(room.hi))
    for b in boxes:
        h = np.asarray(b.half)
        extents += _face_extents(-h, h)
    textures = []
    for ec, er in extents:
        w = int(np.ceil(ec / texel_size)) + 2
        h = int(np.ceil(er / texel_size)) + 2
        textures.append(_texture_tile(rng, h, w, texel_size))
    light = np.array([0.0, 0.0, room.hi[2] - 0.2])
    scene = SyntheticScene(room=room, boxes=boxes, textures=textures, texel_size=texel_size, light=light, seed=seed)
    _bake_shading(scene)
    return scene


def _texel_points(shape: Tuple[int, int], face: int, lo: np.ndarray, hi: np.ndarray, texel: float
                  ) -> List[np.ndarray]:
    """Local 3-D positions (3 arrays ``shape``) of the texel centres of local face ``face`` of box lo..hi."""
    axis, side = divmod(face, 2)
    b, c = _face_axes(axis)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    P = [None, None, None]
    P[axis] = np.full(shape, hi[axis] if side else lo[axis])
    P[b] = lo[b] + (cols - 1.0) * texel
    P[c] = lo[c] + (rows - 1.0) * texel
    return P


def _bake_shading(scene: SyntheticScene) -> None:
    """Multiply every texture by its view-independent shading (lighting is a property of the surface)."""
    normals = _face_normals(scene)
    lo, hi = np.asarray(scene.room.lo), np.asarray(scene.room.hi)
    for f, tex in enumerate(scene.textures):
        obj, local = divmod(f, 6)
        if obj == 0:
            P = _texel_points(tex.shape[:2], local, lo, hi, scene.texel_size)
        else:
            box = scene.boxes[obj - 1]
            h = np.asarray(box.half)
            Pl = _texel_points(tex.shape[:2], local, -h, h, scene.texel_size)
            R, ctr = box.rotation(), box.center_at(0.0)
            P = [R[k, 0] * Pl[0] + R[k, 1] * Pl[1] + R[k, 2] * Pl[2] + ctr[k] for k in range(3)]
        n = np.broadcast_to(normals[f], tex.shape[:2] + (3,))
        scene.textures[f] = np.clip(tex * _shade(scene, P, n)[..., None], 0, 255).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Ray casting (rays as three (H, W) component planes, so boxes can be culled to image blocks)
# --------------------------------------------------------------------------------------------------
def _safe(d: np.ndarray) -> np.ndarray:
    """``d`` with exact zeros nudged to a tiny positive value (divisions then give +-inf, never NaN)."""
    return np.where(np.abs(d) < _TINY, d.dtype.type(_TINY), d)


def _arg_extreme3(a: Sequence[np.ndarray], largest: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Elementwise min (or max) of three arrays and the index (0, 1, 2) of the winner."""
    if largest:
        m12 = np.maximum(a[1], a[2])
        best = np.maximum(a[0], m12)
        idx = np.where(a[0] >= m12, 0, np.where(a[1] >= a[2], 1, 2))
    else:
        m12 = np.minimum(a[1], a[2])
        best = np.minimum(a[0], m12)
        idx = np.where(a[0] <= m12, 0, np.where(a[1] <= a[2], 1, 2))
    return best, idx


def _ray_dirs(K: np.ndarray, R: np.ndarray, width: int, height: int, supersample: int,
              dtype=np.float64) -> np.ndarray:
    """World ray directions ``(3, H*s, W*s)`` with unit optical-axis component (so ``t`` = depth).

    Sub-pixel sample ``j`` of a row sits at ``(j + 0.5) / s - 0.5`` pixels: the centres of an ``s x s``
    grid inside each pixel (``s = 1`` gives the pixel centres themselves).
    """
    s = supersample
    x = (((np.arange(width * s) + 0.5) / s - 0.5 - K[0, 2]) / K[0, 0]).astype(dtype)
    y = (((np.arange(height * s) + 0.5) / s - 0.5 - K[1, 2]) / K[1, 1]).astype(dtype)
    Rd = R.astype(dtype)
    return np.stack([Rd[k, 0] * x[None, :] + Rd[k, 1] * y[:, None] + Rd[k, 2] for k in range(3)])


def _intersect_room(o: np.ndarray, D: np.ndarray, room: Room) -> Tuple[np.ndarray, np.ndarray]:
    """Exit of rays ``o + t D`` from inside the room: ``t`` (H, W) and room face (H, W) int."""
    lo, hi = np.asarray(room.lo), np.asarray(room.hi)
    ts, pos = [], []
    for k in range(3):
        dk = _safe(D[k])
        p = dk > 0
        ts.append(np.where(p, (hi[k] - o[k]) / dk, (lo[k] - o[k]) / dk))
        pos.append(p)
    t, axis = _arg_extreme3(ts, largest=False)
    side = np.choose(axis, pos).astype(np.int64)
    return t.astype(D.dtype, copy=False), 2 * axis + side


def _intersect_box(o: np.ndarray, D: np.ndarray, box: Box, time: float
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entry of rays ``o + t D`` (``D`` (3, h, w)) into a box, slab method.

    Returns ``t`` (h, w) (``inf`` where missed), local face (h, w) int, local origin (3,), local
    directions (3, h, w).
    """
    R = box.rotation()
    ol = R.T @ (o - box.center_at(time))
    Dl = np.stack([_safe(R[0, k] * D[0] + R[1, k] * D[1] + R[2, k] * D[2]) for k in range(3)])
    h = np.asarray(box.half)
    tmin, tmax = [], []
    for k in range(3):
        inv = 1.0 / Dl[k]
        t1 = (-h[k] - ol[k]) * inv
        t2 = (h[k] - ol[k]) * inv
        tmin.append(np.minimum(t1, t2))
        tmax.append(np.maximum(t1, t2))
    t_near, axis = _arg_extreme3(tmin, largest=True)
    t_far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
    hit = (t_near <= t_far) & (t_near > _EPS_T)
    t = np.where(hit, t_near, np.inf).astype(D.dtype, copy=False)
    side = (np.choose(axis, Dl) < 0).astype(np.int64)  # entering through the +half face
    return t, 2 * axis + side, ol, Dl


def _face_uv(P: Sequence[np.ndarray], axis: np.ndarray, lo: np.ndarray, texel: float
             ) -> Tuple[np.ndarray, np.ndarray]:
    """Texture coordinates (texels) of points ``P`` (3 arrays) on faces with normal ``axis``.

    Column along the face's first in-plane axis, row along the second (:func:`_face_axes`), both from the
    low corner ``lo``, plus the tile's one-texel margin.
    """
    q = [(P[k] - lo[k]) / texel + 1.0 for k in range(3)]
    col = np.where(axis == 0, q[1], q[0])
    row = np.where(axis == 2, q[1], q[2])
    return col, row


def _box_block(box: Box, time: float, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int,
               supersample: int) -> Optional[Tuple[slice, slice]]:
    """Ray-grid block (rows, cols) that can see ``box``; the full grid when a corner is behind the camera,
    ``None`` when the box projects outside the image."""
    s = supersample
    h = np.asarray(box.half)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * h
    pw = corners @ box.rotation().T + box.center_at(time)
    T_cw = np.linalg.inv(T_world_cam)
    pc = pw @ T_cw[:3, :3].T + T_cw[:3, 3]
    full = (slice(0, height * s), slice(0, width * s))
    if np.any(pc[:, 2] < 1e-3):
        return full
    u = K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]
    v = K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]
    # pixel coordinate x -> sub-sample index (x + 0.5) s - 0.5; two samples of margin
    c0, c1 = int(np.floor((u.min() + 0.5) * s - 0.5)) - 2, int(np.ceil((u.max() + 0.5) * s - 0.5)) + 3
    r0, r1 = int(np.floor((v.min() + 0.5) * s - 0.5)) - 2, int(np.ceil((v.max() + 0.5) * s - 0.5)) + 3
    c0, c1 = max(c0, 0), min(c1, width * s)
    r0, r1 = max(r0, 0), min(r1, height * s)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _face_normals(scene: SyntheticScene) -> np.ndarray:
    """World normals (n_faces, 3): room faces point inwards, box faces outwards."""
    room = np.zeros((6, 3))
    for a in range(3):
        room[2 * a, a] = 1.0
        room[2 * a + 1, a] = -1.0
    return np.concatenate([room] + [(-room) @ b.rotation().T for b in scene.boxes])


def _cast(scene: SyntheticScene, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int,
          supersample: int, time: float, dtype=np.float64, with_uv: bool = True):
    """Nearest hit of every ray of the ``(H*s, W*s)`` grid.

    Returns ``t`` (depth, H*s x W*s), global face index, texture ``(col, row)`` (None when not
    ``with_uv``) and the ray directions ``(3, H*s, W*s)``.
    """
    o = T_world_cam[:3, 3]
    D = _ray_dirs(K, T_world_cam[:3, :3], width, height, supersample, dtype)
    t, face = _intersect_room(o, D, scene.room)
    uv = None
    if with_uv:
        P = [o[k] + t * D[k] for k in range(3)]
        uv = _face_uv(P, face // 2, np.asarray(scene.room.lo), scene.texel_size)
    for k, box in enumerate(scene.boxes):
        blk = _box_block(box, time, K, T_world_cam, width, height, supersample)
        if blk is None:
            continue
        tb, fb, ol, Dl = _intersect_box(o, D[(slice(None),) + blk], box, time)
        closer = tb < t[blk]
        if not np.any(closer):
            continue
        t[blk] = np.where(closer, tb, t[blk])
        face[blk] = np.where(closer, 6 * (k + 1) + fb, face[blk])
        if with_uv:
            tc = tb[closer]
            Pl = [ol[j] + tc * Dl[j][closer] for j in range(3)]
            col, row = _face_uv(Pl, fb[closer] // 2, -np.asarray(box.half), scene.texel_size)
            uv[0][blk][closer] = col
            uv[1][blk][closer] = row
    return t, face, uv, D


def _shade(scene: SyntheticScene, P: Sequence[np.ndarray], normals: np.ndarray) -> np.ndarray:
    """Shading factor (H, W): ambient + Lambertian point light with soft falloff (view independent).

    ``P``: world points (3 arrays (H, W)); ``normals``: (H, W, 3).
    """
    L = [scene.light[k] - P[k] for k in range(3)]
    dist = np.sqrt(L[0] ** 2 + L[1] ** 2 + L[2] ** 2)
    cos = (normals[..., 0] * L[0] + normals[..., 1] * L[1] + normals[..., 2] * L[2]) / np.maximum(dist, 1e-9)
    return 0.5 + 0.6 * np.clip(cos, 0.0, 1.0) / (1.0 + 0.05 * dist ** 2)


def _sample_textures(scene: SyntheticScene, face: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Bilinear texture colours ``face.shape + (3,)`` float32; one ``cv2.remap`` per visible face."""
    flat = face.ravel()
    uv = np.stack([col.ravel(), row.ravel()], axis=1).astype(np.float32)
    out = np.empty((flat.size, 3), np.float32)
    order = np.argsort(flat, kind="stable")
    faces, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    for f, a, b in zip(faces, starts, ends):
        idx = order[a:b]
        n = len(idx)
        rows = -(-n // _REMAP_COLS)  # cv2.remap wants maps under 32767 on each side: fold into rows
        maps = np.zeros((rows * _REMAP_COLS, 2), np.float32)
        maps[:n] = uv[idx]
        col_f = cv2.remap(scene.textures[f], maps.reshape(rows, _REMAP_COLS, 2), None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
        out[idx] = col_f.reshape(-1, 3)[:n]
    return out.reshape(face.shape + (3,))


def render_view(scene: SyntheticScene, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int,
                time: float = 0.0, supersample: int = 2, noise_sigma: float = 0.0,
                rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Render one view.

    Args:
        K: (3, 3) intrinsics; T_world_cam: (4, 4) camera-to-world (OpenCV axes).
        time: frame index for moving objects.
        supersample: rays per pixel per axis for colour (box filter); depth always uses pixel centres.
        noise_sigma: std of additive Gaussian noise (grey levels); needs ``rng`` when > 0.

    Returns:
        image (H, W, 3) uint8 RGB; depth (H, W) float32 metres along the optical axis, exact (ray-cast
        in float64 through the pixel centres).
    """
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T_world_cam, dtype=np.float64)
    if K.shape != (3, 3) or T.shape != (4, 4):
        raise ValueError(f"K must be 3x3 and T_world_cam 4x4, got {K.shape}, {T.shape}")
    if width < 1 or height < 1 or supersample < 1:
        raise ValueError(f"invalid size {width}x{height} or supersample {supersample}")
    o = T[:3, 3]
    lo, hi = np.asarray(scene.room.lo), np.asarray(scene.room.hi)
    if np.any(o <= lo) or np.any(o >= hi):
        raise ValueError(f"camera centre {o.tolist()} is outside the room {lo.tolist()}..{hi.tolist()}")

    depth, _, _, _ = _cast(scene, K, T, width, height, 1, time, np.float64, with_uv=False)
    depth = depth.astype(np.float32)

    s = supersample
    _, face, (col, row), _ = _cast(scene, K, T, width, height, s, time, np.float32)
    colour = _sample_textures(scene, face, col, row)
    # box filter over each pixel's s x s samples (INTER_AREA with an integer factor is exactly that)
    img = cv2.resize(colour, (width, height), interpolation=cv2.INTER_AREA) if s > 1 else colour
    if noise_sigma > 0:
        if rng is None:
            raise ValueError("noise_sigma > 0 needs an rng (deterministic noise)")
        img = img + rng.normal(0.0, noise_sigma, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), depth

# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------
def make_intrinsics(width: int, height: int, hfov_deg: float = 64.0) -> np.ndarray:
    """Square-pixel pinhole ``K`` (3, 3) with the principal point at the image centre."""
    if not (1.0 < hfov_deg < 170.0):
        raise ValueError(f"hfov_deg must be in (1, 170), got {hfov_deg}")
    f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(position: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world (4, 4) at ``position`` looking at ``target``, OpenCV axes, no roll w.r.t. ``up``."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    nx = np.linalg.norm(x)
    if nx < 1e-9:
        raise ValueError("viewing direction is parallel to 'up'")
    x /= nx
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, position
    return T


def camera_trajectory(n_frames: int, step: float = 0.035, room: Room = Room(), phase: float = 0.0
                      ) -> np.ndarray:
    """Smooth camera-to-world poses (N, 4, 4): constant speed ``step`` metres per frame.

    The centre follows a closed Lissajous curve (forward/backward and sideways motion, gentle height
    change) in the back half of the room; the camera looks at a point drifting over the far wall, so the
    rotation is gentle (about 0.3-0.8 degrees per frame). With the default step the DeepVideoMVS pose
    distance between consecutive frames is ~0.035-0.045 (a keyframe every 2-3 frames).
    """
    if n_frames < 1 or step <= 0:
        raise ValueError(f"need n_frames >= 1 and step > 0, got {n_frames}, {step}")
    lo, hi = np.asarray(room.lo), np.asarray(room.hi)
    c = np.array([lo[0] + 0.38 * (hi[0] - lo[0]), 0.5 * (lo[1] + hi[1]), 1.3])
    s = np.linspace(0.0, 2.0 * np.pi, 20001) + phase
    path = c + np.stack([0.6 * np.sin(s), 0.55 * np.sin(2.0 * s + 0.7), 0.12 * np.sin(3.0 * s)], axis=1)
    arclen = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    want = np.mod(np.arange(n_frames) * step, arclen[-1])
    sq = np.interp(want, arclen, s)
    pos = c + np.stack([0.6 * np.sin(sq), 0.55 * np.sin(2.0 * sq + 0.7), 0.12 * np.sin(3.0 * sq)], axis=1)
    target = np.stack([np.full_like(sq, hi[0]), 0.8 * np.sin(sq + 1.3) + 0.5 * (lo[1] + hi[1]),
                       0.9 + 0.25 * np.sin(2.0 * sq)], axis=1)
    return np.stack([look_at(p, q) for p, q in zip(pos, target)])


# --------------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------------
def _frame_rng(seed: int, index: int, camera: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, camera, 0x5EED])


def render_sequence(n_frames: int = 60, width: int = 320, height: int = 256, seed: int = 0,
                    step: float = 0.035, hfov_deg: float = 64.0, supersample: int = 2,
                    noise_sigma: float = 1.0, fps: float = 10.0, start_stamp: int = 1_000_000_000,
                    moving_object: bool = False, scene: Optional[SyntheticScene] = None) -> SyntheticSequence:
    """A posed monocular video with exact depth.

    Frames are named ``"00000"``, ``"00001"``, ..., stamped ``start_stamp + i * 1e9 / fps`` ns,
    ``frame_id="camera"``; ``Frame.depth_gt`` is the exact depth (float32 metres).
    """
    scene = scene if scene is not None else make_scene(seed, moving_object=moving_object)
    K = make_intrinsics(width, height, hfov_deg)
    poses = camera_trajectory(n_frames, step, scene.room)
    frames = []
    for i, T in enumerate(poses):
        img, depth = render_view(scene, K, T, width, height, time=i, supersample=supersample,
                                 noise_sigma=noise_sigma, rng=_frame_rng(seed, i, 0))
        frames.append(Frame(image=img, K=K.copy(), T_world_cam=T.copy(), stamp=_stamp(start_stamp, i, fps),
                            frame_id="camera", name=f"{i:05d}", depth_gt=depth))
    return SyntheticSequence(frames=frames, K=K, poses=poses, scene=scene)


def _stamp(start: int, i: int, fps: float) -> int:
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return int(start + round(i * 1e9 / fps))


def disparity_from_depth(depth: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """``fx * baseline / depth`` (float32), NaN where depth is not finite and positive."""
    depth = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    out = np.full(depth.shape, np.nan, np.float32)
    out[ok] = np.float32(fx * baseline) / depth[ok]
    return out


def render_stereo_sequence(n_frames: int = 60, width: int = 320, height: int = 256, baseline: float = 0.1,
                           seed: int = 0, step: float = 0.035, hfov_deg: float = 64.0, supersample: int = 2,
                           noise_sigma: float = 1.0, fps: float = 10.0, start_stamp: int = 1_000_000_000,
                           moving_object: bool = False, scene: Optional[SyntheticScene] = None
                           ) -> List[StereoFrame]:
    """A rectified stereo video: right camera = left camera shifted by ``+baseline`` along its x axis.

    ``disparity_gt`` is the exact left disparity ``fx * baseline / depth`` (float32, NaN where invalid);
    a left pixel ``(u, v)`` shows the same surface point as the right pixel ``(u - d, v)`` when visible
    in both. ``T_world_cam`` is the left camera's pose.
    """
    if not (np.isfinite(baseline) and baseline > 0):
        raise ValueError(f"baseline must be > 0, got {baseline}")
    scene = scene if scene is not None else make_scene(seed, moving_object=moving_object)
    K = make_intrinsics(width, height, hfov_deg)
    poses = camera_trajectory(n_frames, step, scene.room)
    T_left_right = np.eye(4)
    T_left_right[0, 3] = baseline
    out = []
    for i, T in enumerate(poses):
        left, depth = render_view(scene, K, T, width, height, time=i, supersample=supersample,
                                  noise_sigma=noise_sigma, rng=_frame_rng(seed, i, 0))
        right, _ = render_view(scene, K, T @ T_left_right, width, height, time=i, supersample=supersample,
                               noise_sigma=noise_sigma, rng=_frame_rng(seed, i, 1))
        out.append(StereoFrame(left=left, right=right, K=K.copy(), baseline=float(baseline),
                               stamp=_stamp(start_stamp, i, fps), frame_id="camera", name=f"{i:05d}",
                               T_world_cam=T.copy(), disparity_gt=disparity_from_depth(depth, K[0, 0], baseline)))
    return out


# --------------------------------------------------------------------------------------------------
# Writer (DeepVideoMVS scene layout)
# --------------------------------------------------------------------------------------------------
def write_scene(seq: Union[SyntheticSequence, Sequence[Frame]], out_dir: Union[str, Path]) -> Path:
    """Write frames in the DeepVideoMVS scene layout and return ``out_dir``.

    ``images/<name>.png`` (RGB, written through cv2's BGR order), ``depth/<name>.png`` (uint16 millimetres,
    0 = none or beyond 65.535 m), ``poses.txt`` (one row-major 4x4 camera-to-world per image, 16 numbers
    per line, in frame order), ``K.txt`` (3x3 of the first frame; all frames must share it).
    """
    frames = list(seq.frames if isinstance(seq, SyntheticSequence) else seq)
    if not frames:
        raise ValueError("nothing to write: no frames")
    K = frames[0].K
    for f in frames:
        if not np.allclose(f.K, K):
            raise ValueError(f"frame {f.name!r} has a different K; the scene layout holds a single K.txt")
        if f.T_world_cam is None:
            raise ValueError(f"frame {f.name!r} has no pose; poses.txt needs one per image")
    names = [f.name or f"{i:05d}" for i, f in enumerate(frames)]
    if len(set(names)) != len(names):
        raise ValueError("frame names must be unique")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    for name, f in zip(names, frames):
        if not cv2.imwrite(str(out / "images" / f"{name}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out / 'images' / name}.png")
        if f.depth_gt is not None:
            cv2.imwrite(str(out / "depth" / f"{name}.png"), depth_to_mm(f.depth_gt))
    np.savetxt(out / "poses.txt", np.stack([f.T_world_cam.reshape(16) for f in frames]))
    np.savetxt(out / "K.txt", K)
    return out


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Metres (float, NaN invalid) to uint16 millimetres with 0 = none (also for depth > 65.535 m)."""
    mm = np.rint(np.asarray(depth, dtype=np.float64) * 1000.0)
    ok = np.isfinite(mm) & (mm > 0) & (mm <= 65535)
    return np.where(ok, mm, 0).astype(np.uint16)
