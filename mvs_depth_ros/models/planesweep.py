"""Classical multi-view plane sweep: the package's default estimator (no weights).

Algorithm (tensor ops in torch, so it runs on CPU or CUDA; on CPU the cost volume and the aggregation run
compiled numba kernels, :mod:`mvs_depth_ros.models.planesweep_numba`, equal to the torch ops up to float rounding):

1. **Cost volume** at ``cost_scale`` of the working resolution (half by default): fronto-parallel planes
   uniform in inverse depth (:func:`mvs_depth_ros.core.geometry.inverse_depth_planes`), each measurement
   image warped onto every plane with one ``grid_sample`` call (:func:`plane_sweep_grid`), matched to the
   reference by windowed ZNCC computed with box filters (:func:`zncc_cost`). Samples that project outside a
   measurement image (or behind it) are left out of the per-view average; a pixel no view sees at a plane
   gets a neutral cost, and a pixel no view sees at any plane is invalid (NaN). Pixels whose reference
   window has no texture get the neutral cost everywhere (flat curve -> low confidence). On CPU the warp and
   the ZNCC run fused, plane by plane, the planes split across the torch threads (no ``(D, h, w)`` temporaries).
2. **Semi-global aggregation** (:func:`sgm_aggregate`) along 8 (or 4) scanline directions: on CPU a compiled
   kernel (the same float32 operations in the same order, downward and upward passes on two threads);
   elsewhere (or without numba) torch, one Python loop step per row for all downward and upward passes at
   once (:func:`sgm_scan_rows`, the reference).
3. **Winner and sub-plane refinement**: winner-take-all on the aggregated cost, parabola fit in plane
   index, i.e. in inverse depth, the planes being uniform in it (:func:`subplane_refine`, equiangular
   fit by default).
4. **Upsampling**: inverse depth and confidence are upsampled bilinearly to the working resolution.
   (A full-resolution local re-sweep around the upsampled depth was tried and lowered accuracy on the
   HoloLens sample: unaggregated full-resolution ZNCC is noisier than the aggregated half-resolution fit.)
5. **Confidence** in [0, 1] (:func:`confidence_from_costs`): a peak-ratio distinctiveness of the aggregated
   cost curve times the square root of the winner's ZNCC; zero where the reference is textureless or no
   view sees the pixel. ``DepthResult.info["confidence_threshold"]`` holds the default threshold for
   ``DepthResult.filtered()``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame, scale_intrinsics
from ..core.geometry import inverse_depth_planes
from ..core.threads import one_intra_op_thread
from . import planesweep_numba
from .base import DepthEstimator

# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaneSweepConfig:
    """Tunables of the sweep (defaults tuned on the HoloLens sample at 320x256, 2 measurement frames)."""

    n_planes: int = 64
    #: resolution of the cost volume and aggregation, relative to the working resolution (1 or 0.5)
    cost_scale: float = 0.5
    #: ZNCC window (odd) at the cost resolution
    window: int = 7
    #: SGM small-jump (+-1 plane) and large-jump penalties, in units of the (1 - ZNCC) / 2 cost
    p1: float = 0.1
    p2: float = 1.5
    #: if > 0, the large-jump penalty shrinks to p2 / (1 + |dI| / p2_edge) across intensity edges
    #: (intensity in [0, 1]); off by default: it lowered accuracy on the HoloLens sample
    p2_edge: float = 0.0
    #: number of SGM directions: 4 (horizontal + vertical) or 8 (+ diagonals); 0 disables aggregation
    sgm_paths: int = 8
    #: reference windows with an intensity standard deviation below this get the neutral cost
    min_texture_std: float = 0.03
    #: cost of a (pixel, plane) no measurement view sees, and of textureless windows
    neutral_cost: float = 0.5
    #: sub-plane fit of the aggregated cost around the winner: parabola, equiangular or mean (of the two);
    #: equiangular halves the plane-locking bias of the parabola on rendered planes, equal on HoloLens
    subplane_fit: str = "equiangular"
    #: planes within this distance of the winner do not count as competitors for the confidence
    confidence_exclude: int = 2
    #: default threshold used for the "filtered" numbers (DepthResult.info["confidence_threshold"])
    confidence_threshold: float = 0.45
    #: depth prior (``estimate(..., prior=(depth, confidence))``, the temporal fusion's state re-projected into
    #: the reference): each pixel's matching cost grows by ``prior_weight * prior confidence`` times the
    #: distance of the plane from the prior in inverse depth relative to ``prior_band`` (capped at 1): a soft,
    #: per-pixel narrowing of the sweep range around the prior. 0 = the prior is ignored. The pipeline hands
    #: one over with causal temporal fusion (``fusion_defaults["prior"]``); chosen on the HoloLens sample
    #: (causal fusion, 2 measurement frames, dense abs_rel: 0.1132 without, 0.1075 with 0.05 / 0.1; weights
    #: 0.1-1.0 feed the fused errors back into the sweep: 0.112-0.19; README). With the fusion's discontinuity
    #: test (``FusionConfig.edge_rel``; bench_video_pipeline 2026-12-08 00:52-01:01 UTC): 0.1113 without, 0.1057
    #: with (0.1 / 0.1 and 0.05 / 0.07 measured with a first version of that test: no better)
    prior_weight: float = 0.05
    prior_band: float = 0.1

    def __post_init__(self) -> None:
        if self.n_planes < 3:
            raise ValueError(f"n_planes must be >= 3, got {self.n_planes}")
        if not (0.0 < self.cost_scale <= 1.0):
            raise ValueError(f"cost_scale must be in (0, 1], got {self.cost_scale}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be a positive odd integer, got {self.window}")
        if self.sgm_paths not in (0, 4, 8):
            raise ValueError(f"sgm_paths must be 0, 4 or 8, got {self.sgm_paths}")
        if self.p1 < 0 or self.p2 < self.p1:
            raise ValueError(f"need 0 <= p1 <= p2, got p1={self.p1}, p2={self.p2}")
        if self.subplane_fit not in ("parabola", "equiangular", "mean"):
            raise ValueError(f"subplane_fit must be parabola, equiangular or mean, got {self.subplane_fit!r}")
        if self.confidence_exclude < 0:
            raise ValueError(f"confidence_exclude must be >= 0, got {self.confidence_exclude}")
        if not (0.0 <= self.confidence_threshold <= 1.0):
            raise ValueError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}")
        if self.prior_weight < 0 or not self.prior_band > 0:
            raise ValueError(f"need prior_weight >= 0 and prior_band > 0, got {self.prior_weight}, {self.prior_band}")


# ----------------------------------------------------------------------------------------------------
# Pure tensor functions
# ----------------------------------------------------------------------------------------------------


def gray_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> luminance ``(1, 1, H, W)`` float32 in [0, 1]."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * (1.0 / 255.0)
    return torch.from_numpy(g).to(device)[None, None]


def plane_sweep_grid(K_ref: torch.Tensor, K_src: torch.Tensor, T_src_ref: torch.Tensor,
                     depths: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sampling grid of a source image for fronto-parallel reference planes.

    Args:
        K_ref, K_src: ``(3, 3)`` intrinsics (same image size ``height x width``).
        T_src_ref: ``(4, 4)`` reference-camera -> source-camera transform.
        depths: ``(D,)`` plane depths (metres, along the reference optical axis) or ``(D, H, W)`` per-pixel.
    Returns:
        grid ``(D, H, W, 2)`` normalised for ``grid_sample(align_corners=True)`` and valid ``(D, H, W)`` bool
        (in front of the source camera and inside its image).
    """
    dt = torch.float32
    a, b = _sweep_affine(K_ref, K_src, T_src_ref, height, width, depths.device)
    d = depths.to(dt)
    d = d.reshape(-1, 1, 1, 1) if d.ndim == 1 else d[..., None]                           # (D, H|1, W|1, 1)
    proj = torch.addcmul(b, d, a)                                                         # (D, H, W, 3)
    z = proj[..., 2:]
    valid = z[..., 0] > 1e-6
    grid = proj[..., :2] / z.clamp_min(1e-6)
    # invalid samples are masked by the caller; clamping keeps them finite for grid_sample
    grid.clamp_(-2.0, 2.0)
    valid &= grid.abs().amax(-1) <= 1.0
    return grid, valid


def _sweep_affine(K_ref: torch.Tensor, K_src: torch.Tensor, T_src_ref: torch.Tensor, height: int, width: int,
                  device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``a (H, W, 3)`` and ``b (3,)`` float32 of :func:`plane_sweep_grid`: the homogeneous normalised source
    coordinates of reference pixel ``(u, v)`` on the plane at depth ``d`` are ``b + d * a[v, u]``."""
    dev, dt = device, torch.float32
    # fold the pixel -> grid_sample normalisation into the source intrinsics (affine, so it commutes
    # with the perspective division)
    norm = torch.tensor([[2.0 / max(width - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(height - 1, 1), -1.0],
                         [0.0, 0.0, 1.0]], dtype=K_src.dtype, device=K_src.device)
    KN = norm @ K_src
    M = (KN @ T_src_ref[:3, :3] @ torch.linalg.inv(K_ref)).to(dt)                        # (3, 3)
    v, u = torch.meshgrid(torch.arange(height, device=dev, dtype=dt), torch.arange(width, device=dev, dtype=dt),
                          indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)                                     # (H, W, 3)
    a = pix @ M.T                                                                         # (H, W, 3)
    b = (KN @ T_src_ref[:3, 3]).to(dt)                                                    # (3,)
    return a, b


def warp_planes(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``src (1, 1, H, W)`` at ``grid (D, H, W, 2)`` -> ``(D, 1, H, W)`` (border padding)."""
    D, H, W, _ = grid.shape
    out = F.grid_sample(src, grid.reshape(1, D * H, W, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(D, 1, H, W)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Box mean of ``(N, 1, H, W)`` over ``window x window``, borders reflected (OpenCV's REFLECT_101).

    On CPU this runs OpenCV's box filter per slice (several times faster than ``avg_pool2d``); elsewhere
    a separable cumulative-sum filter with the same border rule.
    """
    if window == 1:
        return x
    r = window // 2
    N, C, H, W = x.shape
    if x.device.type == "cpu" and x.dtype == torch.float32 and H > r and W > r:
        src = x.detach().contiguous().numpy().reshape(N * C, H, W)
        out = np.empty_like(src)
        for i in range(N * C):
            cv2.blur(src[i], (window, window), dst=out[i], borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).reshape(N, C, H, W)
    return box_mean_cumsum(x, window)


def box_mean_cumsum(x: torch.Tensor, window: int) -> torch.Tensor:
    """:func:`box_mean` by separable cumulative sums (any device): ``(N, C, H, W)`` -> same shape."""
    if window == 1:
        return x
    r = window // 2
    H, W = x.shape[-2:]
    # pad by r (reflect), prepend a zero, difference of the cumulative sum at distance `window`
    y = F.pad(x, (r, r, 0, 0), mode="reflect" if W > r else "replicate")
    y = F.pad(y.cumsum(3), (1, 0, 0, 0))
    y = (y[..., window:] - y[..., :-window]) * (1.0 / window)
    y = F.pad(y, (0, 0, r, r), mode="reflect" if H > r else "replicate")
    y = F.pad(y.cumsum(2), (0, 0, 1, 0))
    return (y[:, :, window:] - y[:, :, :-window]) * (1.0 / window)


def window_stats(ref: torch.Tensor, window: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation ``(1, 1, H, W)`` of ``ref (1, 1, H, W)`` over the window."""
    mu = box_mean(ref, window)
    var = (box_mean(ref * ref, window) - mu * mu).clamp_min(0.0)
    return mu, var.sqrt()


def zncc_cost(ref: torch.Tensor, ref_mu: torch.Tensor, ref_sigma: torch.Tensor, warped: torch.Tensor,
              window: int, eps: float = 1e-4) -> torch.Tensor:
    """Windowed ZNCC matching cost ``(1 - zncc) / 2`` in [0, 1].

    Args:
        ref, ref_mu, ref_sigma: ``(1, 1, H, W)`` reference image and its window mean / std.
        warped: ``(D, 1, H, W)`` source image warped onto each plane.
    Returns:
        ``(D, H, W)`` cost.
    """
    mu = box_mean(warped, window)
    var = (box_mean(warped * warped, window) - mu * mu).clamp_min(0.0)
    cov = box_mean(warped * ref, window) - mu * ref_mu
    zncc = cov / (ref_sigma * var.sqrt() + eps)
    return ((1.0 - zncc.clamp(-1.0, 1.0)) * 0.5).squeeze(1)


def _edge_penalty(gray: torch.Tensor, dy: int, dx: int, p2: float, p2_edge: float) -> torch.Tensor:
    """``(H, W)`` large-jump penalty for stepping into each pixel from its neighbour at ``(-dy, -dx)``:
    ``p2 / (1 + |dI| / p2_edge)`` (image borders replicated)."""
    if p2_edge <= 0:
        return torch.full_like(gray, p2)
    H, W = gray.shape
    prev = F.pad(gray[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    prev = prev[1 - dy:1 - dy + H, 1 - dx:1 - dx + W]
    return p2 / (1.0 + (gray - prev).abs() / p2_edge)


def sgm_scan_rows(cost: torch.Tensor, gray: torch.Tensor, shifts: Sequence[int], p1: float, p2: float,
                  p2_edge: float) -> torch.Tensor:
    """Sum of SGM path costs of row-by-row scans, downwards and upwards, in one Python loop.

    Each pass walks the rows of the volume; pixel ``n`` of a row follows pixel ``n - shift`` of the
    previous row (``shift`` 0: vertical path, +-1: diagonal). For every shift one downward and one upward
    pass run together, vectorised over the row, the planes and the passes. Recurrence (Hirschmueller 2008):
    ``L(p, d) = C(p, d) + min(L(q, d), L(q, d +- 1) + P1, min_k L(q, k) + P2(p)) - min_k L(q, k)``; a path
    entering from outside the image starts fresh.

    Args:
        cost: ``(D, S, N)`` matching cost (``S`` rows of ``N`` pixels).
        gray: ``(S, N)`` reference intensity for the edge-adaptive ``P2``.
        shifts: column shifts of the passes, e.g. ``(0,)`` or ``(0, 1, -1)``.
    Returns:
        ``(D, S, N)`` sum over the ``2 * len(shifts)`` passes.
    """
    D, S, N = cost.shape
    P = len(shifts)
    # penalties in step order: (S, 2P, 1, N); upward passes enter row r from row r + 1
    pen_dn = torch.stack([_edge_penalty(gray, 1, sh, p2, p2_edge) for sh in shifts], 1)
    pen_up = torch.stack([_edge_penalty(gray, -1, sh, p2, p2_edge) for sh in shifts], 1).flip(0)
    pen = torch.cat([pen_dn, pen_up], 1).unsqueeze(2)
    total = torch.zeros_like(cost)
    # previous row of every pass, with an inf plane on each side (the +-1 plane transitions) and a zero
    # column on each side (fresh start for diagonal paths entering from outside the row)
    buf = cost.new_zeros((2 * P, D + 2, N + 2))
    buf[:, 0] = float("inf")
    buf[:, -1] = float("inf")
    prev = buf[:, 1:-1, 1:-1]
    best = cost.new_empty((2 * P, D, N))
    m = cost.new_empty((2 * P, 1, N))
    for s in range(S):
        r_up = S - 1 - s
        if s == 0:
            best[:P] = cost[:, 0]
            best[P:] = cost[:, r_up]
        else:
            torch.amin(prev, dim=1, keepdim=True, out=m)
            torch.minimum(buf[:, :-2, 1:-1], buf[:, 2:, 1:-1], out=best)
            best += p1
            torch.minimum(best, prev, out=best)
            torch.minimum(best, m + pen[s], out=best)
            best -= m
            best[:P] += cost[:, s]
            best[P:] += cost[:, r_up]
        total[:, s] += best[:P].sum(0)
        total[:, r_up] += best[P:].sum(0)
        for k, sh in enumerate(shifts):          # passes k and P + k share the shift
            buf[k::P, 1:-1, 1 + sh:N + 1 + sh] = best[k::P]
    return total


def sgm_aggregate(cost: torch.Tensor, gray: torch.Tensor, p1: float, p2: float, p2_edge: float,
                  paths: int = 8) -> torch.Tensor:
    """Semi-global aggregation: sum over ``paths`` (4 or 8) directions of the SGM path costs.

    Vertical and diagonal passes scan rows (:func:`sgm_scan_rows`); horizontal passes scan the rows of
    the transposed volume.

    Args:
        cost: ``(D, H, W)`` matching cost.
        gray: ``(H, W)`` reference intensity in [0, 1] (for the edge-adaptive large-jump penalty).
    Returns:
        ``(D, H, W)`` aggregated cost (sum over directions).
    """
    if paths not in (4, 8):
        raise ValueError(f"paths must be 4 or 8, got {paths}")
    scan = _sgm_scan_rows_compiled if _use_compiled_sgm(cost) else sgm_scan_rows
    rows = scan(cost, gray, (0, 1, -1) if paths == 8 else (0,), p1, p2, p2_edge)
    cols = scan(cost.transpose(1, 2).contiguous(), gray.t().contiguous(), (0,), p1, p2, p2_edge)
    return rows.add_(cols.transpose(1, 2))


def _use_compiled_sgm(cost: torch.Tensor) -> bool:
    """The compiled kernel (:mod:`.planesweep_numba`) runs float32 CPU volumes; the torch scan the rest (CUDA)."""
    return cost.device.type == "cpu" and cost.dtype == torch.float32 and planesweep_numba.AVAILABLE


def _sgm_scan_rows_compiled(cost: torch.Tensor, gray: torch.Tensor, shifts: Sequence[int], p1: float, p2: float,
                            p2_edge: float) -> torch.Tensor:
    """:func:`sgm_scan_rows` by the compiled CPU kernel (same float32 operations in the same order)."""
    pen = [_edge_penalty(gray, 1, sh, p2, p2_edge) for sh in shifts]
    pen += [_edge_penalty(gray, -1, sh, p2, p2_edge) for sh in shifts]
    out = planesweep_numba.scan_rows(cost.detach().numpy(), torch.stack(pen).numpy(), shifts, p1,
                                     threads=torch.get_num_threads())
    return torch.from_numpy(out)


def subplane_refine(cost: torch.Tensor, idx: torch.Tensor, fit: str = "parabola") -> torch.Tensor:
    """Fractional index of the minimum of ``cost (D, H, W)`` around integer ``idx (H, W)`` from the three
    costs at ``idx - 1, idx, idx + 1``.

    ``fit``: ``"parabola"`` (vertex of the parabola through the three), ``"equiangular"`` (symmetric V,
    suits sharp, ZNCC-like minima) or ``"mean"`` of the two (their pixel-locking biases have opposite
    signs). The offset is clamped to [-0.5, 0.5]; it is 0 at the ends of the range.
    """
    D = cost.shape[0]
    if fit not in ("parabola", "equiangular", "mean"):
        raise ValueError(f"fit must be parabola, equiangular or mean, got {fit!r}")
    i0 = idx.clamp(1, D - 2)
    c = torch.gather(cost, 0, torch.stack([i0 - 1, i0, i0 + 1], 0))                      # (3, H, W)
    num = 0.5 * (c[0] - c[2])
    off = torch.zeros_like(num)
    if fit in ("parabola", "mean"):
        curv = c[0] - 2.0 * c[1] + c[2]
        off = off + torch.where(curv > 1e-9, num / curv.clamp_min(1e-9), torch.zeros_like(num)).clamp(-0.5, 0.5)
    if fit in ("equiangular", "mean"):
        slope = torch.maximum(c[0] - c[1], c[2] - c[1])
        off = off + torch.where(slope > 1e-9, num / slope.clamp_min(1e-9), torch.zeros_like(num)).clamp(-0.5, 0.5)
    if fit == "mean":
        off = 0.5 * off
    interior = (idx > 0) & (idx < D - 1)
    return idx.to(cost.dtype) + torch.where(interior, off, torch.zeros_like(off))


def confidence_from_costs(agg: torch.Tensor, idx: torch.Tensor, match_cost: torch.Tensor,
                          exclude: int = 2) -> torch.Tensor:
    """Confidence in [0, 1] from the aggregated cost curve and the raw matching cost of the winner.

    ``distinctiveness = 1 - best / second`` where ``second`` is the lowest aggregated cost more than
    ``exclude`` planes away from the winner (a peak-ratio test: 0 for a flat or ambiguous curve), and
    ``quality = 1 - 2 * match_cost`` is the ZNCC of the winning plane clamped to [0, 1].

    Args:
        agg: ``(D, H, W)`` aggregated cost (non-negative).
        idx: ``(H, W)`` winning plane.
        match_cost: ``(H, W)`` raw matching cost ``(1 - zncc) / 2`` at the winner.
    Returns:
        ``(H, W)`` ``distinctiveness * sqrt(quality)``.
    """
    D = agg.shape[0]
    best = torch.gather(agg, 0, idx[None])[0]
    # the planes within ``exclude`` of the winner set to inf (clamped indices repeat the end planes, which are
    # within reach then), then the minimum: the same set as a |plane - idx| > exclude mask, two volume passes
    near = idx[None] + torch.arange(-exclude, exclude + 1, device=agg.device).reshape(-1, 1, 1)
    masked = agg.clone().scatter_(0, near.clamp(0, D - 1), float("inf"))
    second = masked.amin(0)
    distinct = torch.where(torch.isfinite(second) & (second > 0), 1.0 - best / second.clamp_min(1e-12),
                           torch.zeros_like(best)).clamp(0.0, 1.0)
    quality = (1.0 - 2.0 * match_cost).clamp(0.0, 1.0)
    return distinct * quality.sqrt()


# ----------------------------------------------------------------------------------------------------
# Estimator
# ----------------------------------------------------------------------------------------------------


def _view_cost(ref: torch.Tensor, ref_mu: torch.Tensor, ref_sigma: torch.Tensor, srcs: Sequence[torch.Tensor],
               K_ref: torch.Tensor, K_srcs: Sequence[torch.Tensor], T_src_refs: Sequence[torch.Tensor],
               depths: torch.Tensor, window: int, neutral: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Matching cost averaged over the views that see each (plane, pixel).

    Returns cost ``(D, H, W)`` (neutral where no view sees it) and the view count ``(D, H, W)``. On CPU the
    fused kernel :func:`.planesweep_numba.view_cost`; elsewhere :func:`plane_sweep_grid`, :func:`warp_planes`
    and :func:`zncc_cost`.
    """
    _, _, H, W = ref.shape
    if (ref.device.type == "cpu" and ref.dtype == torch.float32 and planesweep_numba.AVAILABLE
            and H > window // 2 and W > window // 2):
        # fused warp + ZNCC, plane by plane (:mod:`.planesweep_numba`)
        affines = [tuple(t.numpy() for t in _sweep_affine(K_ref, K_src, T, H, W, ref.device))
                   for K_src, T in zip(K_srcs, T_src_refs)]
        total_np, count_np = planesweep_numba.view_cost(
            ref[0, 0].numpy(), ref_mu[0, 0].numpy(), ref_sigma[0, 0].numpy(), [s[0, 0].numpy() for s in srcs],
            affines, depths.to(torch.float32).numpy(), window, threads=torch.get_num_threads(), neutral=neutral)
        return torch.from_numpy(total_np), torch.from_numpy(count_np)
    total = None
    count = None
    for src, K_src, T in zip(srcs, K_srcs, T_src_refs):
        grid, valid = plane_sweep_grid(K_ref, K_src, T, depths, H, W)
        c = zncc_cost(ref, ref_mu, ref_sigma, warp_planes(src, grid), window)
        vf = valid.to(c.dtype)
        total = c * vf if total is None else total + c * vf
        count = vf if count is None else count + vf
    cost = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, neutral))
    return cost, count


class PlaneSweepEstimator(DepthEstimator):
    """Plane sweep + ZNCC + semi-global aggregation + sub-plane fit. Stateless; any number of views >= 1."""

    name = "planesweep"
    recurrent = False
    # its low-confidence depth is often far off (textureless areas): re-projected, it would win z-buffers and
    # votes it does not deserve, and filling cracks with the nearest point spreads it (HoloLens sample, causal
    # fusion: abs_rel 0.1260 without the gate, 0.1153 with a 0.45 gate and no crack filling, 0.1132 at 0.7);
    # the fused state comes back as a depth prior (``prior_weight``; 0.1075 with it; README). Its depth is
    # upsampled bilinearly from the half-resolution cost volume, so every depth edge is a ramp between the two
    # surfaces: its own edge pixels do not vote against re-projected depth either (``edge_current``; with the prior
    # and the discontinuity test ``edge_rel`` of every estimator: 0.1065 without, 0.1057 with)
    fusion_defaults = {"min_source_confidence": 0.7, "fill_holes": False, "prior": True, "edge_current": True}
    accepts_prior = True
    preferred_measurement_frames = None

    def __init__(self, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0,
                 config: Optional[PlaneSweepConfig] = None):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        self.config = config or PlaneSweepConfig()
        inv = 1.0 / inverse_depth_planes(self.min_depth, self.max_depth, self.config.n_planes)
        #: inverse depths of the planes, increasing with index (far -> near)
        self._inv_planes = torch.tensor(inv, dtype=torch.float32, device=self.device)
        if self.device.type == "cpu" and planesweep_numba.AVAILABLE:
            # compile the kernels now (or load them from numba's disk cache: ~0.1 s), not in the first estimate
            planesweep_numba.warm_up()

    # -- helpers ------------------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=self.device)

    @staticmethod
    def _check_inputs(reference: Frame, measurements: Sequence[Frame]) -> None:
        if len(measurements) < 1:
            raise ValueError("plane sweep needs at least one measurement frame")
        if not reference.has_pose:
            raise ValueError(f"reference frame {reference.name!r} has no valid pose")
        for m in measurements:
            if not m.has_pose:
                raise ValueError(f"measurement frame {m.name!r} has no valid pose")
            if (m.width, m.height) != (reference.width, reference.height):
                raise ValueError(f"measurement frame {m.name!r} is {m.width}x{m.height}, reference is "
                                 f"{reference.width}x{reference.height}; resize them to one working resolution")

    def _pyramid_level(self, frame: Frame, w: int, h: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Grey image ``(1, 1, h, w)`` and its K at ``w x h``."""
        if (w, h) == (frame.width, frame.height):
            img, K = frame.image, frame.K
        else:
            img = cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA)
            K = scale_intrinsics(frame.K, w / frame.width, h / frame.height)
        return gray_tensor(img, self.device), self._tensor(K)

    # -- main ---------------------------------------------------------------------------------------
    def _prior_cost(self, prior: Tuple[np.ndarray, np.ndarray], w: int, h: int) -> Optional[torch.Tensor]:
        """``(D, h, w)`` cost added by a depth prior at the cost resolution (None: no prior pixel)."""
        depth, conf = (np.asarray(a, np.float32) for a in prior)
        ok = np.isfinite(depth) & (depth > 0) & np.isfinite(conf) & (conf > 0)
        if not ok.any():
            return None
        inv = np.where(ok, 1.0 / np.where(ok, depth, 1.0), 0.0).astype(np.float32)
        conf = np.where(ok, np.clip(conf, 0.0, 1.0), 0.0).astype(np.float32)
        if inv.shape != (h, w):
            inv = cv2.resize(inv, (w, h), interpolation=cv2.INTER_NEAREST)
            conf = cv2.resize(conf, (w, h), interpolation=cv2.INTER_NEAREST)
        inv_p = torch.from_numpy(inv).to(self.device)
        weight = torch.from_numpy(conf).to(self.device) * self.config.prior_weight
        band = self.config.prior_band * torch.where(inv_p > 0, inv_p, torch.ones_like(inv_p))
        dist = ((self._inv_planes[:, None, None] - inv_p) / band).abs_().clamp_(max=1.0)
        return dist * weight

    @torch.no_grad()
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None,
                 prior: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> DepthResult:
        """Depth of ``reference``; ``prior``: optional ``(depth, confidence)`` at the reference's resolution
        (used when ``config.prior_weight > 0``, see :class:`PlaneSweepConfig`)."""
        self._check_inputs(reference, measurements)
        cfg = self.config
        t0 = time.perf_counter()
        W, H = reference.width, reference.height
        w = max(8, int(round(W * cfg.cost_scale)))
        h = max(8, int(round(H * cfg.cost_scale)))
        T_ref = np.asarray(reference.T_world_cam, dtype=np.float64)
        T_src_refs = [self._tensor(np.linalg.inv(m.T_world_cam) @ T_ref) for m in measurements]
        inv_planes = self._inv_planes
        D = inv_planes.numel()
        depths = 1.0 / inv_planes

        # 1. cost volume at the cost resolution
        ref_c, K_ref_c = self._pyramid_level(reference, w, h)
        srcs_c, Ks_c = zip(*(self._pyramid_level(m, w, h) for m in measurements))
        mu, sigma = window_stats(ref_c, cfg.window)
        cost, count = _view_cost(ref_c, mu, sigma, srcs_c, K_ref_c, Ks_c, T_src_refs, depths, cfg.window,
                                 cfg.neutral_cost)
        textureless = (sigma[0, 0] < cfg.min_texture_std)
        cost = torch.where(textureless[None], torch.full_like(cost, cfg.neutral_cost), cost)
        seen = count.amax(0) > 0                                                          # (h, w)
        prior_cost = self._prior_cost(prior, w, h) if prior is not None and cfg.prior_weight > 0 else None
        if prior_cost is not None:
            cost = cost + prior_cost
        t_cost = time.perf_counter()

        # 2. aggregation
        if cfg.sgm_paths:
            # (the compiled kernel runs the downward and upward passes on the torch threads itself)
            with contextlib.nullcontext() if _use_compiled_sgm(cost) else one_intra_op_thread(cost.device):
                agg = sgm_aggregate(cost, ref_c[0, 0], cfg.p1, cfg.p2, cfg.p2_edge, cfg.sgm_paths)
            agg = agg / cfg.sgm_paths
        else:
            agg = cost
        t_agg = time.perf_counter()

        # 3. winner + sub-plane
        idx = agg.min(0).indices
        # (fitting the raw matching cost instead was more accurate on rendered planes but less on HoloLens)
        frac = subplane_refine(agg, idx, cfg.subplane_fit)
        step = inv_planes[1] - inv_planes[0]
        inv_c = inv_planes[0] + frac * step                                                # (h, w)
        match = torch.gather(cost, 0, idx[None])[0]
        conf_c = confidence_from_costs(agg, idx, match, cfg.confidence_exclude)
        conf_c = torch.where(seen & ~textureless, conf_c, torch.zeros_like(conf_c))

        # 4. upsample to the working resolution
        if (w, h) != (W, H):
            up = lambda t: F.interpolate(t[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            inv = up(inv_c)
            conf = up(conf_c)
            seen_f = up(seen.float()) > 0.5
        else:
            inv, conf, seen_f = inv_c, conf_c, seen
        t_up = time.perf_counter()

        inv = inv.clamp(float(inv_planes[0]), float(inv_planes[-1]))
        depth = 1.0 / inv
        depth = torch.where(seen_f, depth, torch.full_like(depth, float("nan")))
        conf = torch.where(seen_f, conf.clamp(0.0, 1.0), torch.zeros_like(conf))
        info: Dict[str, Any] = {
            "confidence_threshold": cfg.confidence_threshold,
            "n_planes": D,
            "n_measurements": len(measurements),
            "cost_resolution": (w, h),
            "ms_cost": (t_cost - t0) * 1e3,
            "ms_aggregation": (t_agg - t_cost) * 1e3,
            "ms_winner_upsample": (t_up - t_agg) * 1e3,
            "prior": prior_cost is not None,
        }
        return DepthResult(depth=depth.float().cpu().numpy(), confidence=conf.float().cpu().numpy(),
                           K=reference.K.copy(), state=None, info=info)


def build(device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0, **options) -> PlaneSweepEstimator:
    """Registry builder: ``options`` are :class:`PlaneSweepConfig` fields (unknown names are an error)."""
    known = {f.name for f in fields(PlaneSweepConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown planesweep option(s) {unknown}; known: {sorted(known)}")
    return PlaneSweepEstimator(device=device, min_depth=min_depth, max_depth=max_depth,
                               config=PlaneSweepConfig(**options))
