"""Multi-view geometric consistency filtering of depth maps (MVSNet / PatchmatchNet style).

A reference pixel ``p`` with depth ``d`` is *consistent with* a source view when

1. its 3D point projects inside the source image, in front of the camera, where the source depth map is
   valid (bilinear sample of the source depth, all four neighbours valid);
2. the source point at that sample, re-projected into the reference view, lands within ``max_reproj_px``
   pixels of ``p`` and its depth ``d'`` satisfies ``|d' - d| / d < max_rel_depth``.

The pixel is kept when its confidence is ``>= min_confidence`` and it is consistent with at least
``min_views`` of its neighbouring views. This is the check of MVSNet's ``eval.py``
(``check_geometric_consistency``: 1 px, 1 % relative depth, >= 3 views there), done for all source
views and pixels at once in torch with ``grid_sample``.

Shapes: depth maps ``(H, W)`` float32 metres, NaN invalid; ``K`` (3, 3); poses ``T_world_cam`` (4, 4)
camera-to-world, OpenCV optical axes. Neighbouring views may have another resolution than the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import pose_distance


@dataclass(frozen=True)
class ConsistencyConfig:
    """Thresholds of the filter (MVSNet's defaults are 1 px / 1 % / 3 views on DTU; video has smaller
    baselines and noisier depth, so 1 px / 1 % / 2 views of 4 neighbours is our default)."""

    min_confidence: float = 0.0   # pixels below this confidence are dropped before the geometric check
    max_reproj_px: float = 1.0    # round-trip reprojection error, pixels of the reference image
    max_rel_depth: float = 0.01   # |d_reprojected - d| / d
    min_views: int = 2            # consistent neighbouring views needed to keep a pixel
    n_neighbors: int = 4          # neighbouring views per reference (nearest by pose distance)

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_confidence <= 1.0):
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.max_reproj_px <= 0 or self.max_rel_depth <= 0:
            raise ValueError(f"max_reproj_px and max_rel_depth must be > 0, got {self.max_reproj_px}, "
                             f"{self.max_rel_depth}")
        if self.min_views < 0 or self.n_neighbors < 0:
            raise ValueError(f"min_views and n_neighbors must be >= 0, got {self.min_views}, {self.n_neighbors}")
        if self.min_views > self.n_neighbors:
            raise ValueError(f"min_views ({self.min_views}) cannot exceed n_neighbors ({self.n_neighbors})")


def _pixel_rays(h: int, w: int, K: torch.Tensor) -> torch.Tensor:
    """(3, H*W) rays ``K^-1 [u, v, 1]`` through the pixel centres."""
    v, u = torch.meshgrid(torch.arange(h, dtype=K.dtype, device=K.device),
                          torch.arange(w, dtype=K.dtype, device=K.device), indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, dtype=K.dtype, device=K.device)])
    return torch.linalg.inv(K) @ pix


def consistent_view_count(ref_depth: np.ndarray, ref_K: np.ndarray, ref_T: np.ndarray,
                          src_depths: Sequence[np.ndarray], src_Ks: Sequence[np.ndarray],
                          src_Ts: Sequence[np.ndarray], max_reproj_px: float = 1.0, max_rel_depth: float = 0.01,
                          device: str = "cpu") -> np.ndarray:
    """Number of source views each reference pixel is geometrically consistent with: (H, W) int32.

    Pixels with an invalid (NaN / <= 0) reference depth get 0. Source views are grouped by resolution and
    checked in one batched pass per group.
    """
    dev = torch.device(device)
    h, w = ref_depth.shape
    count = torch.zeros(h * w, dtype=torch.int32, device=dev)
    if len(src_depths) == 0:
        return count.reshape(h, w).cpu().numpy()
    d_ref = torch.as_tensor(np.asarray(ref_depth, np.float32), device=dev).reshape(-1)
    ref_ok = torch.isfinite(d_ref) & (d_ref > 0)
    d_ref = torch.where(ref_ok, d_ref, torch.ones_like(d_ref))
    K_ref = torch.as_tensor(np.asarray(ref_K, np.float64), device=dev)
    rays_ref = _pixel_rays(h, w, K_ref).float()                       # (3, N)
    X_ref = rays_ref * d_ref[None]                                    # (3, N) in the reference camera
    pix_ref = torch.stack([rays_ref[0] * K_ref[0, 0].float() + K_ref[0, 2].float(),
                           rays_ref[1] * K_ref[1, 1].float() + K_ref[1, 2].float()])  # (2, N) exact centres
    T_ref = np.asarray(ref_T, np.float64)

    groups: dict = {}
    for i, d in enumerate(src_depths):
        groups.setdefault(tuple(np.asarray(d).shape), []).append(i)
    for (hs, ws), idx in groups.items():
        S = len(idx)
        D_src = torch.as_tensor(np.stack([np.asarray(src_depths[i], np.float32) for i in idx]), device=dev)
        valid_src = (torch.isfinite(D_src) & (D_src > 0)).float()
        D_src = torch.where(valid_src > 0, D_src, torch.zeros_like(D_src))
        # T_src_ref and T_ref_src, float64 products then float32
        T_sr = np.stack([np.linalg.inv(np.asarray(src_Ts[i], np.float64)) @ T_ref for i in idx])
        T_rs = np.linalg.inv(T_sr)
        K_s = np.stack([np.asarray(src_Ks[i], np.float64) for i in idx])
        T_sr_t = torch.as_tensor(T_sr, dtype=torch.float32, device=dev)
        T_rs_t = torch.as_tensor(T_rs, dtype=torch.float32, device=dev)
        K_s_t = torch.as_tensor(K_s, dtype=torch.float32, device=dev)
        K_s_inv = torch.as_tensor(np.linalg.inv(K_s), dtype=torch.float32, device=dev)
        K_r_t = K_ref.float()

        # 1. reference points into the source views
        X_s = T_sr_t[:, :3, :3] @ X_ref[None] + T_sr_t[:, :3, 3:]    # (S, 3, N)
        z_s = X_s[:, 2]
        front = z_s > 1e-6
        z_safe = torch.where(front, z_s, torch.ones_like(z_s))
        uv_s = (K_s_t @ X_s)[:, :2] / z_safe[:, None]                # (S, 2, N)
        # 2. source depth at those positions (bilinear, all four neighbours valid)
        grid = torch.stack([uv_s[:, 0] / max(ws - 1, 1) * 2 - 1, uv_s[:, 1] / max(hs - 1, 1) * 2 - 1], dim=-1)
        grid = grid[:, None]                                          # (S, 1, N, 2)
        samp = F.grid_sample(torch.stack([D_src, valid_src], 1), grid, mode="bilinear",
                             padding_mode="zeros", align_corners=True)[:, :, 0]  # (S, 2, N)
        wsum = samp[:, 1]
        ok = front & (wsum > 0.999)
        d_s = samp[:, 0] / torch.where(ok, wsum, torch.ones_like(wsum))
        # 3. source points back into the reference view
        hom = torch.cat([uv_s, torch.ones_like(uv_s[:, :1])], 1)      # (S, 3, N)
        X_s2 = (K_s_inv @ hom) * d_s[:, None]
        X_r2 = T_rs_t[:, :3, :3] @ X_s2 + T_rs_t[:, :3, 3:]
        z_r = X_r2[:, 2]
        ok &= z_r > 1e-6
        uv_r = (K_r_t @ X_r2)[:, :2] / torch.where(ok, z_r, torch.ones_like(z_r))[:, None]
        err_px = torch.linalg.vector_norm(uv_r - pix_ref[None], dim=1)
        rel = (z_r - d_ref[None]).abs() / d_ref[None]
        good = ok & (err_px < max_reproj_px) & (rel < max_rel_depth)
        count += good.sum(0).to(torch.int32)
    count = torch.where(ref_ok, count, torch.zeros_like(count))
    return count.reshape(h, w).cpu().numpy()


def select_neighbors(poses: Sequence[np.ndarray], n: int, candidates: Optional[Sequence[int]] = None,
                     causal: bool = False) -> List[List[int]]:
    """For each pose, the ``n`` other poses nearest by DeepVideoMVS' pose distance (ties: lower index).

    ``candidates`` restricts the neighbours to those indices (e.g. views that have a depth map).
    ``causal=True`` takes them only among earlier indices (``j < i``), what an online system has when
    pose ``i`` arrives; the first poses then get fewer than ``n`` (pose 0 none).
    """
    N = len(poses)
    cand = list(range(N)) if candidates is None else list(candidates)
    out = []
    for i in range(N):
        dist = [(pose_distance(poses[i], poses[j])[0], j) for j in cand if j != i and (not causal or j < i)]
        out.append([j for _, j in sorted(dist)[:n]])
    return out


@dataclass
class ConsistencyResult:
    depths: List[np.ndarray]                   # filtered copies (NaN where removed)
    counts: List[np.ndarray]                   # consistent views per pixel
    kept: List[int] = field(default_factory=list)          # pixels kept per frame
    valid_in: List[int] = field(default_factory=list)      # finite input pixels per frame
    confident: List[int] = field(default_factory=list)     # finite and >= min_confidence

    @property
    def kept_fraction(self) -> float:
        """Kept pixels / finite input pixels over all frames."""
        n = sum(self.valid_in)
        return float(sum(self.kept) / n) if n else 0.0

    def summary(self) -> dict:
        n = sum(self.valid_in)
        return {"frames": len(self.depths), "input_pixels": int(n),
                "confident_fraction": float(sum(self.confident) / n) if n else 0.0,
                "kept_fraction": self.kept_fraction}


def filter_depth_maps(depths: Sequence[np.ndarray], Ks: Sequence[np.ndarray], poses: Sequence[np.ndarray],
                      confidences: Optional[Sequence[Optional[np.ndarray]]] = None,
                      config: ConsistencyConfig = ConsistencyConfig(),
                      neighbors: Optional[Sequence[Sequence[int]]] = None, device: str = "cpu") -> ConsistencyResult:
    """Filter every depth map of a posed set against its neighbours (the unfiltered maps, as MVSNet does).

    ``neighbors[i]`` lists the views to check frame ``i`` against (default: :func:`select_neighbors` with
    ``config.n_neighbors``). With ``config.min_views == 0`` only the confidence threshold applies.
    """
    n = len(depths)
    if not (len(Ks) == len(poses) == n) or (confidences is not None and len(confidences) != n):
        raise ValueError(f"need as many K / poses / confidences as depth maps ({n}), got {len(Ks)}, {len(poses)}, "
                         f"{None if confidences is None else len(confidences)}")
    if neighbors is None:
        neighbors = select_neighbors(poses, config.n_neighbors) if config.min_views > 0 else [[] for _ in range(n)]
    res = ConsistencyResult(depths=[], counts=[])
    for i in range(n):
        d = np.asarray(depths[i], np.float32)
        valid = np.isfinite(d) & (d > 0)
        keep = valid.copy()
        if confidences is not None and confidences[i] is not None and config.min_confidence > 0:
            keep &= np.asarray(confidences[i]) >= config.min_confidence
        n_conf = int(keep.sum())
        if config.min_views > 0:
            nb = list(neighbors[i])
            count = consistent_view_count(np.where(keep, d, np.nan), Ks[i], poses[i], [depths[j] for j in nb],
                                          [Ks[j] for j in nb], [poses[j] for j in nb], config.max_reproj_px,
                                          config.max_rel_depth, device)
            keep &= count >= config.min_views
        else:
            count = np.zeros(d.shape, np.int32)
        res.depths.append(np.where(keep, d, np.float32(np.nan)).astype(np.float32))
        res.counts.append(count)
        res.kept.append(int(keep.sum()))
        res.valid_in.append(int(valid.sum()))
        res.confident.append(n_conf)
    return res
