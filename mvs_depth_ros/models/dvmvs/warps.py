"""Geometry of DeepVideoMVS: plane-sweep cost volume, previous-depth reprojection, hidden-state warp.

All poses are 4x4 **camera-to-world** float32 tensors (as the official pipeline feeds them), ``K`` are
3x3 float32 intrinsics of the map being warped. Every function takes either one keyframe (poses ``(4, 4)``,
``K (3, 3)``, maps with batch size 1: the inference path) or a batch (poses ``(B, 4, 4)``, ``K (B, 3, 3)``,
maps ``(B, ...)``: training); a single keyframe goes through exactly the arithmetic it always did.
Every function reproduces the official arithmetic, quirks included (documented where they occur).

:func:`dot_product_cost_volume` has two paths: with autograd enabled (training) it is computed out of
place, so gradients reach the features; under ``torch.no_grad``/``inference_mode`` it writes into
preallocated volumes (faster on the CPU). Both give the same values.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import kornia
import torch
import torch.nn.functional as F

from ..warping import stack_views, warp_correlation


def _batched(x: torch.Tensor, matrix_dims: int = 2) -> torch.Tensor:
    """A matrix ``(r, c)`` as ``(1, r, c)``; a batch ``(B, r, c)`` unchanged."""
    return x.unsqueeze(0) if x.dim() == matrix_dims else x


def homogeneous_pixel_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Pixel centres ``(3, H*W)`` float32, row-major, rows ``(u, v, 1)``."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                          torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], dim=0)


def inverse_depth_plane_depths(min_depth: float, max_depth: float, n: int, device: torch.device) -> torch.Tensor:
    """``(n,)`` float32 depths, far to near, uniform in inverse depth (DVMVS ``depth_hypotheses``)."""
    step = (1.0 / min_depth - 1.0 / max_depth) / (n - 1)
    return torch.tensor([1.0 / (1.0 / max_depth + i * step) for i in range(n)], dtype=torch.float32, device=device)


def plane_sweep_grids(T_world_ref: torch.Tensor, T_world_src: torch.Tensor, K: torch.Tensor,
                      plane_depths: torch.Tensor, uv1: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grids of the source view for every fronto-parallel plane of the reference view.

    ``T_world_*`` (4, 4), ``K`` (3, 3), ``plane_depths`` (D,), ``uv1`` (3, H*W) -> ``(D, H, W, 2)`` for
    ``grid_sample(align_corners=True)``; with batched ``T_world_*`` (B, 4, 4) and ``K`` (B, 3, 3)
    -> ``(B, D, H, W, 2)``. DVMVS quirk kept: x is normalised as ``(u - W/2) / (W/2)`` (not
    ``(W-1)/2``), y likewise, which shifts the sample by up to half a pixel.
    """
    T_src_ref = torch.inverse(T_world_src) @ T_world_ref
    R, t = T_src_ref[..., :3, :3], T_src_ref[..., :3, 3:]
    K_t = K @ t                                                    # (..., 3, 1)
    base = (K @ R @ torch.inverse(K)) @ uv1                        # (..., 3, HW)
    warped = base.unsqueeze(-3) + K_t.unsqueeze(-3) / plane_depths.view(-1, 1, 1)   # (..., D, 3, HW)
    xy = warped[..., :2, :] / (warped[..., 2:3, :] + 1e-8)         # (..., D, 2, HW)
    half = torch.tensor([width / 2.0, height / 2.0], dtype=xy.dtype, device=xy.device).view(2, 1)
    xy = (xy - half) / half
    return xy.transpose(-1, -2).reshape(*xy.shape[:-3], -1, height, width, 2)


#: planes warped per ``grid_sample`` call by :func:`dot_product_cost_volume`: 2 costs ~nothing on one thread
#: against 1 (the chunk stays in the L3 cache) and halves the parallel regions, which a loaded 2-core machine
#: punishes (cost volume alone, 2 threads, load ~6: 0.65x the time of 1 plane per call; all 64: 0.29x, but
#: ~1.7x the time on an idle core, out of cache)
PLANES_PER_CALL = 2


def dot_product_cost_volume(reference: torch.Tensor, sources: Sequence[torch.Tensor],
                            grids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over sources of the channel-averaged dot product between reference and warped source features.

    ``reference`` (B, C, H, W); ``sources[i]`` (B, C, H, W); ``grids[i]`` (B, D, H, W, 2), or (D, H, W, 2)
    when B is 1 -> (B, D, H, W). Sampling: bilinear, zeros outside, ``align_corners=True``. All sources are
    warped together as one batch by :func:`~mvs_depth_ros.models.warping.warp_correlation` (one group),
    :data:`PLANES_PER_CALL` planes per call: the working set stays in cache, which on CPU is faster than
    sampling all planes in one call, and the sources are sampled in parallel.

    With autograd enabled the volume is built out of place (differentiable in the features and the grids);
    otherwise in place. The two paths perform the same floating-point operations.
    """
    batch = reference.shape[0]
    grids = [g if g.dim() == 5 else g.unsqueeze(0) for g in grids]
    n = len(sources)
    ref = reference if batch == 1 else reference.repeat(n, 1, 1, 1)
    volumes = warp_correlation(stack_views(sources), ref, torch.cat(grids), groups=1,
                               planes_per_call=PLANES_PER_CALL)
    volumes = volumes.view(n, batch, *volumes.shape[2:])
    if torch.is_grad_enabled():
        fused = volumes[0]
        for i in range(1, n):
            fused = fused + volumes[i]
        return fused / n
    fused = volumes[0]
    for i in range(1, n):
        fused += volumes[i]
    return fused.div_(n)


def grid_coverage(grids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fraction of (plane, source) samples that fall inside the source image: ``(D, H, W, 2)`` grids -> (H, W),
    ``(B, D, H, W, 2)`` -> (B, H, W)."""
    inside = [(g.abs() <= 1.0).all(dim=-1).float().mean(dim=-3) for g in grids]
    return torch.stack(inside).mean(dim=0)


def reproject_depth_farthest(previous_depth: torch.Tensor, T_world_prev: torch.Tensor, T_world_cur: torch.Tensor,
                             K_prev: torch.Tensor, K_out: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """Previous depth map splatted into the current view (DVMVS ``get_non_differentiable_rectangle_depth_estimation``).

    ``previous_depth`` (B, 1, H, W) with intrinsics ``K_prev``; projection with ``K_out`` into an ``out_hw``
    map -> (B, 1, h, w), 0 where nothing lands. Poses (4, 4) or (B, 4, 4), intrinsics (3, 3) or (B, 3, 3).
    Quirks kept: pixel = ``round`` (half to even) of the projection; the stored depth is ``relu(z)``; among
    points landing on one pixel the **largest** z wins (the official code sorts by z descending and keeps
    the first hit with ``np.unique``). Not differentiable in the pixel positions (rounding).
    """
    h, w = out_hw
    b = previous_depth.shape[0]
    T_cur_prev = torch.inverse(_batched(T_world_cur)) @ _batched(T_world_prev)          # (B, 4, 4)
    points = kornia.geometry.depth.depth_to_3d(previous_depth, _batched(K_prev)).permute(0, 2, 3, 1)
    points = kornia.geometry.linalg.transform_points(T_cur_prev[:, None], points).reshape(b, -1, 3)
    z = torch.relu(points[..., 2])
    pix = torch.round(kornia.geometry.camera.perspective.project_points(points, _batched(K_out)[:, None])).long()
    valid = (pix[..., 0] >= 0) & (pix[..., 1] >= 0) & (pix[..., 0] < w) & (pix[..., 1] < h)
    flat = pix[..., 1] * w + pix[..., 0] + torch.arange(b, device=pix.device).view(b, 1) * (h * w)
    out = previous_depth.new_zeros(b * h * w).scatter_reduce_(0, flat[valid], z[valid], reduce="amax",
                                                              include_self=True)
    return out.view(b, 1, h, w)


def warp_hidden_state(hidden: torch.Tensor, depth: torch.Tensor, T_world_prev: torch.Tensor,
                      T_world_cur: torch.Tensor, K: torch.Tensor, min_valid_depth: float = 0.01) -> torch.Tensor:
    """Warp the previous ConvLSTM hidden state into the current view (DVMVS ``warp_frame_depth`` + masking).

    ``hidden`` (B, C, h, w) in the previous view; ``depth`` (B, 1, h, w) estimated current depth;
    poses (4, 4) or (B, 4, 4); ``K`` (3, 3) or (B, 3, 3) intrinsics at the hidden-state resolution
    -> (B, C, h, w), zero where ``depth <= 0.01``. The transformed z is relu'd before projection (official).
    Bilinear, zeros outside, align_corners=True; differentiable in ``hidden`` (training back-propagates
    through the warped state into the previous steps).
    """
    height, width = depth.shape[-2:]
    K = _batched(K)
    T_prev_cur = torch.inverse(_batched(T_world_prev)) @ _batched(T_world_cur)
    points = kornia.geometry.depth.depth_to_3d(depth, K).permute(0, 2, 3, 1)   # (B, h, w, 3)
    points = kornia.geometry.linalg.transform_points(T_prev_cur[:, None], points)
    points = torch.cat([points[..., :2], torch.relu(points[..., 2:])], dim=-1)
    pixels = kornia.geometry.camera.perspective.project_points(points, K.view(-1, 1, 1, 3, 3))
    grid = kornia.geometry.conversions.normalize_pixel_coordinates(pixels, height, width)
    warped = F.grid_sample(hidden, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped.masked_fill(depth <= min_valid_depth, 0.0)
