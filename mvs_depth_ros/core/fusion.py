"""Temporal depth fusion: the recent keyframes' depth, re-projected into each new keyframe and fused with it.

A posed video sees every surface many times. :class:`TemporalFusion` keeps the raw depth and confidence of the
last ``history`` keyframes (the video pipeline's recurrent state: reset with it on tracking loss, a time jump
or a change of working size), forward-projects the ``window`` nearest (pose distance) into the new keyframe
and fuses them with the new prediction per pixel:

1. **Splatting** (:func:`splat_depth`): every valid source pixel is back-projected, moved into the target
   camera and rounded to its nearest target pixel; a z-buffer (``scatter_reduce(amin)``) keeps the nearest
   point per target pixel, so an occluded point never overwrites a nearer one; points behind the camera or
   outside the image are dropped. The winner's confidence travels with it. ``fill_holes`` closes the
   one-pixel cracks of the splat with the nearest point of the 3x3 neighbourhood. All sources at once, no
   per-pixel Python.
2. **Robust fusion** (:func:`fuse_candidates`), in inverse depth (the quantity MVS errors are roughly uniform
   in): the candidates of a pixel (the new prediction and the re-projected ones) get weights
   ``confidence ** confidence_power`` (the new prediction's times ``current_weight``); the weighted median
   is the mode of the evidence, candidates within ``inlier_rel`` (relative inverse depth) of it are the
   inliers, the others are rejected, and the fused inverse depth is the inliers' weighted mean: the
   depth-agreement test. ``occlusion_test`` is the visibility test: a re-projected point behind the new
   prediction would be hidden by its surface (or shows through a crack), so it does not vote.
3. **Confidence** keeps its meaning ("how likely this depth is right"): the fused confidence is the agreement
   of the evidence, ``1 - prod(1 - c_j)`` over the inliers (independent votes), times the inliers' share of
   all the weight (contradiction lowers it). A pixel seen once keeps the estimator's confidence, one
   confirmed by other keyframes rises, one contradicted falls: a confidence threshold still trades coverage
   for accuracy.

Causal by default (only past keyframes: what a robot has). :func:`fuse_offline` is the non-causal variant for
recorded sequences (``mvs-depth run --temporal-fusion offline``): each keyframe with its neighbours before
*and* after. Some settings depend on the estimator's error profile (``DepthEstimator.fusion_defaults``).

Shapes: depth ``(H, W)`` float32 metres, NaN invalid; confidence ``(H, W)`` in [0, 1]; ``K`` 3x3; poses
``T_world_cam`` 4x4 camera-to-world (OpenCV optical axes).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Dict, Deque, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .geometry import pose_distance

log = logging.getLogger(__name__)

MODES = ("off", "causal", "offline")
#: values of the estimator-dependent fields for estimators that do not set them (``fusion_defaults``)
DEFAULTS: Dict[str, Any] = {"current_weight": 2.0, "min_source_confidence": 0.0, "fill_holes": True, "occlusion_test": False}


@dataclass(frozen=True)
class FusionConfig:
    """Parameters of the fusion (defaults chosen on the HoloLens sample: see the README)."""

    mode: str = "causal"            # off | causal | offline (offline only for whole recorded sequences)
    window: int = 14                # keyframes re-projected into the new one (offline: on each side)
    history: int = 30               # causal: keyframes kept; the ``window`` nearest by pose distance are used
    inlier_rel: float = 0.07        # |1/d_j - 1/d_median| <= inlier_rel / d_median: agrees with the median
    confidence_power: float = 0.5   # candidate weight = confidence ** confidence_power
    min_weight: float = 1e-3        # candidates with less weight are ignored
    # None below = the estimator's choice (``DepthEstimator.fusion_defaults``, filled in by :meth:`resolved`)
    # else :data:`DEFAULTS`:
    current_weight: Optional[float] = None  # weight multiplier of the new prediction against each re-projected one
    min_source_confidence: Optional[float] = None   # kept keyframes' pixels below it are not re-projected
    fill_holes: Optional[bool] = None   # one-pixel cracks of the splat take their 3x3 neighbourhood's nearest point
    occlusion_test: Optional[bool] = None   # re-projected depth behind the new prediction (beyond inlier_rel)
                                            # is hidden by its surface: it does not vote

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fusion mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.window < 1:
            raise ValueError(f"fusion window must be >= 1, got {self.window}")
        if not self.inlier_rel > 0:
            raise ValueError(f"inlier_rel must be > 0, got {self.inlier_rel}")
        if min(self.current_weight or 0, self.confidence_power, self.min_weight, self.min_source_confidence or 0) < 0:
            raise ValueError("current_weight, confidence_power, min_weight and min_source_confidence must be >= 0")
        if self.history < 1:
            raise ValueError(f"fusion history must be >= 1, got {self.history}")

    def resolved(self, estimator_defaults: Optional[Dict[str, Any]] = None) -> "FusionConfig":
        """This config with the fields left None taken from ``estimator_defaults``, else :data:`DEFAULTS`."""
        fill = {k: (estimator_defaults or {}).get(k, v) for k, v in DEFAULTS.items() if getattr(self, k) is None}
        return replace(self, **fill) if fill else self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass
class KeyframeDepth:
    """One keyframe's depth as the fusion keeps it."""

    depth: np.ndarray          # (H, W) float32, NaN invalid
    confidence: np.ndarray     # (H, W) float32
    K: np.ndarray              # (3, 3)
    T_world_cam: np.ndarray    # (4, 4)


@dataclass
class FusionOutput:
    depth: np.ndarray          # (H, W) float32 fused depth, NaN where no candidate at all
    confidence: np.ndarray     # (H, W) float32 fused confidence
    n_keyframes: int           # re-projected keyframes that contributed (0: the prediction passed through)
    support: np.ndarray        # (H, W) int16 inlier candidates per pixel (the new prediction included)


_GRIDS: dict = {}


def _pixel_grid(h: int, w: int) -> torch.Tensor:
    """(3, H*W) float32 homogeneous pixel centres ``[u, v, 1]`` (integer coordinates, row-major), cached."""
    pix = _GRIDS.get((h, w))
    if pix is None:
        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w)])
        if len(_GRIDS) > 8:
            _GRIDS.clear()
        _GRIDS[(h, w)] = pix
    return pix


def _splat_columns(sources: Sequence[KeyframeDepth], K: np.ndarray, T_world_cam: np.ndarray, height: int,
                   width: int, first: int, columns: int, min_confidence: float = 0.0, fill_holes: bool = False
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Z-buffered forward projection of ``sources`` into the target camera, written to the columns
    ``first + s`` of ``(height * width, columns)`` depth (inf = nothing landed) and confidence buffers.

    ``fill_holes``: a target pixel on which no point landed takes the nearest point of its 3x3 neighbourhood
    (the splat of a surface seen from farther away or at a slant leaves one-pixel cracks; the nearest, not
    the farthest, so that the background never shows through the cracks of a foreground surface)."""
    n_out = height * width * columns
    dump = n_out                                        # one extra slot takes the points that land nowhere
    T_inv = np.linalg.inv(np.asarray(T_world_cam, np.float64))
    K_t = np.asarray(K, np.float64)
    groups: dict = {}
    for s, src in enumerate(sources):
        groups.setdefault(src.depth.shape, []).append(s)
    lin_all, z_all, c_all = [], [], []
    for (hs, ws), idx in groups.items():
        d = torch.from_numpy(np.stack([sources[s].depth for s in idx]).reshape(len(idx), -1))
        c = torch.from_numpy(np.stack([sources[s].confidence for s in idx]).reshape(len(idx), -1))
        # target pixel coordinates P = K_t (R K_s^-1 [u v 1] d + t): the 3x3 products in float64, points in float32
        M = [T_inv @ sources[s].T_world_cam for s in idx]
        A = torch.from_numpy(np.stack([K_t @ m[:3, :3] @ np.linalg.inv(sources[s].K) for m, s in zip(M, idx)]
                                      ).astype(np.float32))
        b = torch.from_numpy(np.stack([K_t @ m[:3, 3] for m in M]).astype(np.float32))
        P = torch.matmul(A, _pixel_grid(hs, ws)) * d[:, None] + b[:, :, None]     # (s, 3, n); NaN depth -> NaN
        z = P[:, 2]
        ok = z > 1e-6                                                             # False for NaN
        if min_confidence > 0:
            ok &= c >= min_confidence
        inv_z = 1.0 / torch.where(ok, z, torch.ones_like(z))
        u = torch.round(P[:, 0] * inv_z)
        v = torch.round(P[:, 1] * inv_z)
        ok &= (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
        col = torch.as_tensor([first + s for s in idx], dtype=torch.float32)[:, None]
        lin = torch.where(ok, (v * width + u) * columns + col, torch.full_like(u, dump)).long()
        lin_all.append(lin.reshape(-1))
        z_all.append(torch.where(ok, z, torch.full_like(z, float("inf"))).reshape(-1))
        c_all.append(c.reshape(-1))
    lin, z, c = (torch.cat(x) if len(x) > 1 else x[0] for x in (lin_all, z_all, c_all))
    out_d = torch.full((n_out + 1,), float("inf"))
    out_d.scatter_reduce_(0, lin, z, reduce="amin")                               # the z-buffer
    win = torch.where(z <= out_d[lin], lin, torch.full_like(lin, dump))           # ties: equal depth, any one
    out_c = torch.zeros(n_out + 1)
    out_c[win] = c
    out_d, out_c = out_d[:n_out].reshape(height * width, columns), out_c[:n_out].reshape(height * width, columns)
    if fill_holes:
        # (H*W, C) is a channels-last (1, C, H, W) image: pooled in place of a transposed copy (2-3x faster)
        img = out_d.view(1, height, width, columns).permute(0, 3, 1, 2)
        neg, at = torch.nn.functional.max_pool2d(-img, 3, stride=1, padding=1, return_indices=True)
        neg = neg.permute(0, 2, 3, 1).reshape(-1, columns)
        at = at.permute(0, 2, 3, 1).reshape(-1, columns)              # flat pixel index per column
        hole = torch.isinf(out_d) & torch.isfinite(neg)
        out_c = torch.where(hole, torch.gather(out_c, 0, at), out_c)
        out_d = torch.where(hole, -neg, out_d)
    return out_d, out_c


def splat_depth(sources: Sequence[KeyframeDepth], K: np.ndarray, T_world_cam: np.ndarray,
                height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Forward-project source depth maps into a target camera with a z-buffer.

    Returns ``(depth, confidence)`` arrays ``(S, height, width)``: per source, the depth (target z) of the
    nearest source point that lands on each target pixel (nearest-pixel rounding), NaN where none lands, and
    that point's confidence (0 where none). Sources may have any resolution.
    """
    S = len(sources)
    if S == 0:
        return np.empty((0, height, width), np.float32), np.empty((0, height, width), np.float32)
    d, c = _splat_columns(sources, K, T_world_cam, height, width, 0, S)
    d = d.T.reshape(S, height, width).numpy().copy()
    d[np.isinf(d)] = np.nan
    return d, c.T.reshape(S, height, width).numpy().copy()


def fuse_candidates(depth: torch.Tensor, weight: torch.Tensor, confidence: torch.Tensor,
                    inlier_rel: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust per-pixel fusion of ``C`` candidates ``(N, C)`` (depth inf/NaN or weight 0 = none).

    Weighted median in inverse depth -> inliers within ``inlier_rel`` (relative) of it -> weighted mean of
    the inliers' inverse depth. Returns ``(depth (N,), confidence (N,), inliers (N,))``; NaN depth and 0
    confidence where a pixel has no candidate.
    """
    valid = (depth > 0) & (weight > 0) & torch.isfinite(depth)
    w = torch.where(valid, weight, torch.zeros_like(weight))
    inv = torch.where(valid, 1.0 / depth, torch.zeros_like(depth))
    # weighted median: sort by inverse depth, the first cumulative weight >= half of the total
    inv_s, order = torch.sort(inv, dim=1)
    cum = torch.cumsum(torch.gather(w, 1, order), 1)
    total = cum[:, -1:]
    at = (cum < 0.5 * total).sum(1, keepdim=True).clamp(max=depth.shape[1] - 1)
    med = torch.gather(inv_s, 1, at)                                              # (N, 1)
    inl = valid & ((inv - med).abs() <= inlier_rel * med)
    w_in = torch.where(inl, w, torch.zeros_like(w))
    w_in_sum = w_in.sum(1)
    has = w_in_sum > 0
    w_in_safe = torch.where(has, w_in_sum, torch.ones_like(w_in_sum))
    inv_f = (w_in * inv).sum(1) / w_in_safe
    fused = torch.where(has, 1.0 / torch.where(has, inv_f, torch.ones_like(inv_f)), torch.full_like(inv_f, float("nan")))
    # confidence: independent votes of the inliers, scaled by their share of all the weight
    agree = 1.0 - torch.prod(torch.where(inl, 1.0 - confidence, torch.ones_like(confidence)), 1)
    conf = torch.where(has, agree * w_in_sum / torch.where(has, total[:, 0], torch.ones_like(w_in_sum)),
                       torch.zeros_like(agree))
    return fused, conf, inl.sum(1).to(torch.int16)


def fuse_keyframe(depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  others: Sequence[KeyframeDepth], config: FusionConfig) -> FusionOutput:
    """Fuse one keyframe's prediction with ``others`` re-projected into it."""
    config = config.resolved()
    h, w = depth.shape
    depth = np.asarray(depth, np.float32)
    confidence = np.clip(np.asarray(confidence, np.float32), 0.0, 1.0)
    if not others:
        return FusionOutput(depth.copy(), confidence.copy(), 0, np.isfinite(depth).astype(np.int16))
    C = len(others) + 1
    d_all, c_all = _splat_columns(others, K, T_world_cam, h, w, 1, C, config.min_source_confidence,
                                  config.fill_holes)
    d_now = torch.from_numpy(depth).reshape(-1)
    c_now = torch.from_numpy(confidence).reshape(-1)
    d_all[:, 0] = d_now
    c_all[:, 0] = c_now
    wt = c_all ** config.confidence_power if config.confidence_power != 1.0 else c_all.clone()
    wt[:, 0] *= config.current_weight
    wt[wt < config.min_weight] = 0.0
    if config.occlusion_test:
        # visibility: a re-projected point farther than the new prediction would be hidden behind its surface
        # (or shows through a hole of the splat): no evidence against it. One in front of it contradicts it.
        now_ok = (wt[:, :1] > 0) & torch.isfinite(d_now)[:, None]
        behind = now_ok & (d_all[:, 1:] * (1.0 - config.inlier_rel) > d_now[:, None])
        wt[:, 1:][behind] = 0.0
    fused, conf, support = fuse_candidates(d_all, wt, c_all, config.inlier_rel)
    # the new prediction is never dropped: where no candidate has weight, it passes through
    keep_now = torch.isnan(fused) & torch.isfinite(d_now)
    fused = torch.where(keep_now, d_now, fused)
    conf = torch.where(keep_now, c_now, conf)
    contributed = int(torch.isfinite(d_all[:, 1:]).any(0).sum())
    return FusionOutput(fused.reshape(h, w).numpy(), conf.reshape(h, w).numpy(), contributed,
                        support.reshape(h, w).numpy())


class TemporalFusion:
    """Causal fusion state of a video pipeline: the last ``history`` keyframes' raw predictions."""

    def __init__(self, config: FusionConfig = FusionConfig()):
        self.config = config = config.resolved()
        self._history: Deque[KeyframeDepth] = deque(maxlen=max(config.history, config.window))
        self._shape: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self._history)

    def reset(self) -> None:
        self._history.clear()
        self._shape = None

    def _nearest(self, T_world_cam: np.ndarray) -> List[KeyframeDepth]:
        """The ``window`` kept keyframes nearest to the new pose (DeepVideoMVS' pose distance)."""
        kept = list(self._history)
        if len(kept) <= self.config.window:
            return kept
        dist = [pose_distance(T_world_cam, k.T_world_cam)[0] for k in kept]
        return [kept[i] for i in sorted(np.argsort(dist, kind="stable")[: self.config.window])]

    def step(self, depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> FusionOutput:
        """Fuse a new keyframe's prediction with the kept ones, then keep it (its raw prediction)."""
        if self._shape is not None and depth.shape != self._shape:
            log.info("temporal fusion: depth size changed %s -> %s, state reset", self._shape, depth.shape)
            self.reset()
        out = fuse_keyframe(depth, confidence, K, T_world_cam, self._nearest(T_world_cam), self.config)
        # the raw prediction is kept, not the fused one: fused maps re-fused would count the same evidence twice
        # (measured on the HoloLens sample: keeping fused maps is worse, 0.0850 vs 0.0800 abs_rel)
        self._history.append(KeyframeDepth(np.asarray(depth, np.float32), np.asarray(confidence, np.float32),
                                           np.asarray(K, np.float64), np.asarray(T_world_cam, np.float64)))
        self._shape = depth.shape
        return out


def fuse_offline(keyframes: Sequence[KeyframeDepth], config: FusionConfig = FusionConfig()) -> List[FusionOutput]:
    """Non-causal fusion of a recorded sequence: each keyframe with ``window`` neighbours on each side (in
    keyframe order; all keyframes must come from one continuous track)."""
    out = []
    for i, kf in enumerate(keyframes):
        others = [keyframes[j] for j in range(max(0, i - config.window), min(len(keyframes), i + config.window + 1))
                  if j != i and keyframes[j].depth.shape == kf.depth.shape]
        out.append(fuse_keyframe(kf.depth, kf.confidence, kf.K, kf.T_world_cam, others, config))
    return out
