"""Differentiable plane / per-pixel-depth warping for learned multi-view stereo models.

Conventions (those of MVSNet, PatchmatchNet and IterMVS, which share them):

* a *projection matrix* ``P`` is a 4x4 matrix ``[[K @ E[:3, :4]], [0, 0, 0, 1]]`` with ``E`` the
  **world-to-camera** extrinsics and ``K`` the intrinsics *of the feature map it is used with*;
* pixel coordinates are integer pixel centres ``(x, y)`` = (column, row), the pixel-corner convention
  used when those models scale ``K`` (a pixel ``u`` at full resolution maps to ``u * s``);
* a hypothesis is a depth along the reference optical axis, one per (hypothesis, pixel).

The functions are pure and work on any device and batch size. Warping a ``(B, C, Hs, Ws)`` source map
for ``D`` hypotheses at ``(H, W)`` reference pixels gives ``(B, C, D, H, W)``. The reference pixel grid
may differ from the source map's size (IterMVS reads level-1 and level-3 source maps from a level-2
grid): pass ``grid_scale`` to map a grid pixel ``(x, y)`` to ``(x * sx, y * sy)`` before projection.

:func:`warp_correlation` is the fast "warp + correlate" step of a cost volume (PatchmatchNet, DeepVideoMVS):
it never holds the whole warped ``(B, C, D, H, W)`` volume.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def relative_projection(src_proj: torch.Tensor, ref_proj: torch.Tensor) -> torch.Tensor:
    """``src_proj @ inverse(ref_proj)``: maps reference ``(x*z, y*z, z, 1)`` to source homogeneous pixels.

    Args:
        src_proj: ``(B, 4, 4)`` source projection matrices.
        ref_proj: ``(B, 4, 4)`` reference projection matrices.
    Returns:
        ``(B, 4, 4)``; rows 0-2 hold ``[R | t]`` of the pixel-to-pixel map.
    """
    return torch.matmul(src_proj, torch.inverse(ref_proj))


@lru_cache(maxsize=64)
def _pixel_grid_cached(height: int, width: int, sx: float, sy: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(0, height, dtype=dtype, device=device),
                          torch.arange(0, width, dtype=dtype, device=device), indexing="ij")
    y = y.reshape(height * width)
    x = x.reshape(height * width)
    if sy != 1.0:
        y = y * sy
    if sx != 1.0:
        x = x * sx
    return torch.stack((x, y, torch.ones_like(x)))


def homogeneous_pixel_grid(height: int, width: int, grid_scale: Tuple[float, float] = (1.0, 1.0),
                           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates ``(3, H*W)``, row-major, ``(x * sx, y * sy, 1)``.

    Cached per (size, scale, device, dtype): treat the result as read-only. Under ``torch.compile`` the grid is
    built inside the graph (a constant there; dynamo would bypass the cache anyway, with a warning).
    """
    if torch.compiler.is_compiling():
        return _pixel_grid_cached.__wrapped__(int(height), int(width), float(grid_scale[0]), float(grid_scale[1]),
                                              str(torch.device(device)), dtype)
    return _pixel_grid_cached(int(height), int(width), float(grid_scale[0]), float(grid_scale[1]),
                              str(torch.device(device)), dtype)


def rotate_pixel_grid(rel_proj: torch.Tensor, height: int, width: int,
                      grid_scale: Tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """``R @ (x, y, 1)`` for every reference pixel, the depth-independent part of the projection.

    Args:
        rel_proj: ``(B, 4, 4)`` from :func:`relative_projection`.
    Returns:
        ``(B, 3, H*W)``.
    """
    xyz = homogeneous_pixel_grid(height, width, grid_scale, rel_proj.device, rel_proj.dtype)
    return torch.matmul(rel_proj[:, :3, :3], xyz.unsqueeze(0).expand(rel_proj.shape[0], 3, height * width))


def project_depth_hypotheses(rel_proj: torch.Tensor, depth_samples: torch.Tensor, source_size: Tuple[int, int],
                             *, grid_scale: Tuple[float, float] = (1.0, 1.0), min_z: float = 1e-3,
                             invalid_at: Optional[Tuple[float, float]] = None,
                             rot_xyz: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Source-map sampling grid for per-pixel depth hypotheses, normalised for ``align_corners=True``.

    Points whose source depth is ``<= min_z`` are parked at pixel ``invalid_at`` (default: the sample
    grid's ``(W, H)``, one past the last pixel, which reads zeros for a map of the grid's size), as
    PatchmatchNet (``min_z=1e-3``) and IterMVS (``min_z=1e-2``) do.

    Args:
        rel_proj: ``(B, 4, 4)`` from :func:`relative_projection`.
        depth_samples: ``(B, D, H, W)`` hypotheses at the reference grid (``(B, D, 1, 1)`` broadcasts
            one depth per plane over all pixels, the fronto-parallel plane sweep of MVSNet).
        source_size: ``(Hs, Ws)`` of the map that will be sampled.
        grid_scale: ``(sx, sy)``: grid pixel ``(x, y)`` is the source-level pixel ``(x*sx, y*sy)``.
        min_z: smallest valid source depth.
        invalid_at: pixel where invalid points are parked.
        rot_xyz: optional precomputed :func:`rotate_pixel_grid` (must match ``H, W, grid_scale``).
    Returns:
        ``(B, D*H, W, 2)`` grid in ``[-1, 1]`` (align_corners=True convention) for ``F.grid_sample``.
    """
    batch, num_depth, height, width = depth_samples.shape
    if height == 1 and width == 1:
        raise ValueError("pass depth_samples expanded to the reference grid (B, D, H, W)")
    hs, ws = source_size
    if rot_xyz is None:
        rot_xyz = rotate_pixel_grid(rel_proj, height, width, grid_scale)
    trans = rel_proj[:, :3, 3:4]
    # [B, 3, D, H*W]
    proj_xyz = rot_xyz.unsqueeze(2) * depth_samples.reshape(batch, 1, num_depth, height * width) \
        + trans.view(batch, 3, 1, 1)
    invalid = proj_xyz[:, 2:3] <= min_z
    px, py = (float(width), float(height)) if invalid_at is None else invalid_at
    # unconditional (no host sync on ``invalid.any()``, no graph break under torch.compile): where nothing is
    # invalid the values are unchanged
    park = torch.tensor([px, py, 1.0], dtype=proj_xyz.dtype, device=proj_xyz.device).view(1, 3, 1, 1)
    proj_xyz = torch.where(invalid, park, proj_xyz)
    proj_xy = proj_xyz[:, :2] / proj_xyz[:, 2:3]
    x_norm = proj_xy[:, 0] / ((ws - 1) / 2) - 1
    y_norm = proj_xy[:, 1] / ((hs - 1) / 2) - 1
    return torch.stack((x_norm, y_norm), dim=3).view(batch, num_depth * height, width, 2)


def sample_source(src_fea: torch.Tensor, grid: torch.Tensor, num_depth: int, height: int, width: int) -> torch.Tensor:
    """Bilinear reads of ``src_fea (B, C, Hs, Ws)`` at ``grid (B, D*H, W, 2)``, zeros outside.

    Returns:
        ``(B, C, D, H, W)``.
    """
    batch, channels = src_fea.shape[:2]
    out = F.grid_sample(src_fea, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(batch, channels, num_depth, height, width)


def differentiable_warping(src_fea: torch.Tensor, src_proj: torch.Tensor, ref_proj: torch.Tensor,
                           depth_samples: torch.Tensor, *, grid_scale: Tuple[float, float] = (1.0, 1.0),
                           min_z: float = 1e-3, invalid_at: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """Warp source features into the reference view for per-pixel depth hypotheses.

    Args:
        src_fea: ``(B, C, Hs, Ws)`` source features.
        src_proj, ref_proj: ``(B, 4, 4)`` projection matrices at the feature maps' resolutions.
        depth_samples: ``(B, D, H, W)`` depths at the reference grid (``H, W`` may differ from
            ``Hs, Ws``: see ``grid_scale``), or ``(B, D)`` fronto-parallel planes (expanded to ``Hs, Ws``).
    Returns:
        ``(B, C, D, H, W)`` warped features (zeros where the projection leaves the source map).
    """
    if depth_samples.dim() == 2:
        depth_samples = depth_samples[:, :, None, None].expand(-1, -1, src_fea.shape[2], src_fea.shape[3])
    _, num_depth, height, width = depth_samples.shape
    with torch.no_grad():
        grid = project_depth_hypotheses(relative_projection(src_proj, ref_proj), depth_samples,
                                        (src_fea.shape[2], src_fea.shape[3]), grid_scale=grid_scale,
                                        min_z=min_z, invalid_at=invalid_at)
    return sample_source(src_fea, grid, num_depth, height, width)


def group_correlation(warped: torch.Tensor, ref: torch.Tensor, groups: int) -> torch.Tensor:
    """Group-wise correlation: mean over the channels of each group.

    Args:
        warped: ``(B, C, D, H, W)`` warped source features.
        ref: ``(B, C, H, W)`` reference features.
    Returns:
        ``(B, G, D, H, W)``.
    """
    b, c, d, h, w = warped.shape
    return (warped.view(b, groups, c // groups, d, h, w) * ref.view(b, groups, c // groups, 1, h, w)).mean(2)


def stack_views(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, C, H, W)`` maps of several views concatenated along the batch in one channels_last copy, the input
    :func:`warp_correlation` reads fastest (under autograd or ``torch.compile``: a plain ``torch.cat``)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or maps[0].dim() != 4:
        return torch.cat(list(maps))
    first = maps[0]
    out = torch.empty((sum(m.shape[0] for m in maps),) + tuple(first.shape[1:]), dtype=first.dtype,
                      device=first.device, memory_format=torch.channels_last)
    return torch.cat(list(maps), out=out)


def warp_correlation(src_fea: torch.Tensor, ref_fea: torch.Tensor, grid: torch.Tensor, groups: int = 1,
                     planes_per_call: int = 1) -> torch.Tensor:
    """Group correlation of the reference with the source warped by ``grid``: the values of
    ``group_correlation(sample_source(src_fea, grid, ...), ref_fea, groups)`` without the warped volume.

    Bilinear reads, zeros outside, ``align_corners=True``. Several source views of one reference are best
    passed as one batch (``N`` = views x batch, ``ref_fea`` with batch 1 broadcast, or repeated; see
    :func:`stack_views`): on the CPU, ``grid_sample`` runs the items of a batch in parallel but one item on a
    single thread. Under ``torch.no_grad``/``inference_mode`` the planes are sampled ``planes_per_call`` at a
    time from a channels_last copy of the source (on a 2-vCPU AMD EPYC, torch 2.13, grid_sample read it
    ~1.2-2x faster, with the same values) and each chunk is multiplied and reduced in place while it is still
    in cache, into one preallocated volume. With autograd enabled (or under ``torch.compile``) the chunks are
    computed out of place (differentiable in both feature maps and the grid). Both paths run the same chunks and
    give the same values; against the unchunked computation they agree to float rounding (the channel sum's
    order can depend on the chunk's shape: ~1 ulp).

    Args:
        src_fea: ``(N, C, Hs, Ws)`` source features.
        ref_fea: ``(N, C, H, W)`` or ``(1, C, H, W)`` reference features (``C`` divisible by ``groups``).
        grid: ``(N, D, H, W, 2)`` sampling grid in ``[-1, 1]`` (a ``(N, D*H, W, 2)`` grid viewed as such).
        groups: channel groups ``G``; the correlation is the mean over the ``C / G`` channels of a group.
        planes_per_call: planes (hypotheses) sampled per ``grid_sample`` call.
    Returns:
        ``(N, G, D, H, W)``.
    """
    n, d, h, w = grid.shape[:4]
    c = ref_fea.shape[1]
    cg = c // groups
    ref = ref_fea.view(ref_fea.shape[0], groups, cg, 1, h, w)
    step = max(1, int(planes_per_call))
    chunks = [(d0, min(d, d0 + step)) for d0 in range(0, d, step)]

    def sample(source, d0, d1):
        g = grid[:, d0:d1].reshape(n, (d1 - d0) * h, w, 2)
        out = F.grid_sample(source, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.view(n, groups, cg, d1 - d0, h, w)

    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.cat([torch.sum(sample(src_fea, d0, d1) * ref, dim=2) for d0, d1 in chunks], dim=2) / cg
    source = src_fea.contiguous(memory_format=torch.channels_last)
    volume = ref_fea.new_empty((n, groups, d, h, w))
    for d0, d1 in chunks:
        torch.sum(sample(source, d0, d1).mul_(ref), dim=2, out=volume[:, :, d0:d1])
    return volume.div_(cg)
