"""MVDepthNet (Wang & Shen, 3DV 2018) written from the paper and the conformance fixture in
``shared/fixtures/mvdepthnet`` (official code: HKUST-Aerial-Robotics/MVDepthNet, GPL-3.0, not copied).

One reference image and one source image with a known relative pose, at 320x256:

1. Cost volume: 64 fronto-parallel planes uniform in inverse depth from 1/50 to 1/0.5 (plane 0 = 50 m, far;
   plane 63 = 0.5 m, near), fixed by the trained model. For each plane the source image is warped into the
   reference view and the cost is the L1 distance summed over the 3 normalised colour channels.
2. Encoder-decoder 2-D CNN on ``cat(reference image, cost volume)`` (67 channels) -> four inverse-depth maps
   ``2 * sigmoid(.)`` at 1, 1/2, 1/4, 1/8 resolution. The finest one is the output: depth = 1 / disp1 (>= 0.5 m).

Module and parameter names match the official ``depthNet`` so its checkpoint (``{'state_dict': ...}``, bare keys,
written by PyTorch 0.3 without the BatchNorm ``num_batches_tracked`` buffers) loads with ``strict=True``.

The sampling convention differs from MVSNet's (shared ``warping.py``): ``+1e-6`` on the projected depth and
``(x - W/2) / (W/2)`` normalisation, so the grid is built here (:func:`plane_sweep_grid`); the pixel lattice is shared.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame
from .base import DepthEstimator
from .compiled import CompiledCall, resolve_compile
from .checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strict
from .mvs_common import check_frames
from .mvsnet import window_confidence
from .warping import homogeneous_pixel_grid

log = logging.getLogger(__name__)

#: Plane set of the trained model: inverse depths ``1/50 + i * (1/0.5 - 1/50) / 63``, i = 0..63 (far -> near).
N_PLANES = 64
INV_DEPTH_MIN = 1.0 / 50.0
INV_DEPTH_STEP = (1.0 / 0.5 - 1.0 / 50.0) / (N_PLANES - 1)
#: Image normalisation of the official code: ``(x - 81) / 35`` on 0..255 values.
PIXEL_MEAN, PIXEL_STD = 81.0, 35.0


def plane_depths() -> np.ndarray:
    """``(64,)`` float64 plane depths in metres, index 0 = 50 m (far) ... 63 = 0.5 m (near)."""
    return np.array([1.0 / (INV_DEPTH_MIN + i * INV_DEPTH_STEP) for i in range(N_PLANES)])


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` 0..255 -> ``(x - 81) / 35``, in float64 as the official numpy code, cast to float32."""
    return ((images.double() - PIXEL_MEAN) / PIXEL_STD).float()


def plane_sweep_grid(rays: torch.Tensor, trans: torch.Tensor, depths: torch.Tensor, height: int, width: int,
                     ) -> torch.Tensor:
    """MVDepthNet's plane-sweep sampling grid.

    Args:
        rays: ``(B, 3, H*W)`` ``K R K^-1 (x, y, 1)`` of the reference pixels (row-major, integer indices).
        trans: ``(B, 3)`` ``K t`` (reference camera -> source camera).
        depths: ``(B, D)`` plane depths in metres.
    Returns:
        ``(B, D, H, W, 2)``: ``uv = X[:2] / (X[2] + 1e-6)`` with ``X = rays * d + trans`` (no mask for ``z <= 0``),
        normalised as ``(u - W/2) / (W/2)``, ``(v - H/2) / (H/2)`` (the trained model's convention: with
        ``align_corners=True`` it samples ``u (W-1)/W``).
    """
    B, D = depths.shape
    X = rays.unsqueeze(2) * depths[:, None, :, None] + trans[:, :, None, None]       # (B, 3, D, H*W)
    uv = X[:, :2] / (X[:, 2:3] + 1e-6)
    gx = (uv[:, 0] - width / 2) / (width / 2)
    gy = (uv[:, 1] - height / 2) / (height / 2)
    return torch.stack((gx, gy), dim=-1).view(B, D, height, width, 2)


def pair_rays(K: torch.Tensor, ref_to_src: torch.Tensor, height: int, width: int):
    """Homography parts for sources ``S``: ``K (S, 3, 3)`` (float64), ``ref_to_src (S, 4, 4)`` maps reference-camera
    points to source-camera points. Returns ``KRKiUV (S, 3, H*W)`` and ``KT (S, 3)`` in float32 (computed in
    float64, like the official numpy code). Pixel order is row-major (x = column)."""
    pix = homogeneous_pixel_grid(height, width, device=K.device, dtype=torch.float64)
    KRKi = K @ ref_to_src[:, :3, :3] @ torch.linalg.inv(K)
    return (KRKi @ pix).float(), (K @ ref_to_src[:, :3, 3:4])[..., 0].float()


def _down_conv_layer(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv(k, s1) -> BN -> ReLU -> Conv(k, s2) -> BN -> ReLU, no conv bias.
    ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""
    pad = (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=pad, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size, stride=2, padding=pad, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU())


def _conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 (no bias) -> BN -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _up_conv_layer(in_channels: int, out_channels: int, align_corners: bool) -> nn.Sequential:
    """Bilinear x2 -> Conv3x3 (no bias) -> BN -> ReLU: ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _nearest_up2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling of a coarse inverse-depth map (the official ``F.upsample`` default mode)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _disp_head(in_channels: int) -> nn.Sequential:
    """Conv3x3 with bias -> sigmoid (the forward scales it by 2: inverse depth in (0, 2) 1/m)."""
    return nn.Sequential(nn.Conv2d(in_channels, 1, 3, padding=1), nn.Sigmoid())


class MVDepthNet(nn.Module):
    """The MVDepthNet network (official ``depthNet`` parameter names).

    Args:
        align_corners: for the bilinear decoder upsampling and the cost-volume ``grid_sample``. True reproduces
            PyTorch 0.3, which the released model was trained with; False is what the unpatched official calls do on
            torch >= 1.3 (2 % different output).
    """

    def __init__(self, align_corners: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.conv1 = _down_conv_layer(3 + N_PLANES, 128, 7)
        self.conv2 = _down_conv_layer(128, 256, 5)
        self.conv3 = _down_conv_layer(256, 512, 3)
        self.conv4 = _down_conv_layer(512, 512, 3)
        self.conv5 = _down_conv_layer(512, 512, 3)
        self.upconv5 = _up_conv_layer(512, 512, align_corners)
        self.iconv5 = _conv_layer(1024, 512)
        self.upconv4 = _up_conv_layer(512, 512, align_corners)
        self.iconv4 = _conv_layer(1024, 512)
        self.disp4 = _disp_head(512)
        self.upconv3 = _up_conv_layer(512, 256, align_corners)
        self.iconv3 = _conv_layer(513, 256)
        self.disp3 = _disp_head(256)
        self.upconv2 = _up_conv_layer(256, 128, align_corners)
        self.iconv2 = _conv_layer(257, 128)
        self.disp2 = _disp_head(128)
        self.upconv1 = _up_conv_layer(128, 64, align_corners)
        self.iconv1 = _conv_layer(65, 64)
        self.disp1 = _disp_head(64)
        depths = torch.tensor(plane_depths(), dtype=torch.float32)
        self.register_buffer("plane_depths", depths, persistent=False)                 # (64,) far -> near

    def cost_volume(self, left: torch.Tensor, right: torch.Tensor, KRKiUV: torch.Tensor,
                    KT: torch.Tensor) -> torch.Tensor:
        """Plane-sweep L1 cost. ``left (B, 3, H, W)``, ``right (B, S, 3, H, W)`` normalised images; ``KRKiUV
        (B, S, 3, H*W)`` (row-major pixels), ``KT (B, S, 3)``. Returns ``(B, 64, H, W)``: the mean over the ``S``
        sources of ``sum_c |warp(right_c) - left_c|`` (out-of-view samples are 0, unmasked, as in the official code)."""
        B, S = right.shape[:2]
        H, W = left.shape[-2:]
        depths = self.plane_depths.to(left.dtype)[None].expand(B, -1)
        total = None
        for s in range(S):
            grid = plane_sweep_grid(KRKiUV[:, s], KT[:, s], depths, H, W)              # (B, D, H, W, 2)
            warped = F.grid_sample(right[:, s], grid.view(B, N_PLANES * H, W, 2), mode="bilinear",
                                   padding_mode="zeros", align_corners=self.align_corners)
            cost = (warped.view(B, 3, N_PLANES, H, W) - left[:, :, None]).abs_().sum(dim=1)
            del warped, grid
            total = cost if total is None else total.add_(cost)
        return total if S == 1 else total.div_(S)

    def forward_volume(self, left: torch.Tensor, cost: torch.Tensor, return_features: bool = False):
        """Encoder-decoder on ``left (B, 3, H, W)`` + ``cost (B, 64, H, W)`` (H, W multiples of 32) ->
        ``[disp1 (B,1,H,W), disp2 (B,1,H/2,W/2), disp3, disp4]`` inverse depth in 1/m (plus the encoder outputs
        ``conv1..conv5`` when ``return_features``)."""
        conv1 = self.conv1(torch.cat((left, cost), dim=1))
        conv2 = self.conv2(conv1)
        conv3 = self.conv3(conv2)
        conv4 = self.conv4(conv3)
        conv5 = self.conv5(conv4)
        iconv5 = self.iconv5(torch.cat((self.upconv5(conv5), conv4), dim=1))
        iconv4 = self.iconv4(torch.cat((self.upconv4(iconv5), conv3), dim=1))
        disp4 = 2.0 * self.disp4(iconv4)
        iconv3 = self.iconv3(torch.cat((self.upconv3(iconv4), conv2, _nearest_up2(disp4)), dim=1))
        disp3 = 2.0 * self.disp3(iconv3)
        iconv2 = self.iconv2(torch.cat((self.upconv2(iconv3), conv1, _nearest_up2(disp3)), dim=1))
        disp2 = 2.0 * self.disp2(iconv2)
        iconv1 = self.iconv1(torch.cat((self.upconv1(iconv2), _nearest_up2(disp2)), dim=1))
        disp1 = 2.0 * self.disp1(iconv1)
        disps = [disp1, disp2, disp3, disp4]
        if return_features:
            return disps, [conv1, conv2, conv3, conv4, conv5]
        return disps

    def forward(self, left_image: torch.Tensor, right_image: torch.Tensor, KRKiUV: torch.Tensor,
                KT: torch.Tensor) -> List[torch.Tensor]:
        """Single pair, official argument layout but row-major pixels: ``left_image, right_image (B, 3, H, W)``
        normalised, ``KRKiUV (B, 3, H*W)``, ``KT (B, 3, 1)`` -> ``[disp1, disp2, disp3, disp4]``."""
        cost = self.cost_volume(left_image, right_image[:, None], KRKiUV[:, None], KT[:, None, :, 0])
        return self.forward_volume(left_image, cost)


def _fill_num_batches_tracked(model: nn.Module, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """PyTorch 0.3 checkpoints have no BatchNorm ``num_batches_tracked``: add zeros for exactly those keys when
    *all* of them are absent (any other missing key still fails the strict load)."""
    counters = [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]
    if counters and not any(k in sd for k in counters):
        sd = dict(sd)
        sd.update({k: torch.zeros((), dtype=torch.long) for k in counters})
    return sd


def load_mvdepthnet(checkpoint: Optional[str] = None, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                    align_corners: bool = True) -> MVDepthNet:
    """An eval-mode :class:`MVDepthNet` loaded ``strict=True`` from a checkpoint (``{'state_dict': ...}`` as released,
    a bare state dict, or ``.safetensors``; with or without ``num_batches_tracked``) or a state dict."""
    if (checkpoint is None) == (state_dict is None):
        raise ValueError("give exactly one of checkpoint or state_dict")
    sd = extract_state_dict(load_checkpoint(checkpoint) if checkpoint is not None else state_dict)
    model = MVDepthNet(align_corners=align_corners)
    sd = _fill_num_batches_tracked(model, sd)
    load_state_dict_strict(model, sd, what="MVDepthNet" + (f" from {checkpoint}" if checkpoint else ""))
    return model.eval()


class MVDepthNetEstimator(DepthEstimator):
    """MVDepthNet behind the :class:`DepthEstimator` interface.

    * One measurement frame, as in the paper. With several, the per-source cost volumes are averaged before the
      network (the official README's suggestion for multi-view input; checked against the fixture's two-source run).
    * Width and height must be multiples of 32; the model was trained at 320x256 (its normalisation constants and
      receptive field assume that size), so use 320x256 as the working resolution.
    * ``channel_order``: the official ``example2.py`` feeds OpenCV's BGR; its sample data and DeepVideoMVS' MVDepthNet
      baseline use RGB, which is the likelier training order, so RGB is the default. Normalisation ``(x - 81) / 35``.
    * Planes are fixed by the model (64, inverse depth, 0.5 to 50 m). Depth = 1 / disp1; pixels outside
      ``[min_depth, max_depth]`` are NaN (confidence 0).
    * Confidence (the network has none; this one is ours, a heuristic, not learned): the photometric support of the
      network's depth in its own cost volume times its visibility. ``p = softmax(-c / T)`` over the 64 planes of the
      (source-averaged) cost volume ``c`` after a 5x5 box filter, with ``T = confidence_temperature`` (cost units: L1
      over 3 normalised channels); the mass of ``p`` on the 4 planes ``floor(f)-1 .. floor(f)+2`` around the network's
      fractional plane index ``f`` (MVSNet's window), multiplied by the fraction of sources in which the 3-D point lies
      in front of the camera and inside the image. High where the network agrees with a distinct cost minimum, low
      in textureless areas, where the network disagrees with the photometric evidence, or out of view.
    """

    name = "mvdepthnet"
    preferred_measurement_frames = 1

    def __init__(self, model: MVDepthNet, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0,
                 channel_order: str = "rgb", confidence_temperature: float = 0.2, compile: Any = "auto"):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if not confidence_temperature > 0:
            raise ValueError(f"confidence_temperature must be > 0, got {confidence_temperature}")
        self.model = model.to(self.device).eval()
        self.channel_order = channel_order
        self.temperature = float(confidence_temperature)
        # "auto" stays eager: not measured (its time is mostly full-resolution convolutions, which compiling
        # leaves to the same oneDNN kernels); compile=True forces it
        use = resolve_compile(compile, self.device, pays_on_cpu=False)
        self._cost_volume = CompiledCall(self.model.cost_volume, "MVDepthNet cost volume", use)
        self._forward_volume = CompiledCall(self.model.forward_volume, "MVDepthNet", use)

    def _images(self, frames: Sequence[Frame]) -> torch.Tensor:
        """``(V, 3, H, W)`` normalised network input, C-contiguous, in the configured channel order."""
        arr = np.stack([f.image for f in frames])                                       # (V, H, W, 3) RGB
        if self.channel_order == "bgr":
            arr = arr[..., ::-1]
        imgs = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).to(self.device)
        return normalize_images(imgs).contiguous()

    def confidence(self, cost: torch.Tensor, disp: torch.Tensor, KRKiUV: torch.Tensor,
                   KT: torch.Tensor) -> torch.Tensor:
        """``cost (1, 64, H, W)``, ``disp (1, 1, H, W)`` (network inverse depth), ``KRKiUV (S, 3, H*W)``,
        ``KT (S, 3)`` -> ``(H, W)`` in [0, 1] (see the class docstring)."""
        H, W = cost.shape[-2:]
        smooth = F.avg_pool2d(cost, 5, stride=1, padding=2, count_include_pad=False)
        prob = F.softmax(-smooth / self.temperature, dim=1)
        index = ((disp[:, 0] - INV_DEPTH_MIN) / INV_DEPTH_STEP).floor().long()        # (1, H, W)
        support = window_confidence(prob, index)[0]
        X = KRKiUV * (1.0 / disp[0].reshape(1, 1, H * W)) + KT[:, :, None]              # (S, 3, H*W)
        u, v = X[:, 0] / X[:, 2], X[:, 1] / X[:, 2]
        seen = (X[:, 2] > 0) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
        return support * seen.float().mean(0).view(H, W)

    @torch.inference_mode()
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state=None) -> DepthResult:
        t0 = time.perf_counter()
        check_frames(reference, measurements, 32, "MVDepthNet")
        frames = [reference, *measurements]
        H, W = reference.height, reference.width
        imgs = self._images(frames)
        K = torch.from_numpy(np.stack([f.K for f in frames[1:]])).to(self.device)
        T_ref = frames[0].T_world_cam
        ref_to_src = np.stack([np.linalg.inv(f.T_world_cam) @ T_ref for f in frames[1:]])
        KRKiUV, KT = pair_rays(K, torch.from_numpy(ref_to_src).to(self.device), H, W)
        left = imgs[:1]
        cost = self._cost_volume(left, imgs[None, 1:], KRKiUV[None], KT[None])     # (1, 64, H, W)
        disp = self._forward_volume(left, cost)[0]                                  # (1, 1, H, W)
        conf = self.confidence(cost, disp, KRKiUV, KT)
        disp_np = disp[0, 0].float().cpu().numpy()
        conf_np = conf.float().clamp(0.0, 1.0).cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = (1.0 / disp_np).astype(np.float32)
        bad = ~(np.isfinite(depth) & (depth >= self.min_depth) & (depth <= self.max_depth))
        depth[bad] = np.nan
        conf_np[bad] = 0.0
        return DepthResult(depth=depth, confidence=conf_np.astype(np.float32), K=reference.K.copy(), state=state,
                           info={"model": self.name, "n_sources": len(measurements),
                                 "ms": 1000.0 * (time.perf_counter() - t0),
                                 "compile": self._forward_volume.describe()})


def build(checkpoint: Optional[str] = None, device: str = "auto", **options) -> MVDepthNetEstimator:
    """Registry builder. ``checkpoint``: the released ``opensource_model.pth.tar`` or a compatible state dict
    (required). Options: ``min_depth``, ``max_depth``, ``channel_order`` ('rgb'), ``align_corners`` (True),
    ``confidence_temperature`` (0.2), ``compile`` ("auto": eager; true: torch.compile, see ``models/compiled.py``)."""
    if not checkpoint:
        raise ValueError("mvdepthnet needs a checkpoint "
                         "(the released opensource_model.pth.tar or a compatible state dict)")
    model = load_mvdepthnet(checkpoint, align_corners=bool(options.pop("align_corners", True)))
    return MVDepthNetEstimator(model, device=device, **options)
