"""MVSNet (Yao et al., ECCV 2018) as in the PyTorch port xy-guo/MVSNet_pytorch, written from the paper and
the conformance fixture in ``shared/fixtures/mvsnet``.

Pipeline for ``V`` views (reference first) at input size ``H x W`` (both divisible by 32) and ``D`` fronto-parallel
planes uniform in depth (``D`` divisible by 8):

1. ``FeatureNet``: 8-layer 2-D CNN, ``(V, 3, H, W)`` RGB in [0, 1] -> ``(V, 32, H/4, W/4)``.
2. Differentiable homography: every source feature map is warped onto every plane of the reference camera
   (``plane_sweep_pixels`` + ``pixels_to_grid`` + ``grid_sample``).
3. Variance cost metric over the ``V`` (warped) feature volumes -> ``(B, 32, D, H/4, W/4)``.
4. ``CostRegNet``: 3-D U-Net -> one logit per plane; ``softmax`` over planes = probability volume.
5. Depth = expectation of the plane depths; photometric confidence = probability mass of the 4 planes
   ``floor(E[index]) - 1 .. floor(E[index]) + 2``.

Module and parameter names match the official code, so its checkpoints (``nn.DataParallel`` state dicts in
``{'epoch', 'model', 'optimizer'}``; ``module.`` is stripped) load with ``strict=True``. ``refine=False`` is what the
official ``train.py``/``eval.py`` build and what the published checkpoint holds; ``refine=True`` adds the
``refine_network.*`` parameters (the official forward pass for it cannot run, see :class:`RefineNet`).

This module also holds the small, general plane-sweep helpers that :mod:`mvs_depth_ros.models.mvdepthnet` imports
(``plane_sweep_pixels``, ``pixels_to_grid``, ``resample_to_reference``, frame preparation). They are candidates for
the shared ``models/warping.py``.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame
from .base import DepthEstimator
from .checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# General plane-sweep helpers (shared with mvdepthnet.py)
# ----------------------------------------------------------------------------------------------------------------

_PIXEL_CACHE: Dict[Tuple[int, int, str, torch.dtype], torch.Tensor] = {}


def homogeneous_pixels(height: int, width: int, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixel indices ``(3, H*W)`` as ``(x, y, 1)`` in row-major order (x = column; no +0.5). Cached."""
    key = (int(height), int(width), str(device), dtype)
    pix = _PIXEL_CACHE.get(key)
    if pix is None:
        y, x = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                              torch.arange(width, dtype=dtype, device=device), indexing="ij")
        pix = torch.stack((x.reshape(-1), y.reshape(-1), torch.ones_like(x).reshape(-1)))
        _PIXEL_CACHE[key] = pix
    return pix


def plane_sweep_pixels(rays: torch.Tensor, trans: torch.Tensor, depths: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Source-image pixel coordinates of reference pixels placed on fronto-parallel depth planes.

    With the homography ``X = (K_s R K_r^-1 p) * d + K_s t`` for the reference pixel ``p = (x, y, 1)``:

    Args:
        rays: ``(B, 3, N)`` the rotated rays ``K_s R K_r^-1 p`` of the ``N`` reference pixels.
        trans: ``(B, 3)`` ``K_s t`` (reference camera -> source camera translation, in source pixels).
        depths: ``(B, D)`` plane depths (metres, along the reference optical axis).
        eps: added to the projected ``z`` before the division (MVSNet: 0, MVDepthNet: 1e-6). No mask for ``z <= 0``.

    Returns:
        ``(B, D, N, 2)`` source pixel coordinates ``(u, v)``.
    """
    X = rays.unsqueeze(2) * depths[:, None, :, None] + trans[:, :, None, None]       # (B, 3, D, N)
    z = X[:, 2:3] + eps if eps else X[:, 2:3]
    uv = X[:, :2] / z                                                                # (B, 2, D, N)
    return uv.permute(0, 2, 3, 1)


def pixels_to_grid(uv: torch.Tensor, height: int, width: int, convention: str = "corners") -> torch.Tensor:
    """Pixel coordinates ``(..., 2)`` -> ``grid_sample`` coordinates in [-1, 1].

    ``convention="corners"``: ``x / ((W-1)/2) - 1`` (MVSNet; with ``align_corners=True`` this samples exactly at
    pixel ``x``). ``convention="half_size"``: ``(x - W/2) / (W/2)`` (MVDepthNet/DVMVS; with ``align_corners=True``
    it samples pixel ``x (W-1)/W``, a sub-pixel quirk of the trained models that we keep).
    """
    if convention == "corners":
        gx = uv[..., 0] / ((width - 1) / 2) - 1
        gy = uv[..., 1] / ((height - 1) / 2) - 1
    elif convention == "half_size":
        gx = (uv[..., 0] - width / 2) / (width / 2)
        gy = (uv[..., 1] - height / 2) / (height / 2)
    else:
        raise ValueError(f"unknown grid convention {convention!r}")
    return torch.stack((gx, gy), dim=-1)


def warp_to_planes(src: torch.Tensor, grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear sampling of a source map on every plane: ``(B, C, h, w)`` + grid ``(B, D, H, W, 2)`` ->
    ``(B, C, D, H, W)`` (zeros outside the source image)."""
    B, D, H, W, _ = grid.shape
    out = F.grid_sample(src, grid.reshape(B, D * H, W, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=align_corners)
    return out.view(B, src.shape[1], D, H, W)


_RESAMPLE_CACHE: Dict[tuple, torch.Tensor] = {}


def resample_to_reference(maps: torch.Tensor, out_hw: Tuple[int, int], scale_xy: Tuple[float, float],
                          mode: str = "bilinear") -> torch.Tensor:
    """Bring maps computed on a coarser/other pixel lattice back to the reference image.

    ``maps`` ``(B, C, h, w)`` where map pixel ``(i, j)`` sits at reference pixel ``(j / sx, i / sy)`` (the
    pixel-corner convention of :func:`mvs_depth_ros.core.frame.scale_intrinsics`: ``u_map = u_ref * s``).
    Returns ``(B, C, H_out, W_out)``; outside the map lattice the border value is repeated. The sampling grid is cached.
    """
    H, W = out_hw
    h, w = maps.shape[-2:]
    sx, sy = scale_xy
    if (h, w) == (H, W) and sx == 1.0 and sy == 1.0:
        return maps
    key = (H, W, h, w, float(sx), float(sy), str(maps.device), maps.dtype)
    grid = _RESAMPLE_CACHE.get(key)
    if grid is None:
        u = torch.arange(W, dtype=torch.float64) * sx
        v = torch.arange(H, dtype=torch.float64) * sy
        gx = (u / ((w - 1) / 2) - 1) if w > 1 else torch.zeros_like(u)
        gy = (v / ((h - 1) / 2) - 1) if h > 1 else torch.zeros_like(v)
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
        grid = grid.to(device=maps.device, dtype=maps.dtype)[None]
        _RESAMPLE_CACHE[key] = grid
    return F.grid_sample(maps, grid.expand(maps.shape[0], -1, -1, -1), mode=mode, padding_mode="border",
                         align_corners=True)


def check_frames(reference: Frame, measurements: Sequence[Frame]) -> None:
    """Every frame posed and of the reference's size; at least one measurement frame."""
    if not measurements:
        raise ValueError("need at least one measurement frame")
    for f in (reference, *measurements):
        if not f.has_pose:
            raise ValueError(f"frame {f.name!r} has no valid pose (T_world_cam)")
        if (f.width, f.height) != (reference.width, reference.height):
            raise ValueError(f"frame {f.name!r} is {f.width}x{f.height}, reference is "
                             f"{reference.width}x{reference.height}: frames must share the working resolution")


def network_size(width: int, height: int, multiple: int) -> Tuple[int, int]:
    """The nearest size (at least ``multiple``) whose sides are multiples of ``multiple``."""
    return (max(multiple, int(round(width / multiple)) * multiple),
            max(multiple, int(round(height / multiple)) * multiple))


def images_to_tensor(frames: Sequence[Frame], device: torch.device) -> torch.Tensor:
    """RGB uint8 frames -> ``(V, 3, H, W)`` float32 in [0, 255], C-contiguous (the conv kernel path depends on it)."""
    arr = np.stack([f.image for f in frames])                                       # (V, H, W, 3)
    t = torch.from_numpy(arr).to(device=device).permute(0, 3, 1, 2)
    return t.to(torch.float32).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------------

class ConvBnReLU(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU. ``(B, C_in, H, W) -> (B, C_out, H/stride, W/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvBnReLU3D(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> ReLU. ``(B, C_in, D, H, W) -> (B, C_out, D/s, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _deconv_bn_relu_3d(in_channels: int, out_channels: int) -> nn.Sequential:
    """ConvTranspose3d(k3, s2, p1, op1, no bias) -> BN -> ReLU: doubles D, H and W (keys ``.0.weight``, ``.1.*``)."""
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    """``(B, 3, H, W)`` image in [0, 1] -> ``(B, 32, H/4, W/4)`` features (the last conv has a bias, no BN/ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv0 = ConvBnReLU(3, 8, 3, 1, 1)
        self.conv1 = ConvBnReLU(8, 8, 3, 1, 1)
        self.conv2 = ConvBnReLU(8, 16, 5, 2, 2)
        self.conv3 = ConvBnReLU(16, 16, 3, 1, 1)
        self.conv4 = ConvBnReLU(16, 16, 3, 1, 1)
        self.conv5 = ConvBnReLU(16, 32, 5, 2, 2)
        self.conv6 = ConvBnReLU(32, 32, 3, 1, 1)
        self.feature = nn.Conv2d(32, 32, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(x))
        x = self.conv4(self.conv3(self.conv2(x)))
        x = self.conv6(self.conv5(x))
        return self.feature(x)


class CostRegNet(nn.Module):
    """3-D U-Net: ``(B, 32, D, h, w)`` cost volume -> ``(B, 1, D, h, w)`` logits. ``D, h, w`` divisible by 8.

    Decoder steps are ``skip + ReLU(BN(ConvT(x)))`` (the ReLU comes before the skip addition).
    """

    def __init__(self):
        super().__init__()
        self.conv0 = ConvBnReLU3D(32, 8)
        self.conv1 = ConvBnReLU3D(8, 16, stride=2)
        self.conv2 = ConvBnReLU3D(16, 16)
        self.conv3 = ConvBnReLU3D(16, 32, stride=2)
        self.conv4 = ConvBnReLU3D(32, 32)
        self.conv5 = ConvBnReLU3D(32, 64, stride=2)
        self.conv6 = ConvBnReLU3D(64, 64)
        self.conv7 = _deconv_bn_relu_3d(64, 32)
        self.conv9 = _deconv_bn_relu_3d(32, 16)
        self.conv11 = _deconv_bn_relu_3d(16, 8)
        self.prob = nn.Conv3d(8, 1, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv0 = self.conv0(x)
        conv2 = self.conv2(self.conv1(conv0))
        conv4 = self.conv4(self.conv3(conv2))
        x = self.conv6(self.conv5(conv4))
        x = conv4 + self.conv7(x)
        x = conv2 + self.conv9(x)
        x = conv0 + self.conv11(x)
        return self.prob(x)


class RefineNet(nn.Module):
    """Depth-residual refinement (MVSNet paper, Sec. 3.4), with the official parameter layout.

    The official ``RefineNet.forward`` cannot run (it calls the non-existent ``F.cat`` and is called with one
    argument), so there is no reference output: this forward follows the paper. Input: the reference image resized
    to the depth resolution ``(B, 3, h, w)`` and the initial depth ``(B, 1, h, w)`` scaled to [0, 1] over the plane
    range; output: refined depth in the same [0, 1] scale. Like the official module tree, the residual head is a
    ConvBnReLU, so the residual is non-negative.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBnReLU(4, 32)
        self.conv2 = ConvBnReLU(32, 32)
        self.conv3 = ConvBnReLU(32, 32)
        self.res = ConvBnReLU(32, 1)

    def forward(self, img: torch.Tensor, depth_init: torch.Tensor) -> torch.Tensor:
        x = torch.cat((img, depth_init), dim=1)
        return depth_init + self.res(self.conv3(self.conv2(self.conv1(x))))


def relative_projections(proj_matrices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``src_proj @ inverse(ref_proj)`` split into the homography parts.

    Args:
        proj_matrices: ``(B, V, 4, 4)`` with ``P[:3, :4] = K @ [R|t]`` (world-to-camera, K at feature resolution),
            reference first. Computed in the given dtype (the official code: float32).
    Returns:
        ``rot (B, V-1, 3, 3)`` and ``trans (B, V-1, 3)``.
    """
    rel = proj_matrices[:, 1:] @ torch.inverse(proj_matrices[:, :1])
    return rel[..., :3, :3], rel[..., :3, 3]


def expected_value(prob: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_d prob[:, d] * values[:, d]``: ``(B, D, h, w)`` and ``(B, D)`` -> ``(B, h, w)``."""
    return torch.sum(prob * values[:, :, None, None], dim=1)


def window_confidence(prob: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """MVSNet's photometric confidence: ``prob[i-1] + prob[i] + prob[i+1] + prob[i+2]`` at ``i = index``
    (zero outside ``0..D-1``). ``prob (B, D, h, w)``, ``index (B, h, w)`` int64 -> ``(B, h, w)``."""
    D = prob.shape[1]
    idx = index[:, None] + torch.arange(-1, 3, device=prob.device)[None, :, None, None]     # (B, 4, h, w)
    inside = (idx >= 0) & (idx < D)
    taps = torch.gather(prob, 1, idx.clamp(0, D - 1))
    return torch.where(inside, taps, torch.zeros_like(taps)).sum(dim=1)


class MVSNet(nn.Module):
    """The MVSNet network (module tree and parameter names of the official PyTorch code).

    Args:
        refine: build ``refine_network`` (the official constructor default; the official eval uses False).
        align_corners: ``grid_sample`` behaviour in the homography warp. True reproduces PyTorch <= 1.2 (which
            the official code was written for: it samples exactly at the projected pixel); False is what the
            unmodified official code does on torch >= 1.3. Checkpoints may have been trained under either.
    """

    def __init__(self, refine: bool = False, align_corners: bool = True):
        super().__init__()
        self.refine = refine
        self.align_corners = align_corners
        self.feature = FeatureNet()
        self.cost_regularization = CostRegNet()
        if refine:
            self.refine_network = RefineNet()

    def homography_grids(self, rot: torch.Tensor, trans: torch.Tensor, depth_values: torch.Tensor,
                         height: int, width: int) -> torch.Tensor:
        """Sampling grids ``(B, S, D, h, w, 2)`` in [-1, 1] for ``S`` sources from ``rot (B, S, 3, 3)``,
        ``trans (B, S, 3)`` and ``depth_values (B, D)`` at feature resolution ``h x w``."""
        B, S = rot.shape[:2]
        pix = homogeneous_pixels(height, width, rot.device, rot.dtype)                  # (3, h*w)
        rays = torch.matmul(rot.reshape(B * S, 3, 3), pix)                              # (B*S, 3, h*w)
        dv = depth_values.repeat_interleave(S, dim=0)                                   # (B*S, D)
        uv = plane_sweep_pixels(rays, trans.reshape(B * S, 3), dv)                       # (B*S, D, h*w, 2)
        grid = pixels_to_grid(uv, height, width, "corners")
        return grid.view(B, S, depth_values.shape[1], height, width, 2)

    def variance_volume(self, features: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Variance cost metric. ``features (B, V, C, h, w)`` (reference first), ``grids (B, V-1, D, h, w, 2)``
        -> ``(B, C, D, h, w)``. One-pass ``E[x^2] - E[x]^2`` in the official op order (float32 exact)."""
        B, V, C, h, w = features.shape
        D = grids.shape[2]
        ref = features[:, 0, :, None]                                                   # (B, C, 1, h, w)
        volume_sum = ref.expand(B, C, D, h, w).clone()
        volume_sq_sum = ref.pow(2).expand(B, C, D, h, w).clone()
        for s in range(V - 1):
            warped = warp_to_planes(features[:, s + 1], grids[:, s], self.align_corners)
            volume_sum += warped
            volume_sq_sum += warped.pow_(2)
            del warped
        return volume_sq_sum.div_(V).sub_(volume_sum.div_(V).pow_(2))

    def regress(self, cost_volume: torch.Tensor, depth_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, C, D, h, w)`` cost volume -> depth ``(B, h, w)``, photometric confidence, probability volume
        ``(B, D, h, w)`` and the expected (float) plane index."""
        logits = self.cost_regularization(cost_volume).squeeze(1)                       # (B, D, h, w)
        prob = F.softmax(logits, dim=1)
        del logits
        depth = expected_value(prob, depth_values)
        D = prob.shape[1]
        index = expected_value(prob, torch.arange(D, device=prob.device, dtype=prob.dtype)[None].expand(prob.shape[0], D))
        confidence = window_confidence(prob, index.long())
        return {"depth": depth, "photometric_confidence": confidence, "prob_volume": prob, "expected_index": index}

    def forward_features(self, features: torch.Tensor, proj_matrices: torch.Tensor,
                         depth_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Everything after FeatureNet. ``features (B, V, 32, h, w)``, ``proj_matrices (B, V, 4, 4)`` (float32 as in
        the official code, or float64 for a more exact homography), ``depth_values (B, D)``."""
        h, w = features.shape[-2:]
        rot, trans = relative_projections(proj_matrices)
        grids = self.homography_grids(rot.to(features.dtype), trans.to(features.dtype),
                                      depth_values.to(features.dtype), h, w)
        volume = self.variance_volume(features, grids)
        del grids
        return self.regress(volume, depth_values.to(features.dtype))

    def forward(self, imgs: torch.Tensor, proj_matrices: torch.Tensor, depth_values: torch.Tensor,
                ) -> Dict[str, torch.Tensor]:
        """Official call: ``imgs (B, V, 3, H, W)`` RGB in [0, 1], ``proj_matrices (B, V, 4, 4)`` with K at H/4 x W/4,
        ``depth_values (B, D)`` -> dict with ``depth`` and ``photometric_confidence`` ``(B, H/4, W/4)`` (plus
        ``prob_volume``, ``expected_index``; ``refined_depth`` when ``refine``)."""
        B, V = imgs.shape[:2]
        features = self.feature(imgs.reshape(B * V, *imgs.shape[2:]))
        out = self.forward_features(features.view(B, V, *features.shape[1:]), proj_matrices, depth_values)
        if self.refine:
            out["refined_depth"] = self.refine_depth(imgs[:, 0], out["depth"], depth_values)
        return out

    def refine_depth(self, ref_img: torch.Tensor, depth: torch.Tensor, depth_values: torch.Tensor) -> torch.Tensor:
        """Paper-style refinement (no official reference output exists): ``ref_img (B, 3, H, W)`` in [0, 1],
        ``depth (B, h, w)`` -> refined ``(B, h, w)``, normalised to [0, 1] over the plane range and back."""
        dmin, dmax = depth_values[:, :1, None], depth_values[:, -1:, None]                 # (B, 1, 1)
        img = F.interpolate(ref_img, size=depth.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        norm = ((depth - dmin) / (dmax - dmin))[:, None]
        refined = self.refine_network(img, norm)[:, 0]
        return refined * (dmax - dmin) + dmin


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint loading and the estimator
# ----------------------------------------------------------------------------------------------------------------

def load_mvsnet(checkpoint: Optional[str] = None, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                refine: Optional[bool] = None, align_corners: bool = True) -> MVSNet:
    """An eval-mode :class:`MVSNet` with weights loaded ``strict=True`` from a checkpoint file (official
    ``{'epoch', 'model', 'optimizer'}`` with ``module.`` keys, a bare state dict, or ``.safetensors``) or a state dict.
    ``refine=None`` detects the variant from the presence of ``refine_network.*`` keys."""
    if (checkpoint is None) == (state_dict is None):
        raise ValueError("give exactly one of checkpoint or state_dict")
    sd = extract_state_dict(load_checkpoint(checkpoint) if checkpoint is not None else state_dict)
    if refine is None:
        refine = any(k.startswith("refine_network.") for k in sd)
    model = MVSNet(refine=refine, align_corners=align_corners)
    load_state_dict_strict(model, sd, what=f"MVSNet(refine={refine})" + (f" from {checkpoint}" if checkpoint else ""))
    return model.eval()


class MVSNetEstimator(DepthEstimator):
    """MVSNet behind the :class:`DepthEstimator` interface.

    Uses every given measurement frame (the official evaluation: reference + 2..4 sources; 3 is the default here).
    Frames are used at the working resolution when both sides are multiples of 32, else resized to the nearest such
    size (intrinsics rescaled). Images: RGB / 255, as in the official data loader.

    Planes: ``n_planes`` uniform in *depth* from ``min_depth`` to ``max_depth`` (the official ``depth_values``).
    Memory and time grow linearly with ``n_planes x (H/4) x (W/4)``: at 320x256 the float32 variance volume alone
    is ``32 * n_planes * 80 * 64 * 4`` bytes (126 MB at 192 planes; the 3-D U-Net needs ~3x that at its peak).
    192 is the official count; 128 or 64 trade depth resolution for ~0.7x / ~0.45x run time. ``n_planes`` must be a
    multiple of 8.

    Output: depth = probability-weighted mean plane depth at H/4 x W/4, resampled (bilinear) to the reference
    resolution; confidence = the official photometric confidence (probability mass of the 4 planes around the
    estimate), same resampling. Depth is NaN only where it is not finite. The official pipeline keeps pixels with
    confidence > 0.8 (``DepthResult.filtered(0.8)``). ``refine=True`` (checkpoint with ``refine_network.*``) outputs
    the paper's refined depth instead (no official reference exists for that path).

    FeatureNet outputs are cached by ``Frame.uid`` (``feature_cache`` entries), so a keyframe reused as a
    measurement frame is not re-encoded.
    """

    name = "mvsnet"
    preferred_measurement_frames = 3

    def __init__(self, model: MVSNet, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0,
                 n_planes: int = 192, full_resolution: bool = True, feature_cache: int = 8):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        if n_planes < 8 or n_planes % 8:
            raise ValueError(f"MVSNet needs n_planes to be a positive multiple of 8 (3-D U-Net), got {n_planes}")
        self.model = model.to(self.device).eval()
        self.n_planes = int(n_planes)
        self.full_resolution = bool(full_resolution)
        interval = (self.max_depth - self.min_depth) / (self.n_planes - 1)
        dv = self.min_depth + interval * np.arange(self.n_planes, dtype=np.float64)
        self.depth_values = torch.from_numpy(dv.astype(np.float32)).to(self.device)[None]  # (1, D)
        self._features: "collections.OrderedDict[Tuple[int, int, int], torch.Tensor]" = collections.OrderedDict()
        self._feature_cache = int(feature_cache)

    def _encode(self, frames: Sequence[Frame]) -> torch.Tensor:
        """``(V, 32, H/4, W/4)`` features, re-using cached ones (keyed by uid and size)."""
        keys = [(f.uid, f.width, f.height) for f in frames]
        todo = [i for i, k in enumerate(keys) if k not in self._features]
        if todo:
            imgs = images_to_tensor([frames[i] for i in todo], self.device) / 255.0
            feats = self.model.feature(imgs)
            for j, i in enumerate(todo):
                self._features[keys[i]] = feats[j]
        for k in keys:
            self._features.move_to_end(k)
        feats = torch.stack([self._features[k] for k in keys])
        while len(self._features) > max(self._feature_cache, len(frames)):
            self._features.popitem(last=False)
        return feats

    @torch.inference_mode()
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state=None) -> DepthResult:
        t0 = time.perf_counter()
        check_frames(reference, measurements)
        frames: List[Frame] = [reference, *measurements]
        net_w, net_h = network_size(reference.width, reference.height, 32)
        frames = [f.resized(net_w, net_h) for f in frames]
        feats = self._encode(frames)                                                    # (V, 32, h, w)
        K4 = np.stack([f.K for f in frames]).copy()
        K4[:, :2, :] /= 4.0                                                              # official read_cam_file
        P = np.tile(np.eye(4), (len(frames), 1, 1))
        P[:, :3, :4] = K4 @ np.linalg.inv(np.stack([f.T_world_cam for f in frames]))[:, :3, :4]
        proj = torch.from_numpy(P).to(self.device)[None]                                # float64 homography
        out = self.model.forward_features(feats[None], proj, self.depth_values)
        depth = out["depth"]
        if self.model.refine:
            img = images_to_tensor(frames[:1], self.device) / 255.0
            depth = self.model.refine_depth(img, depth, self.depth_values)
        maps = torch.stack((depth, out["photometric_confidence"]), dim=1)               # (1, 2, h, w)
        if self.full_resolution:
            h, w = maps.shape[-2:]
            maps = resample_to_reference(maps, (reference.height, reference.width),
                                         (net_w / reference.width / 4.0, net_h / reference.height / 4.0))
            K = reference.K.copy()
        else:
            K = frames[0].K.copy()
            K[:2, :] /= 4.0
        depth_np = maps[0, 0].float().cpu().numpy()
        conf_np = maps[0, 1].float().clamp(0.0, 1.0).cpu().numpy()
        bad = ~np.isfinite(depth_np)
        depth_np[bad] = np.nan
        conf_np[bad] = 0.0
        return DepthResult(depth=depth_np.astype(np.float32), confidence=conf_np.astype(np.float32), K=K, state=state,
                           info={"model": self.name, "n_planes": self.n_planes, "n_views": len(frames),
                                 "network_size": (net_w, net_h), "ms": 1000.0 * (time.perf_counter() - t0)})


def build(checkpoint: Optional[str] = None, device: str = "auto", **options) -> MVSNetEstimator:
    """Registry builder. ``checkpoint``: official MVSNet checkpoint (required). Options: ``min_depth``,
    ``max_depth``, ``n_planes`` (192 official; 128/64 for speed), ``align_corners`` (True), ``refine`` (auto from the
    checkpoint), ``full_resolution`` (True), ``feature_cache`` (8)."""
    if not checkpoint:
        raise ValueError("mvsnet needs a checkpoint (the official model_000014.ckpt or a compatible state dict)")
    model = load_mvsnet(checkpoint, refine=options.pop("refine", None),
                        align_corners=bool(options.pop("align_corners", True)))
    return MVSNetEstimator(model, device=device, **options)
