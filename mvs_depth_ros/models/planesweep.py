"""Classical multi-view plane sweep: the package's default estimator (no weights).

Algorithm (all tensor ops in torch, so it runs on CPU or CUDA):

1. **Cost volume** at ``cost_scale`` of the working resolution (half by default): fronto-parallel planes
   uniform in inverse depth (:func:`mvs_depth_ros.core.geometry.inverse_depth_planes`), each measurement
   image warped onto every plane with one ``grid_sample`` call (:func:`plane_sweep_grid`), matched to the
   reference by windowed ZNCC computed with box filters (:func:`zncc_cost`). Samples that project outside a
   measurement image (or behind it) are left out of the per-view average; a pixel no view sees at a plane
   gets a neutral cost, and a pixel no view sees at any plane is invalid (NaN). Pixels whose reference
   window has no texture get the neutral cost everywhere (flat curve -> low confidence).
2. **Semi-global aggregation** (:func:`sgm_aggregate`) along 4 or 8 scanline directions, vectorised over a
   whole column/row (and both opposite directions) per step, with an intensity-adaptive large-jump penalty.
3. **Winner and sub-plane refinement**: winner-take-all on the aggregated cost, parabola fit in plane
   index (= inverse depth, the planes being uniform in it) (:func:`subplane_refine`).
4. **Upsampling and local refinement** at the working resolution: the inverse depth is upsampled
   bilinearly and refined by a small continuous sweep of ``refine_steps`` hypotheses around it with a
   full-resolution ZNCC (:func:`local_refine`), again with a parabola fit.
5. **Confidence** in [0, 1] (:func:`confidence_from_costs`): product of a matching-quality term (ZNCC of the
   winner) and a distinctiveness term (margin between the best aggregated cost and the best cost away from
   it). ``DepthResult.info["confidence_threshold"]`` holds the default threshold for ``filtered()``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame, scale_intrinsics
from ..core.geometry import inverse_depth_planes
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
    window: int = 5
    #: SGM small-jump (+-1 plane) and large-jump penalties, in units of the (1 - ZNCC) / 2 cost
    p1: float = 0.03
    p2: float = 0.25
    #: large-jump penalty shrinks to p2 / (1 + |dI| / p2_edge) across intensity edges (intensity in [0, 1])
    p2_edge: float = 0.05
    #: number of SGM directions: 4 (horizontal + vertical) or 8 (+ diagonals); 0 disables aggregation
    sgm_paths: int = 4
    #: reference windows with an intensity standard deviation below this get the neutral cost
    min_texture_std: float = 0.01
    #: cost of a (pixel, plane) no measurement view sees, and of textureless windows
    neutral_cost: float = 0.5
    #: full-resolution refinement: number of hypotheses spanning +-refine_span plane steps (0 disables)
    refine_steps: int = 5
    refine_span: float = 1.0
    refine_window: int = 7
    #: confidence = quality * distinctiveness; margin of the aggregated cost that maps to full distinctiveness
    confidence_margin: float = 0.1
    #: default threshold used for the "filtered" numbers (DepthResult.info["confidence_threshold"])
    confidence_threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.n_planes < 3:
            raise ValueError(f"n_planes must be >= 3, got {self.n_planes}")
        if not (0.0 < self.cost_scale <= 1.0):
            raise ValueError(f"cost_scale must be in (0, 1], got {self.cost_scale}")
        for name in ("window", "refine_window"):
            v = getattr(self, name)
            if v < 1 or v % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {v}")
        if self.sgm_paths not in (0, 4, 8):
            raise ValueError(f"sgm_paths must be 0, 4 or 8, got {self.sgm_paths}")
        if self.p1 < 0 or self.p2 < self.p1:
            raise ValueError(f"need 0 <= p1 <= p2, got p1={self.p1}, p2={self.p2}")
        if self.refine_steps < 0 or self.refine_steps == 1 or self.refine_steps == 2:
            raise ValueError(f"refine_steps must be 0 or >= 3, got {self.refine_steps}")
        if not (0.0 <= self.confidence_threshold <= 1.0):
            raise ValueError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}")


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
    dev, dt = depths.device, torch.float32
    v, u = torch.meshgrid(torch.arange(height, device=dev, dtype=dt), torch.arange(width, device=dev, dtype=dt),
                          indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], 0).reshape(3, -1)                     # (3, HW)
    M = (K_src @ T_src_ref[:3, :3] @ torch.linalg.inv(K_ref)).to(dt)                     # (3, 3)
    a = (M @ pix).reshape(3, 1, height, width)                                           # (3, 1, H, W)
    b = (K_src @ T_src_ref[:3, 3:4]).to(dt).reshape(3, 1, 1, 1)                          # (3, 1, 1, 1)
    d = depths.to(dt)
    d = d.reshape(-1, 1, 1) if d.ndim == 1 else d                                        # (D, H|1, W|1)
    x = d * a[0] + b[0]
    y = d * a[1] + b[1]
    z = d * a[2] + b[2]
    valid = z > 1e-6
    z = torch.where(valid, z, torch.ones_like(z))
    us, vs = x / z, y / z
    valid &= (us >= 0) & (us <= width - 1) & (vs >= 0) & (vs <= height - 1)
    grid = torch.stack([us * (2.0 / max(width - 1, 1)) - 1.0, vs * (2.0 / max(height - 1, 1)) - 1.0], -1)
    grid = torch.where(valid[..., None], grid, torch.full_like(grid, -2.0))
    return grid, valid


def warp_planes(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``src (1, 1, H, W)`` at ``grid (D, H, W, 2)`` -> ``(D, 1, H, W)`` (border padding)."""
    D, H, W, _ = grid.shape
    out = F.grid_sample(src, grid.reshape(1, D * H, W, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(D, 1, H, W)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Separable box mean of ``(N, 1, H, W)`` over ``window x window`` (edges: mean over the valid part)."""
    if window == 1:
        return x
    r = window // 2
    x = F.avg_pool2d(x, (1, window), stride=1, padding=(0, r), count_include_pad=False)
    return F.avg_pool2d(x, (window, 1), stride=1, padding=(r, 0), count_include_pad=False)


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


def _sgm_scan(cost: torch.Tensor, p1: float, p2: torch.Tensor) -> torch.Tensor:
    """One family of scanline passes.

    Args:
        cost: ``(S, B, D, N)`` cost slices in scan order (``S`` steps; ``B`` independent passes, e.g. the
            forward and the flipped backward direction; ``N`` pixels along each slice).
        p2: ``(S, B, 1, N)`` large-jump penalty for entering step ``s`` from step ``s - 1``.
    Returns:
        ``(S, B, D, N)`` path costs with the running minimum subtracted (values stay bounded).
    """
    out = torch.empty_like(cost)
    prev = cost[0]
    out[0] = prev
    inf = torch.full_like(prev[:, :1], float("inf"))
    for s in range(1, cost.shape[0]):
        m = prev.amin(dim=1, keepdim=True)                                               # (B, 1, N)
        best = torch.minimum(prev, m + p2[s])
        shifted = torch.minimum(torch.cat([prev[:, 1:], inf], 1), torch.cat([inf, prev[:, :-1]], 1)) + p1
        torch.minimum(best, shifted, out=best)
        prev = cost[s] + best - m
        out[s] = prev
    return out


def _adaptive_p2(gray: torch.Tensor, p2: float, p2_edge: float, dim: int) -> torch.Tensor:
    """``(H, W)`` penalty for stepping into each pixel along ``dim`` (forward); index 0 unused."""
    diff = torch.zeros_like(gray)
    if dim == 1:
        diff[:, 1:] = (gray[:, 1:] - gray[:, :-1]).abs()
    else:
        diff[1:] = (gray[1:] - gray[:-1]).abs()
    if p2_edge <= 0:
        return torch.full_like(gray, p2)
    return p2 / (1.0 + diff / p2_edge)


def _shear(x: torch.Tensor, sign: int) -> torch.Tensor:
    """Shear ``(D, H, W)`` so that diagonals become columns: row ``i`` shifted by ``sign * i`` (inf-padded).

    Returns ``(D, H, W + H - 1)``.
    """
    D, H, W = x.shape
    out = x.new_full((D, H, W + H - 1), float("inf"))
    idx = torch.arange(H, device=x.device)
    offs = idx if sign > 0 else (H - 1 - idx)
    cols = offs[:, None] + torch.arange(W, device=x.device)[None, :]                     # (H, W)
    out.scatter_(2, cols[None].expand(D, H, W), x)
    return out, cols


def sgm_aggregate(cost: torch.Tensor, gray: torch.Tensor, p1: float, p2: float, p2_edge: float,
                  paths: int = 4) -> torch.Tensor:
    """Semi-global aggregation: sum over ``paths`` (4 or 8) directions of the SGM path costs.

    Args:
        cost: ``(D, H, W)`` matching cost.
        gray: ``(H, W)`` reference intensity in [0, 1] (for the edge-adaptive large-jump penalty).
    Returns:
        ``(D, H, W)`` aggregated cost (sum over directions).
    """
    D, H, W = cost.shape
    # horizontal: left->right and right->left together; scan over columns
    ph = _adaptive_p2(gray, p2, p2_edge, dim=1)                                           # (H, W)
    c = torch.stack([cost, cost.flip(2)], 0).permute(3, 0, 1, 2).contiguous()            # (W, 2, D, H)
    pen_b = _adaptive_p2(gray.flip(1), p2, p2_edge, dim=1)
    pen = torch.stack([ph, pen_b], 0).permute(2, 0, 1).unsqueeze(2).contiguous()         # (W, 2, 1, H)
    lh = _sgm_scan(c, p1, pen).permute(1, 2, 3, 0)                                       # (2, D, H, W)
    total = lh[0] + lh[1].flip(2)
    # vertical: top->bottom and bottom->top; scan over rows
    pv = _adaptive_p2(gray, p2, p2_edge, dim=0)
    c = torch.stack([cost, cost.flip(1)], 0).permute(2, 0, 1, 3).contiguous()            # (H, 2, D, W)
    pen_b = _adaptive_p2(gray.flip(0), p2, p2_edge, dim=0)
    pen = torch.stack([pv, pen_b], 0).permute(1, 0, 2).unsqueeze(2).contiguous()         # (H, 2, 1, W)
    lv = _sgm_scan(c, p1, pen).permute(1, 2, 0, 3)                                       # (2, D, H, W)
    total = total + lv[0] + lv[1].flip(1)
    if paths == 8:
        # diagonals: shear so that each diagonal becomes a row scan (vertical scan on the sheared volume)
        pd = torch.full((H, W), p2, device=cost.device, dtype=cost.dtype)
        for sign in (1, -1):
            sh, cols = _shear(cost, sign)                                                 # (D, H, W')
            sh = torch.where(torch.isinf(sh), torch.full_like(sh, 0.0), sh)
            c = torch.stack([sh, sh.flip(1)], 0).permute(2, 0, 1, 3).contiguous()        # (H, 2, D, W')
            pen = torch.full((H, 2, 1, sh.shape[2]), p2, device=cost.device, dtype=cost.dtype)
            l = _sgm_scan(c, p1, pen).permute(1, 2, 0, 3)                                # (2, D, H, W')
            l = l[0] + l[1].flip(1)
            total = total + torch.gather(l, 2, cols[None].expand(D, H, W))
        del pd
    return total


def subplane_refine(cost: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Fractional index of the minimum of ``cost (D, H, W)`` around integer ``idx (H, W)`` by a parabola
    through the three neighbouring costs (offset clamped to [-0.5, 0.5]; 0 at the ends)."""
    D = cost.shape[0]
    i0 = idx.clamp(1, D - 2)
    c = torch.gather(cost, 0, torch.stack([i0 - 1, i0, i0 + 1], 0))                      # (3, H, W)
    denom = c[0] - 2.0 * c[1] + c[2]
    off = torch.where(denom > 1e-9, 0.5 * (c[0] - c[2]) / denom.clamp_min(1e-9), torch.zeros_like(denom))
    off = off.clamp(-0.5, 0.5)
    interior = (idx > 0) & (idx < D - 1)
    return idx.to(cost.dtype) + torch.where(interior, off, torch.zeros_like(off))


def confidence_from_costs(agg: torch.Tensor, idx: torch.Tensor, match_cost: torch.Tensor,
                          margin_scale: float, exclude: int = 2) -> torch.Tensor:
    """Confidence in [0, 1] from the aggregated cost curve and the raw matching cost of the winner.

    Args:
        agg: ``(D, H, W)`` aggregated cost, normalised per direction.
        idx: ``(H, W)`` winning plane.
        match_cost: ``(H, W)`` raw matching cost ``(1 - zncc) / 2`` at the winner.
        margin_scale: aggregated-cost margin mapped to full distinctiveness.
        exclude: planes within this distance of the winner are not competitors.
    Returns:
        ``(H, W)`` = ``clamp(1 - 2 * match_cost) * clamp(margin / margin_scale)``.
    """
    D = agg.shape[0]
    best = torch.gather(agg, 0, idx[None])[0]
    planes = torch.arange(D, device=agg.device).reshape(D, 1, 1)
    far = (planes - idx[None]).abs() > exclude
    second = torch.where(far, agg, torch.full_like(agg, float("inf"))).amin(0)
    margin = (second - best).clamp_min(0.0)
    quality = (1.0 - 2.0 * match_cost).clamp(0.0, 1.0)
    return quality * (margin / margin_scale).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# Estimator
# ----------------------------------------------------------------------------------------------------


def _view_cost(ref: torch.Tensor, ref_mu: torch.Tensor, ref_sigma: torch.Tensor, srcs: Sequence[torch.Tensor],
               K_ref: torch.Tensor, K_srcs: Sequence[torch.Tensor], T_src_refs: Sequence[torch.Tensor],
               depths: torch.Tensor, window: int, neutral: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Matching cost averaged over the views that see each (plane, pixel).

    Returns cost ``(D, H, W)`` (neutral where no view sees it) and the view count ``(D, H, W)``.
    """
    _, _, H, W = ref.shape
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
    """Plane sweep + ZNCC + semi-global aggregation + refinement. Stateless; any number of views >= 1."""

    name = "planesweep"
    recurrent = False
    preferred_measurement_frames = None

    def __init__(self, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0,
                 config: Optional[PlaneSweepConfig] = None):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        self.config = config or PlaneSweepConfig()
        inv = 1.0 / inverse_depth_planes(self.min_depth, self.max_depth, self.config.n_planes)
        #: inverse depths of the planes, increasing with index (far -> near)
        self._inv_planes = torch.tensor(inv, dtype=torch.float32, device=self.device)

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
    @torch.no_grad()
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None) -> DepthResult:
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
        t_cost = time.perf_counter()

        # 2. aggregation
        if cfg.sgm_paths:
            agg = sgm_aggregate(cost, ref_c[0, 0], cfg.p1, cfg.p2, cfg.p2_edge, cfg.sgm_paths)
            agg = agg / cfg.sgm_paths
        else:
            agg = cost
        t_agg = time.perf_counter()

        # 3. winner + sub-plane
        idx = agg.argmin(0)
        frac = subplane_refine(agg, idx)
        step = inv_planes[1] - inv_planes[0]
        inv_c = inv_planes[0] + frac * step                                                # (h, w)
        match = torch.gather(cost, 0, idx[None])[0]
        conf_c = confidence_from_costs(agg, idx, match, cfg.confidence_margin)
        conf_c = torch.where(seen & ~textureless, conf_c, torch.zeros_like(conf_c))

        # 4. upsample + local refinement at the working resolution
        if (w, h) != (W, H):
            up = lambda t: F.interpolate(t[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            inv = up(inv_c)
            conf = up(conf_c)
            seen_f = up(seen.float()) > 0.5
        else:
            inv, conf, seen_f = inv_c, conf_c, seen
        if cfg.refine_steps:
            inv, conf = self._local_refine(reference, measurements, T_src_refs, inv, conf, float(step))
        t_ref = time.perf_counter()

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
            "ms_refine": (t_ref - t_agg) * 1e3,
        }
        return DepthResult(depth=depth.float().cpu().numpy(), confidence=conf.float().cpu().numpy(),
                           K=reference.K.copy(), state=None, info=info)

    def _local_refine(self, reference: Frame, measurements: Sequence[Frame], T_src_refs, inv: torch.Tensor,
                      conf: torch.Tensor, step: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Continuous sweep of ``refine_steps`` inverse depths in ``inv +- refine_span * step`` with a
        full-resolution ZNCC; parabola fit around the best one. Returns refined ``inv`` and ``conf``."""
        cfg = self.config
        W, H = reference.width, reference.height
        ref, K_ref = self._pyramid_level(reference, W, H)
        srcs, Ks = zip(*(self._pyramid_level(m, W, H) for m in measurements))
        n = cfg.refine_steps
        offsets = torch.linspace(-cfg.refine_span, cfg.refine_span, n, device=inv.device) * step   # (n,)
        hyp = (inv[None] + offsets.reshape(n, 1, 1)).clamp_min(1e-6)                       # (n, H, W)
        mu, sigma = window_stats(ref, cfg.refine_window)
        cost, count = _view_cost(ref, mu, sigma, srcs, K_ref, Ks, T_src_refs, 1.0 / hyp, cfg.refine_window,
                                 cfg.neutral_cost)
        best = cost.argmin(0)
        frac = subplane_refine(cost, best)
        spacing = 2.0 * cfg.refine_span * step / (n - 1)
        refined = inv + (frac - (n - 1) / 2.0) * spacing
        ok = (count.amin(0) > 0) & (sigma[0, 0] >= cfg.min_texture_std)
        return torch.where(ok, refined, inv), conf


def build(device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0, **options) -> PlaneSweepEstimator:
    """Registry builder: ``options`` are :class:`PlaneSweepConfig` fields (unknown names are an error)."""
    known = {f.name for f in fields(PlaneSweepConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown planesweep option(s) {unknown}; known: {sorted(known)}")
    return PlaneSweepEstimator(device=device, min_depth=min_depth, max_depth=max_depth,
                               config=PlaneSweepConfig(**options))
