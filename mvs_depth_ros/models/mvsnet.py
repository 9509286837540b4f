"""MVSNet (Yao et al., ECCV 2018) as in the PyTorch port xy-guo/MVSNet_pytorch, written from the paper and
the conformance fixture in ``shared/fixtures/mvsnet``.

Pipeline for ``V`` views (reference first) at input size ``H x W`` (both divisible by 32) and ``D`` fronto-parallel
planes uniform in depth (``D`` divisible by 8):

1. ``FeatureNet``: 8-layer 2-D CNN, ``(V, 3, H, W)`` RGB in [0, 1] -> ``(V, 32, H/4, W/4)``.
2. Differentiable homography: every source feature map is warped onto every plane of the reference camera
   (``grid_sample`` at the projected pixel).
3. Variance cost metric over the ``V`` (warped) feature volumes -> ``(B, 32, D, H/4, W/4)``.
4. ``CostRegNet``: 3-D U-Net -> one logit per plane; ``softmax`` over planes = probability volume.
5. Depth = expectation of the plane depths; photometric confidence = probability mass of the 4 planes
   ``floor(E[index]) - 1 .. floor(E[index]) + 2``.

Module and parameter names match the official code, so its checkpoints (``nn.DataParallel`` state dicts in
``{'epoch', 'model', 'optimizer'}``; ``module.`` is stripped) load with ``strict=True``. ``refine=False`` is what the
official ``train.py``/``eval.py`` build and what the published checkpoint holds; ``refine=True`` adds the
``refine_network.*`` parameters (the official forward pass for it cannot run, see :class:`RefineNet`).

Warping uses the shared :mod:`mvs_depth_ros.models.warping` (MVSNet's own conventions: integer pixel indices,
``(W-1)/2`` normalisation, no depth mask); the conv blocks come from :mod:`mvs_depth_ros.models.mvs_common`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame
from . import mvsnet_numba
from .base import DepthEstimator
from .compiled import CompiledCall, resolve_compile
from .checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strict
from .mvs_common import (ConvBnReLU, ConvBnReLU3D, LRUCache, check_frames, conv3d_fast, conv_bn_relu_3d,
                         deconv_bn_relu_3d, normalize_and_resize, onednn_ok, world_to_camera)
from .warping import project_depth_hypotheses, relative_projection

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

_RESAMPLE_CACHE: Dict[tuple, torch.Tensor] = {}


def resample_to_reference(maps: torch.Tensor, out_hw: Tuple[int, int], scale_xy: Tuple[float, float],
                          mode: str = "bilinear") -> torch.Tensor:
    """Bring maps computed on a coarser pixel lattice back to the reference image.

    ``maps`` ``(B, C, h, w)`` where map pixel ``(i, j)`` sits at reference pixel ``(j / sx, i / sy)`` (the
    pixel-corner convention of :func:`mvs_depth_ros.core.frame.scale_intrinsics`, ``u_map = u_ref * s``; MVSNet's
    1/4-resolution output with ``K/4`` has ``s = 1/4``). Returns ``(B, C, H_out, W_out)``; beyond the last map pixel
    the border value is repeated. The sampling grid is cached per size and scale.
    """
    H, W = out_hw
    h, w = maps.shape[-2:]
    sx, sy = scale_xy
    key = (H, W, h, w, float(sx), float(sy), str(maps.device), maps.dtype)
    grid = _RESAMPLE_CACHE.get(key)
    if grid is None:
        u = torch.arange(W, dtype=torch.float64) * sx
        v = torch.arange(H, dtype=torch.float64) * sy
        gx = u / ((w - 1) / 2) - 1 if w > 1 else torch.zeros_like(u)
        gy = v / ((h - 1) / 2) - 1 if h > 1 else torch.zeros_like(v)
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
        grid = grid.to(device=maps.device, dtype=maps.dtype)[None]
        _RESAMPLE_CACHE[key] = grid
    return F.grid_sample(maps, grid.expand(maps.shape[0], -1, -1, -1), mode=mode, padding_mode="border",
                         align_corners=True)


def feature_projection_matrices(K: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """MVSNet projection matrices at feature resolution (1/4), float64: ``K (V, 3, 3)`` of the input images and
    camera-to-world poses ``(V, 4, 4)`` -> ``(V, 4, 4)`` with ``P[:3, :4] = K' @ inv(T)[:3, :4]``, where ``K'`` is ``K``
    with its first two rows divided by 4 (the official ``read_cam_file``: cx, cy / 4 too, no half-pixel shift)."""
    K4 = np.array(K, dtype=np.float64)
    K4[:, :2, :] /= 4.0
    P = np.tile(np.eye(4), (K4.shape[0], 1, 1))
    P[:, :3, :4] = K4 @ np.stack([world_to_camera(T) for T in T_world_cam])[:, :3, :4]
    return P


# ----------------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------------

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
        if onednn_ok(self.conv0.conv, x):
            # oneDNN's 3-D convolutions run channels-last (NDHWC) without reordering every input and output:
            # the whole U-Net stays channels-last (~1.5x faster per convolution on a 2-vCPU AMD EPYC)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        conv0 = conv_bn_relu_3d(self.conv0, x)
        conv2 = conv_bn_relu_3d(self.conv2, conv_bn_relu_3d(self.conv1, conv0))
        conv4 = conv_bn_relu_3d(self.conv4, conv_bn_relu_3d(self.conv3, conv2))
        x = conv_bn_relu_3d(self.conv6, conv_bn_relu_3d(self.conv5, conv4))
        x = conv4 + deconv_bn_relu_3d(self.conv7[0], self.conv7[1], x)
        x = conv2 + deconv_bn_relu_3d(self.conv9[0], self.conv9[1], x)
        x = conv0 + deconv_bn_relu_3d(self.conv11[0], self.conv11[1], x)
        return conv3d_fast(self.prob, x)


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

    @staticmethod
    def homography_grids(proj_matrices: torch.Tensor, depth_values: torch.Tensor, height: int, width: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sampling grids ``(B, V-1, D, h, w, 2)`` in [-1, 1] (``align_corners=True`` normalisation ``x/((w-1)/2) - 1``)
        of every source for every plane. ``proj_matrices (B, V, 4, 4)`` reference first, ``K`` at feature resolution
        ``h x w``; the relative projection ``src @ inverse(ref)`` is computed in their dtype (official: float32), the
        rest in ``dtype``. Like the official code: integer pixel indices, no epsilon and no mask for ``z <= 0``."""
        B, V = proj_matrices.shape[:2]
        D = depth_values.shape[1]
        planes = depth_values.to(dtype)[:, :, None, None].expand(B, D, height, width)
        grids = [project_depth_hypotheses(relative_projection(proj_matrices[:, s], proj_matrices[:, 0]).to(dtype),
                                          planes, (height, width), min_z=float("-inf"))
                 for s in range(1, V)]                                                   # each (B, D*h, w, 2)
        return torch.stack(grids, dim=1).view(B, V - 1, D, height, width, 2)

    def variance_volume(self, features: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Variance cost metric. ``features (B, V, C, h, w)`` (reference first), ``grids (B, V-1, D, h, w, 2)``
        -> ``(B, C, D, h, w)``. One-pass ``E[x^2] - E[x]^2`` in the official op order (float32 exact). On CPU
        (``align_corners=True``, no autograd) the compiled kernel :func:`.mvsnet_numba.variance_volume` computes
        the same values in one pass and returns a channels-last volume."""
        B, V, C, h, w = features.shape
        D = grids.shape[2]
        if V < 2 or grids.shape[1] != V - 1:
            raise ValueError(f"need a reference and >= 1 source with one grid each, "
                             f"got {V} views and {grids.shape[1]} grids")
        if (self.align_corners and features.device.type == "cpu" and features.dtype == torch.float32
                and grids.dtype == torch.float32 and not torch.is_grad_enabled() and mvsnet_numba.AVAILABLE
                and not torch.compiler.is_compiling()):
            # one compiled pass: all channels of a sample at once from channels-last features, the variance
            # accumulated in the same pass (the same float32 operations); a channels-last volume for the U-Net
            vols = [torch.from_numpy(mvsnet_numba.variance_volume(
                features[b].permute(0, 2, 3, 1).contiguous().numpy(), grids[b].contiguous().numpy(),
                threads=torch.get_num_threads())) for b in range(B)]                         # (D, h, w, C) each
            return torch.stack(vols).permute(0, 4, 1, 2, 3)                                # (B, C, D, h, w)
        ref = features[:, 0, :, None]                                                   # (B, C, 1, h, w)
        volume_sum = volume_sq_sum = None
        for s in range(V - 1):
            warped = F.grid_sample(features[:, s + 1], grids[:, s].reshape(B, D * h, w, 2), mode="bilinear",
                                   padding_mode="zeros", align_corners=self.align_corners).view(B, C, D, h, w)
            if volume_sum is None:
                # ref + w and ref^2 + w^2 (float addition commutes: bitwise the official repeat-then-add order)
                volume_sum = warped + ref
                volume_sq_sum = warped.pow_(2).add_(ref.pow(2))
            else:
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
        plane_index = torch.arange(D, device=prob.device, dtype=prob.dtype)[None].expand(prob.shape[0], D)
        index = expected_value(prob, plane_index)
        confidence = window_confidence(prob, index.long())
        return {"depth": depth, "photometric_confidence": confidence, "prob_volume": prob, "expected_index": index}

    def forward_features(self, features: torch.Tensor, proj_matrices: torch.Tensor,
                         depth_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Everything after FeatureNet. ``features (B, V, 32, h, w)``, ``proj_matrices (B, V, 4, 4)`` (float32 as in
        the official code, or float64 for a more exact homography), ``depth_values (B, D)``."""
        h, w = features.shape[-2:]
        grids = self.homography_grids(proj_matrices, depth_values, h, w, features.dtype)
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
    Width and height must be multiples of 32 (e.g. 320x256). Images: RGB / 255, as in the official data loader.

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

    FeatureNet outputs are cached by ``Frame.uid`` (``feature_cache`` entries, ~650 kB each at 320x256), so a
    keyframe reused as a measurement frame is not re-encoded.
    """

    name = "mvsnet"
    preferred_measurement_frames = 3

    def __init__(self, model: MVSNet, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0,
                 n_planes: int = 192, full_resolution: bool = True, feature_cache: int = 8, compile: Any = "auto"):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        if n_planes < 8 or n_planes % 8:
            raise ValueError(f"MVSNet needs n_planes to be a positive multiple of 8 (3-D U-Net), got {n_planes}")
        self.model = model.to(self.device).eval()
        self.n_planes = int(n_planes)
        self.full_resolution = bool(full_resolution)
        interval = (self.max_depth - self.min_depth) / (self.n_planes - 1)
        dv = self.min_depth + interval * np.arange(self.n_planes, dtype=np.float64)
        self.depth_values = torch.from_numpy(dv.astype(np.float32)).to(self.device)[None]  # (1, D)
        self.cache = LRUCache(feature_cache)
        # "auto" stays eager: compiled, MVSNet (64 planes) was no faster (new/old 1.02 on a loaded 2-vCPU AMD EPYC,
        # its time being the 3-D convolutions); compile=True forces it
        use = resolve_compile(compile, self.device, pays_on_cpu=False)
        self._feature = CompiledCall(self.model.feature, "MVSNet feature net", use)
        self._forward_features = CompiledCall(self.model.forward_features, "MVSNet", use)
        if self.device.type == "cpu" and mvsnet_numba.AVAILABLE:
            mvsnet_numba.warm_up()          # compile the variance kernel now (or load it from numba's disk cache)

    def _image(self, frame: Frame) -> torch.Tensor:
        """``(1, 3, H, W)`` RGB / 255 float32, C-contiguous (the official eval loader's values)."""
        img = normalize_and_resize(frame.image, None, "unit")
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(self.device)

    def _features(self, frame: Frame) -> torch.Tensor:
        """``(32, H/4, W/4)`` FeatureNet output, cached by ``Frame.uid``."""
        return self.cache.get_or_compute(frame.uid, lambda: self._feature(self._image(frame))[0])

    @torch.inference_mode()
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state=None) -> DepthResult:
        t0 = time.perf_counter()
        check_frames(reference, measurements, 32, "MVSNet")
        frames: List[Frame] = [reference, *measurements]
        feats = torch.stack([self._features(f) for f in frames])                        # (V, 32, h, w)
        P = feature_projection_matrices(np.stack([f.K for f in frames]), np.stack([f.T_world_cam for f in frames]))
        proj = torch.from_numpy(P).to(self.device)[None]                                # float64 homography
        out = self._forward_features(feats[None], proj, self.depth_values)
        depth = out["depth"]
        if self.model.refine:
            depth = self.model.refine_depth(self._image(reference), depth, self.depth_values)
        maps = torch.stack((depth, out["photometric_confidence"]), dim=1)               # (1, 2, h, w)
        K = reference.K.copy()
        if self.full_resolution:
            maps = resample_to_reference(maps, (reference.height, reference.width), (0.25, 0.25))
        else:
            K[:2, :] /= 4.0
        depth_np = maps[0, 0].float().cpu().numpy()
        conf_np = maps[0, 1].float().clamp(0.0, 1.0).cpu().numpy()
        bad = ~np.isfinite(depth_np)
        depth_np[bad] = np.nan
        conf_np[bad] = 0.0
        return DepthResult(depth=depth_np.astype(np.float32), confidence=conf_np.astype(np.float32), K=K, state=state,
                           info={"model": self.name, "n_planes": self.n_planes, "n_views": len(frames),
                                 "ms": 1000.0 * (time.perf_counter() - t0),
                                 "compile": self._forward_features.describe()})


def build(checkpoint: Optional[str] = None, device: str = "auto", **options) -> MVSNetEstimator:
    """Registry builder. ``checkpoint``: official MVSNet checkpoint (required). Options: ``min_depth``,
    ``max_depth``, ``n_planes`` (192 official; 128/64 for speed), ``align_corners`` (True), ``refine`` (auto from the
    checkpoint), ``full_resolution`` (True), ``feature_cache`` (8), ``compile`` ("auto": eager; true: torch.compile,
    see ``models/compiled.py``)."""
    if not checkpoint:
        raise ValueError("mvsnet needs a checkpoint (the official model_000014.ckpt or a compatible state dict)")
    model = load_mvsnet(checkpoint, refine=options.pop("refine", None),
                        align_corners=bool(options.pop("align_corners", True)))
    return MVSNetEstimator(model, device=device, **options)
