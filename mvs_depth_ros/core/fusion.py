"""Temporal depth fusion: the recent keyframes' depth, re-projected into each new keyframe and fused with it.

A posed video sees every surface many times. :class:`TemporalFusion` keeps the raw depth and confidence of the
last ``history`` keyframes (the video pipeline's recurrent state: reset with it on tracking loss, a time jump
or a change of working size), forward-projects the ``window`` nearest (pose distance) into the new keyframe
and fuses them with the new prediction per pixel:

1. **Splatting** (:func:`splat_depth`): every valid source pixel is back-projected (once per kept keyframe:
   the points are cached with it), moved into the target camera and rounded to its nearest target pixel; a
   z-buffer keeps the nearest point per target pixel, so an occluded point never overwrites a nearer one;
   points behind the camera or outside the image are dropped. The z-buffer is one ``scatter_reduce(amin)``
   of int64 keys ``depth bits << 32 | confidence bits`` (positive floats order as integers), so the winner's
   confidence travels with it. ``fill_holes`` closes the one-pixel cracks of the splat with the nearest
   point of the 3x3 neighbourhood. Pixels at depth discontinuities (``edge_rel``: at least 3 of the 8
   neighbours, a side of the 3x3 neighbourhood, more than ``edge_rel`` away in inverse depth) are not
   re-projected: depth at an edge is often between the two surfaces (upsampled or smoothed depth, flying
   pixels) and would land where neither is; an isolated outlier is such a pixel itself, its neighbours are
   not. No per-pixel Python.
2. **Robust fusion** (:func:`fuse_candidates`), in inverse depth (the quantity MVS errors are roughly uniform
   in): the candidates of a pixel (the new prediction and the re-projected ones) get weights
   ``confidence ** confidence_power`` (the new prediction's times ``current_weight``); the weighted median
   is the mode of the evidence, candidates within ``inlier_rel`` (relative inverse depth) of it are the
   inliers, the others are rejected, and the fused inverse depth is the inliers' weighted mean: the
   depth-agreement test. ``occlusion_test`` is the visibility test: a re-projected point behind the new
   prediction would be hidden by its surface (or shows through a crack), so it does not vote.
   ``edge_current``: the new prediction's own edge pixels do not vote either (they pass through where no
   other candidate has weight).
   With ``evidence_stride`` n (default 2) the re-projected keyframes are splatted (every n-th pixel) and their
   median taken on an n times coarser grid of the new keyframe, and the new prediction joins each cell's
   re-projected inliers at full resolution: ~1/n**2 of the work (HoloLens: the same accuracy, see README).
3. **Confidence** keeps its meaning ("how likely this depth is right"): the fused confidence is the agreement
   of the evidence, ``1 - prod(1 - c_j)`` over the inliers (independent votes), times the inliers' share of
   all the weight (contradiction lowers it). A pixel seen once keeps the estimator's confidence, one
   confirmed by other keyframes rises, one contradicted falls: a confidence threshold still trades coverage
   for accuracy. On the coarse evidence grid a pixel of the new prediction that is no inlier of its cell's
   median while no re-projected keyframe agrees with that median either (the median is then the cell's own
   sample of the prediction, which the pixel contradicts) passes through with confidence 0.

**The state feeds the estimator** (``prior``, on where an estimator's ``fusion_defaults`` say so): the last
fused keyframe re-projected into the new one (:meth:`TemporalFusion.prior`) is handed to estimators with
``accepts_prior`` (the plane sweep narrows its per-pixel search around it, ``PlaneSweepConfig.prior_weight``).

Causal by default (only past keyframes: what a robot has). :func:`fuse_offline` is the non-causal variant for
recorded sequences (``mvs-depth run --temporal-fusion offline``): each keyframe with its neighbours before
*and* after. Some settings depend on the estimator's error profile (``DepthEstimator.fusion_defaults``).

Shapes: depth ``(H, W)`` float32 metres, NaN invalid; confidence ``(H, W)`` in [0, 1]; ``K`` 3x3; poses
``T_world_cam`` 4x4 camera-to-world (OpenCV optical axes).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Deque, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import pose_distance
from .threads import single_threaded

log = logging.getLogger(__name__)

MODES = ("off", "causal", "offline")
#: values of the estimator-dependent fields for estimators that do not set them (``fusion_defaults``)
DEFAULTS: Dict[str, Any] = {"current_weight": 2.0, "min_source_confidence": 0.0, "fill_holes": True, "occlusion_test": False,
                            "prior": False, "edge_rel": 0.07, "edge_current": False}


@dataclass(frozen=True)
class FusionConfig:
    """Parameters of the fusion (defaults chosen on the HoloLens sample: see the README)."""

    mode: str = "causal"            # off | causal | offline (offline only for whole recorded sequences)
    window: int = 14                # keyframes re-projected into the new one (offline: on each side)
    history: int = 30               # causal: keyframes kept; the ``window`` nearest by pose distance are used
    inlier_rel: float = 0.07        # |1/d_j - 1/d_median| <= inlier_rel / d_median: agrees with the median
    confidence_power: float = 0.5   # candidate weight = confidence ** confidence_power
    min_weight: float = 1e-3        # candidates with less weight are ignored
    #: the re-projected keyframes are splatted and their robust median taken on a grid this many times coarser
    #: (every n-th pixel of each kept keyframe into n x n target cells); the new prediction is fused at full
    #: resolution against them. 1 = everything at full resolution (~4x the time at 2)
    evidence_stride: int = 2
    # None below = the estimator's choice (``DepthEstimator.fusion_defaults``, filled in by :meth:`resolved`)
    # else :data:`DEFAULTS`:
    current_weight: Optional[float] = None  # weight multiplier of the new prediction against each re-projected one
    min_source_confidence: Optional[float] = None   # kept keyframes' pixels below it are not re-projected
    fill_holes: Optional[bool] = None   # one-pixel cracks of the splat take their 3x3 neighbourhood's nearest point
    occlusion_test: Optional[bool] = None   # re-projected depth behind the new prediction (beyond inlier_rel)
                                            # is hidden by its surface: it does not vote
    prior: Optional[bool] = None    # causal: the last fused keyframe re-projected into the new one is given to
                                    # the estimator as a depth prior (estimators with ``accepts_prior``)
    #: depth discontinuities: a pixel with at least 3 of its 8 neighbours more than ``edge_rel`` (relative, inverse
    #: depth) away is not re-projected (kept keyframes, and the last fused one for the prior): depth at an edge is
    #: often between the two surfaces (interpolated, flying pixels) and lands where neither is. 0 = off
    #: (HoloLens sample, causal, 0.07 vs off: IterMVS 0.0765 vs 0.0771, PatchmatchNet 0.2175 vs 0.2183, plane sweep
    #: 0.1065 vs 0.1075 without ``edge_current``; 2026-12-08, 2-vCPU AMD EPYC). Cost: ~0.5 ms per kept keyframe at
    #: 320x256 (once, on the evidence grid's pixels), ~1 ms for the new prediction with ``edge_current``
    edge_rel: Optional[float] = None
    edge_current: Optional[bool] = None     # the new prediction's edge pixels do not vote either (they pass
                                            # through where no other candidate has weight)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fusion mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.window < 1:
            raise ValueError(f"fusion window must be >= 1, got {self.window}")
        if not self.inlier_rel > 0:
            raise ValueError(f"inlier_rel must be > 0, got {self.inlier_rel}")
        if min(self.current_weight or 0, self.confidence_power, self.min_weight, self.min_source_confidence or 0,
               self.edge_rel or 0) < 0:
            raise ValueError("current_weight, confidence_power, min_weight, min_source_confidence and edge_rel must be "
                             ">= 0")
        if self.evidence_stride < 1:
            raise ValueError(f"evidence_stride must be >= 1, got {self.evidence_stride}")
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
    #: derived data computed once and re-used for every keyframe it is re-projected into (back-projected points)
    cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class FusionOutput:
    depth: np.ndarray          # (H, W) float32 fused depth, NaN where no candidate at all
    confidence: np.ndarray     # (H, W) float32 fused confidence
    n_keyframes: int           # re-projected keyframes that contributed (0: the prediction passed through)
    support: np.ndarray        # (H, W) int16 inlier candidates per pixel (the new prediction included)


_EMPTY = 0x7F800000 << 32          # packed key of "nothing": depth +inf (float32 bits), confidence 0
_LOW = 0xFFFFFFFF
_GRIDS: dict = {}
_WORK = threading.local()


def _workspace(shape: Tuple[int, ...]) -> torch.Tensor:
    """An int64 scratch buffer of ``shape``, kept per thread and re-used from call to call (a fresh ~10 MB
    buffer per keyframe costs more in page faults than the z-buffer itself)."""
    buf = getattr(_WORK, "buf", None)
    if buf is None or tuple(buf.shape) != tuple(shape):
        buf = _WORK.buf = torch.empty(shape, dtype=torch.int64)
    return buf


def _rays(h: int, w: int) -> np.ndarray:
    """(3, H*W) float64 homogeneous pixel centres ``[u, v, 1]`` (integer coordinates, row-major), cached."""
    pix = _GRIDS.get((h, w))
    if pix is None:
        v, u = np.mgrid[0:h, 0:w]
        pix = np.stack([u.reshape(-1), v.reshape(-1), np.ones(h * w)]).astype(np.float64)
        if len(_GRIDS) > 8:
            _GRIDS.clear()
        _GRIDS[(h, w)] = pix
    return pix


def _pack(depth: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """int64 keys ``depth bits << 32 | confidence bits`` (float32, both >= 0): ordered by depth first, so one
    ``amin`` is a z-buffer that carries the winner's confidence along."""
    return (depth.view(torch.int32).to(torch.int64) << 32) | confidence.view(torch.int32).to(torch.int64)


def _unpack(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(depth, confidence) float32 of packed keys (+inf / 0 where empty)."""
    return (keys >> 32).to(torch.int32).view(torch.float32), (keys & _LOW).to(torch.int32).view(torch.float32)


def _edges(depth: torch.Tensor, ok: torch.Tensor, rel: float, stride: int = 1) -> torch.Tensor:
    """``(H, W)`` bool: valid pixels at a depth discontinuity, i.e. with at least 3 of their 8 neighbours (a side
    of the 3x3 neighbourhood, as a straight edge through it gives) more than ``rel`` of the pixel's inverse depth
    away from it. Invalid neighbours do not count; an isolated outlier is an edge itself, its neighbours are
    not (one differing neighbour each). ``stride``: only at every ``stride``-th pixel along each axis
    (``[::stride, ::stride]`` of the full map, at 1/stride**2 of the work)."""
    h, w = depth.shape
    inv = torch.where(ok, depth.reciprocal(), float("nan"))
    pad = F.pad(inv, (1, 1, 1, 1), value=float("nan"))                  # NaN compares False: ignored
    inv = inv[::stride, ::stride]
    hi, lo = inv * (1.0 + rel), inv * (1.0 - rel)
    count = torch.zeros(inv.shape, dtype=torch.uint8)
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            nb = pad[dy:dy + h:stride, dx:dx + w:stride]
            count += (nb > hi) | (nb < lo)
    return (count >= 3) & ok[::stride, ::stride]


def _keyframe_edges(src: "KeyframeDepth", rel: float, stride: int) -> np.ndarray:
    """:func:`_edges` of a kept keyframe's depth at ``stride``, cached with it (from its full-resolution map when
    that was computed already: the new prediction's, with ``edge_current``)."""
    full = src.cache.get(("edges", float(rel), 1))
    if full is not None:
        return full[::stride, ::stride]
    key = ("edges", float(rel), stride)
    hit = src.cache.get(key)
    if hit is None:
        d = torch.from_numpy(np.asarray(src.depth, np.float32))
        hit = src.cache[key] = _edges(d, torch.isfinite(d) & (d > 0), rel, stride).numpy()
    return hit


def _source_points(src: "KeyframeDepth", min_confidence: float, stride: int = 1,
                   edge_rel: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The source's valid pixels back-projected into its own camera, ``(3, M)`` float32, and their confidence
    bits ``(M,)`` int32 (the low words of their packed keys): computed once per keyframe (and gate), re-used
    for every target it is splatted into. ``stride``: every ``stride``-th pixel along each axis only;
    ``edge_rel`` > 0: pixels at depth discontinuities (:func:`_edges`, on the full-resolution map) left out."""
    key = ("points", float(min_confidence), stride, float(edge_rel))
    hit = src.cache.get(key)
    if hit is not None:
        return hit
    h, w = src.depth.shape
    d = np.asarray(src.depth, np.float32)
    c = np.nan_to_num(np.clip(np.asarray(src.confidence, np.float32), 0.0, 1.0), nan=0.0)
    grid = _rays(h, w)
    edge = _keyframe_edges(src, edge_rel, stride) if edge_rel > 0 else None
    if stride > 1:
        d, c = d[::stride, ::stride], c[::stride, ::stride]
        grid = grid.reshape(3, h, w)[:, ::stride, ::stride].reshape(3, -1)
    d, c = d.reshape(-1), c.reshape(-1)
    ok = np.isfinite(d) & (d > 0)
    if edge is not None:
        ok &= ~edge.reshape(-1)
    if min_confidence > 0:
        ok &= c >= min_confidence
    sel = np.flatnonzero(ok)
    rays = np.linalg.inv(np.asarray(src.K, np.float64)) @ grid[:, sel]
    X = torch.from_numpy((rays * d[sel]).astype(np.float32))
    cbits = torch.from_numpy(c[sel].copy()).view(torch.int32)
    src.cache[key] = (X, cbits)
    return X, cbits


def _splat_keys(sources: Sequence["KeyframeDepth"], K: np.ndarray, T_world_cam: np.ndarray, height: int,
                width: int, first: int, columns: int, min_confidence: float = 0.0, fill_holes: bool = False,
                stride: int = 1, edge_rel: float = 0.0) -> torch.Tensor:
    """Z-buffered forward projection of ``sources`` into the target camera: packed keys (:func:`_pack`)
    ``(columns, height + 2, width + 2)`` (a one-pixel empty ring around each image), source ``s`` in column
    ``first + s``, :data:`_EMPTY` where nothing landed (and in the other columns).

    Every valid source point is moved into the target camera (``K_t [R | t] X``), rounded to its nearest
    target pixel and written with ``scatter_reduce(amin)`` of its packed (depth, confidence) key: the nearest
    point of a pixel wins, with its confidence. Points behind the camera never land; points outside the
    image land on the ring, which is cleared afterwards.

    ``fill_holes``: a target pixel on which no point landed takes the nearest point of its 3x3 neighbourhood
    (the splat of a surface seen from farther away or at a slant leaves one-pixel cracks; the nearest, not
    the farthest, so that the background never shows through the cracks of a foreground surface)."""
    hp, wp = height + 2, width + 2
    T_inv = np.linalg.inv(np.asarray(T_world_cam, np.float64))
    K_t = np.asarray(K, np.float64)
    buf = _workspace((columns, hp, wp))
    buf.fill_(_EMPTY)
    used, cols, counts = [], [], []
    for s, src in enumerate(sources):
        X, cbits = _source_points(src, min_confidence, stride, edge_rel)
        if X.shape[1] == 0:
            continue
        used.append((src, X, cbits))
        cols.append((first + s) * hp * wp + wp + 1)
        counts.append(X.shape[1])
    if used:
        # all sources at once (at the coarse grid's ~20k points per source, per-op overhead dominates): each
        # source's projection written straight into its columns of one (3, N) array, its confidence words into
        # its rows of the (N, 2) keys (no concatenation copies)
        N = sum(counts)
        P = torch.empty((3, N), dtype=torch.float32)
        key = torch.empty((N, 2), dtype=torch.int32)
        a = 0
        for (src, X, cbits), cnt in zip(used, counts):
            M = T_inv @ np.asarray(src.T_world_cam, np.float64)
            torch.addmm(torch.from_numpy((K_t @ M[:3, 3:]).astype(np.float32)),
                        torch.from_numpy((K_t @ M[:3, :3]).astype(np.float32)), X, out=P[:, a:a + cnt])
            key[a:a + cnt, 0] = cbits                                  # little-endian: the low word
            a += cnt
        z = P[2]
        uv = P[:2] * z.reciprocal()
        u = uv[0].clamp_(-1.0, float(width)).round_()                # outside the image: onto the ring
        v = uv[1].clamp_(-1.0, float(height)).round_()
        lin = v.mul_(wp).add_(u)                                      # exact in float32: < 2**24
        if buf.numel() < 2 ** 24:
            # column + ring offset: per source, on its contiguous run of points (exact in float32 below 2**24,
            # no (points,) int64 offset vector to build)
            a = 0
            for off, cnt in zip(cols, counts):
                lin[a:a + cnt] += off
                a += cnt
            lin = lin.long()
        else:
            lin = lin.long() + torch.repeat_interleave(torch.tensor(cols), torch.tensor(counts))
        behind = z <= 1e-6
        if bool(behind.any()):
            lin[behind] = 0                                           # a ring pixel: never lands
        key[:, 1] = z.view(torch.int32)                               # the high word: depth bits
        buf.view(-1).scatter_reduce_(0, lin, key.view(torch.int64).view(-1), reduce="amin")   # the z-buffer
    buf[:, 0], buf[:, -1], buf[:, :, 0], buf[:, :, -1] = _EMPTY, _EMPTY, _EMPTY, _EMPTY
    if fill_holes:
        # 3x3 minimum on the flat buffer (contiguous shifted slices: ~3x faster than 2-D strided ones): entry k of
        # `near` is the minimum around flat position k + wp + 1. An image pixel's 3x3 neighbourhood stays inside
        # its padded image; the ring's own values (wrapped across rows and columns) are never read as pixels
        f = buf[first:first + len(sources)].view(-1)                 # the other columns are empty
        row = torch.minimum(f[:-2], f[1:-1])
        torch.minimum(row, f[2:], out=row)
        near = torch.minimum(row[:-2 * wp], row[wp:-wp])
        torch.minimum(near, row[2 * wp:], out=near)
        mid = f[wp + 1:f.numel() - wp - 1]
        torch.where(mid == _EMPTY, near, mid, out=mid)
    return buf


def _merge_network(n: int) -> List[Tuple[int, int]]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` elements (the network of the
    next power of two without the comparators that touch the missing, +inf, elements: they never swap)."""
    hit = _NETWORKS.get(n)
    if hit is not None:
        return hit
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    _NETWORKS[n] = pairs = [(a, b) for a, b in pairs if b < n]
    return pairs


_NETWORKS: dict = {}
_QMAX = 4095                        # weight quantisation of the median's sort keys (12 bits)


def _weighted_median(inv: torch.Tensor, weight: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Weighted median over the first axis of ``inv`` (>= 0): a sorting network over int32 keys, the inverse
    depth's float bits (positive floats sort as integers) whose lowest 12 bits are replaced by the weight
    quantised to 0..4095 (the median is located to 2**-11 relative, far inside any inlier band), then the
    first cumulative weight >= half of the total (torch.sort of many short rows is ~20x slower)."""
    bits = inv.view(torch.int32) & ~_QMAX
    q = (weight * (_QMAX / max_weight)).round_().clamp_(0, _QMAX).to(torch.int32)
    rows = list((bits | q).unbind(0))
    for i, j in _merge_network(len(rows)):
        rows[i], rows[j] = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
    cums, cum = [], None
    for r in rows:
        cum = (r & _QMAX) if cum is None else cum + (r & _QMAX)
        cums.append(cum)
    total = cum                                                                  # exact: integers
    med = rows[-1]
    for r, c in zip(rows[-2::-1], cums[-2::-1]):
        med = torch.where(2 * c >= total, r, med)                                # the first to reach half
    return (med & ~_QMAX).view(torch.float32)


def fuse_candidates(depth: torch.Tensor, weight: torch.Tensor, confidence: torch.Tensor,
                    inlier_rel: float, max_weight: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust per-pixel fusion of ``C`` candidates ``(C, ...)`` (candidates first; depth > 0, +inf = none;
    weight >= 0, at most ``max_weight``; 0 = none).

    Weighted median in inverse depth -> inliers within ``inlier_rel`` (relative) of it -> weighted mean of
    the inliers' inverse depth. Returns ``(depth, confidence, inliers)`` of shape ``(...)``; NaN depth and 0
    confidence where a pixel has no weighted candidate.
    """
    inv = depth.reciprocal()                                                    # +inf -> 0
    med = _weighted_median(inv, weight, max_weight)
    inl = (inv - med).abs_() <= inlier_rel * med
    w_in = weight * inl
    w_in_sum = w_in.sum(0)
    has = w_in_sum > 0
    inv_f = (w_in * inv).sum(0) / torch.where(has, w_in_sum, torch.ones_like(w_in_sum))
    fused = torch.where(has, inv_f.reciprocal(), torch.full_like(inv_f, float("nan")))
    # confidence: independent votes of the inliers, scaled by their share of all the weight
    agree = 1.0 - torch.prod(1.0 - confidence * inl, 0)
    w_sum = weight.sum(0)
    conf = torch.where(has, agree * w_in_sum / torch.where(has, w_sum, torch.ones_like(w_sum)),
                       torch.zeros_like(agree))
    return fused, conf, (w_in > 0).sum(0).to(torch.int16)


def splat_depth(sources: Sequence[KeyframeDepth], K: np.ndarray, T_world_cam: np.ndarray,
                height: int, width: int, edge_rel: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Forward-project source depth maps into a target camera with a z-buffer.

    Returns ``(depth, confidence)`` arrays ``(S, height, width)``: per source, the depth (target z) of the
    nearest source point that lands on each target pixel (nearest-pixel rounding), NaN where none lands, and
    that point's confidence (0 where none). Sources may have any resolution. ``edge_rel`` > 0: the sources'
    pixels at depth discontinuities are not re-projected (:attr:`FusionConfig.edge_rel`).
    """
    S = len(sources)
    if S == 0:
        return np.empty((0, height, width), np.float32), np.empty((0, height, width), np.float32)
    d, c = _unpack(_splat_keys(sources, K, T_world_cam, height, width, 0, S, edge_rel=edge_rel)[:, 1:-1, 1:-1].clone())
    d = d.numpy()
    d[np.isinf(d)] = np.nan
    return d, c.numpy()


def fuse_keyframe(depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  others: Sequence[KeyframeDepth], config: FusionConfig,
                  edges: Optional[np.ndarray] = None) -> FusionOutput:
    """Fuse one keyframe's prediction with ``others`` re-projected into it (``edges``: the prediction's
    :func:`_edges` at ``config.edge_rel`` if already computed; used with ``edge_current``)."""
    config = config.resolved()
    h, w = depth.shape
    depth = np.asarray(depth, np.float32)
    confidence = np.clip(np.asarray(confidence, np.float32), 0.0, 1.0)
    if not others:
        return FusionOutput(depth.copy(), confidence.copy(), 0, np.isfinite(depth).astype(np.int16))
    d_now = torch.from_numpy(depth)
    c_now = torch.from_numpy(np.nan_to_num(confidence, nan=0.0))
    now_ok = torch.isfinite(d_now) & (d_now > 0)
    # the new prediction's pixels at depth discontinuities do not vote (edge_current)
    votes = None
    if config.edge_current and config.edge_rel > 0:
        votes = ~(torch.from_numpy(edges) if edges is not None else _edges(d_now, now_ok, config.edge_rel))
    n = config.evidence_stride
    hc, wc, K_c = _coarse_grid(K, h, w, n)
    C = len(others) + 1
    buf = _splat_keys(others, K_c, T_world_cam, hc, wc, 1, C, config.min_source_confidence, config.fill_holes, n,
                      config.edge_rel)
    # the keys' words as float32 (little-endian): [..., 0] confidence, [..., 1] depth (+inf = none)
    cd = buf.view(torch.int32).view(torch.float32).view(C, hc + 2, wc + 2, 2)[:, 1:-1, 1:-1]
    d0, c0, ok0 = d_now[::n, ::n], c_now[::n, ::n], now_ok[::n, ::n]          # the new prediction on the grid
    cd[0, ..., 1] = torch.where(ok0, d0, float("inf"))                          # column 0
    cd[0, ..., 0] = torch.where(ok0, c0, 0.0)
    d_all, c_all = cd[..., 1].contiguous(), cd[..., 0].contiguous()          # de-interleaved: vectorised ops
    contributed = int((d_all[1:] < float("inf")).flatten(1).any(1).sum())
    wt = _weights(c_all, config)
    wt[0] *= config.current_weight
    if votes is not None:
        wt[0] *= votes[::n, ::n]
    if config.occlusion_test:
        # visibility: a re-projected point farther than the new prediction would be hidden behind its surface
        # (or shows through a hole of the splat): no evidence against it. One in front of it contradicts it.
        behind = (d_all[1:] * (1.0 - config.inlier_rel) > d0) & (wt[0] > 0)
        wt[1:].masked_fill_(behind, 0.0)
    max_w = max(config.current_weight, 1.0)
    if n == 1:
        fused, conf, support = fuse_candidates(d_all, wt, c_all, config.inlier_rel, max_w)
    else:
        # the robust centre of each cell (the new prediction's sample and the re-projected keyframes), then the
        # full-resolution prediction joins the cell's re-projected inliers: the same weighted inlier mean and
        # confidence as fuse_candidates, the new prediction at every pixel instead of one sample per cell
        inv = d_all.reciprocal()                                                # +inf -> 0
        med = _weighted_median(inv, wt, max_w)
        inl = (inv[1:] - med).abs_() <= config.inlier_rel * med
        w_in = wt[1:] * inl

        def up(x: torch.Tensor) -> torch.Tensor:
            return _upsample(x, n, h, w)

        med, s_w, s_wi = up(med), up(w_in.sum(0)), up((w_in * inv[1:]).sum(0))
        p_out, w_src, n_in = up(torch.prod(1.0 - c_all[1:] * inl, 0)), up(wt[1:].sum(0)), up((w_in > 0).sum(0))
        w0 = _weights(c_now, config) * config.current_weight
        if votes is not None:
            w0 *= votes
        inv0 = torch.where(now_ok, d_now.reciprocal(), torch.zeros_like(d_now))
        in0 = now_ok & ((inv0 - med).abs_() <= config.inlier_rel * med) & (w0 > 0)
        w0_in = w0 * in0
        w_in_sum = s_w + w0_in
        has = w_in_sum > 0
        inv_f = (s_wi + w0_in * inv0) / torch.where(has, w_in_sum, torch.ones_like(w_in_sum))
        fused = torch.where(has, inv_f.reciprocal(), torch.full_like(inv_f, float("nan")))
        agree = 1.0 - p_out * (1.0 - c_now * in0)
        total = w_src + w0
        conf = torch.where(has, agree * w_in_sum / torch.where(has, total, torch.ones_like(total)),
                           torch.zeros_like(agree))
        support = (n_in + in0).to(torch.int16)
    # the new prediction is never dropped: where no candidate has weight, it passes through. Where it had weight
    # but is no inlier of its cell's median, and no re-projected keyframe agrees with that median either (the
    # coarse grid only: the median is then the cell's own sample of the new prediction, which this pixel
    # contradicts), it passes through with no confidence
    keep_now = torch.isnan(fused) & now_ok
    fused = torch.where(keep_now, d_now, fused)
    conf = torch.where(keep_now, c_now if n == 1 else torch.where((w0 > 0) & (med > 0), 0.0, c_now), conf)
    return FusionOutput(fused.numpy(), conf.numpy(), contributed, support.numpy())


def _coarse_grid(K: np.ndarray, h: int, w: int, n: int) -> Tuple[int, int, np.ndarray]:
    """Size and intrinsics of the n times coarser grid whose cell (i, j) holds the full-resolution pixels
    n*i .. n*i + n - 1 (rows) and n*j .. n*j + n - 1 (columns)."""
    K_c = np.array(K, np.float64, copy=True)
    if n > 1:
        K_c[:2, :2] /= n
        K_c[:2, 2] = (K_c[:2, 2] - (n - 1) / 2) / n
    return -(-h // n), -(-w // n), K_c


def _upsample(x: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """A coarse-grid map back to ``(h, w)``: each cell's value on its n x n pixels."""
    if n == 1:
        return x
    hc, wc = x.shape
    return x[:, None, :, None].expand(hc, n, wc, n).reshape(hc * n, wc * n)[:h, :w]


def _weights(confidence: torch.Tensor, config: FusionConfig) -> torch.Tensor:
    """Candidate weights ``confidence ** confidence_power``, 0 below ``min_weight``."""
    wt = confidence.sqrt() if config.confidence_power == 0.5 else confidence ** config.confidence_power
    if config.min_weight > 0:
        wt.mul_(wt >= config.min_weight)
    return wt


class TemporalFusion:
    """Causal fusion state of a video pipeline: the last ``history`` keyframes' raw predictions."""

    def __init__(self, config: FusionConfig = FusionConfig()):
        self.config = config = config.resolved()
        self._history: Deque[KeyframeDepth] = deque(maxlen=max(config.history, config.window))
        self._shape: Optional[Tuple[int, int]] = None
        self._last: Optional[KeyframeDepth] = None       # the last fused output (for :meth:`prior`)

    def __len__(self) -> int:
        return len(self._history)

    def reset(self) -> None:
        self._history.clear()
        self._shape = None
        self._last = None

    @single_threaded
    def prior(self, K: np.ndarray, T_world_cam: np.ndarray, height: int, width: int
              ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The last keyframe's fused depth and confidence re-projected into a new keyframe (z-buffered, cracks
        filled; on the ``evidence_stride`` grid, each cell's value on its pixels), ``(depth (H, W) NaN = none,
        confidence)``: a prior for the estimator. None without state or after a change of size."""
        last = self._last
        if last is None or last.depth.shape != (height, width):
            return None
        n = self.config.evidence_stride                  # on the evidence grid (an estimator's cost volume is
        hc, wc, K_c = _coarse_grid(K, height, width, n)  # coarser still: the plane sweep's is half)
        d, c = _unpack(_splat_keys([last], K_c, T_world_cam, hc, wc, 0, 1, 0.0, True, n, self.config.edge_rel)
                       [0, 1:-1, 1:-1])
        d = torch.where(torch.isinf(d), float("nan"), d)
        return _upsample(d, n, height, width).numpy(), _upsample(c, n, height, width).numpy()

    def _nearest(self, T_world_cam: np.ndarray) -> List[KeyframeDepth]:
        """The ``window`` kept keyframes nearest to the new pose (DeepVideoMVS' pose distance)."""
        kept = list(self._history)
        if len(kept) <= self.config.window:
            return kept
        dist = [pose_distance(T_world_cam, k.T_world_cam)[0] for k in kept]
        return [kept[i] for i in sorted(np.argsort(dist, kind="stable")[: self.config.window])]

    @single_threaded
    def step(self, depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> FusionOutput:
        """Fuse a new keyframe's prediction with the kept ones, then keep it (its raw prediction)."""
        if self._shape is not None and depth.shape != self._shape:
            log.info("temporal fusion: depth size changed %s -> %s, state reset", self._shape, depth.shape)
            self.reset()
        # the raw prediction is kept, not the fused one: fused maps re-fused would count the same evidence twice
        # (measured on the HoloLens sample: keeping fused maps is worse, 0.0850 vs 0.0800 abs_rel)
        kf = KeyframeDepth(np.asarray(depth, np.float32), np.asarray(confidence, np.float32),
                           np.asarray(K, np.float64), np.asarray(T_world_cam, np.float64))
        cfg = self.config
        # edge_current: the prediction's discontinuities at full resolution, kept for its re-projection later
        edges = _keyframe_edges(kf, cfg.edge_rel, 1) if cfg.edge_current and cfg.edge_rel > 0 else None
        out = fuse_keyframe(depth, confidence, K, T_world_cam, self._nearest(T_world_cam), cfg, edges)
        self._history.append(kf)
        self._shape = depth.shape
        self._last = KeyframeDepth(out.depth, out.confidence, np.asarray(K, np.float64),
                                   np.asarray(T_world_cam, np.float64)) if self.config.prior else None
        return out


@single_threaded
def fuse_offline(keyframes: Sequence[KeyframeDepth], config: FusionConfig = FusionConfig()) -> List[FusionOutput]:
    """Non-causal fusion of a recorded sequence: each keyframe with ``window`` neighbours on each side (in
    keyframe order; all keyframes must come from one continuous track)."""
    config = config.resolved()
    out = []
    for i, kf in enumerate(keyframes):
        others = [keyframes[j] for j in range(max(0, i - config.window), min(len(keyframes), i + config.window + 1))
                  if j != i and keyframes[j].depth.shape == kf.depth.shape]
        edges = _keyframe_edges(kf, config.edge_rel, 1) if config.edge_current and config.edge_rel > 0 else None
        out.append(fuse_keyframe(kf.depth, kf.confidence, kf.K, kf.T_world_cam, others, config, edges))
    return out
