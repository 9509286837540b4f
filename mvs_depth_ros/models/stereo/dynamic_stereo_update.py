"""DynamicStereo iterative refinement: 1-D correlation pyramid, update block (motion encoder, separable
3-D ConvGRU over width/height/time, 3-D flow head, upsampling mask) and convex upsampling.

Written from the DynamicStereo paper and the fixture's behaviour notes; no upstream code is used.
Parameter names follow the official checkpoints.

Shapes: ``B`` batch, ``T`` frames in the window, ``N = B*T`` images (frame-major per batch item),
``h, w`` the size at the current scale. The 2-channel "flow" is the network's internal field: x trained
towards ``-disparity``, y unsupervised but carried (it feeds the motion encoder and the GRU input).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic_stereo_blocks import SpaceAttnBlock, TimeAttnBlock

HIDDEN_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 4
UPSAMPLE_RATE = 4


# ------------------------------------------------------------------------------------- correlation
class CorrPyramid1D:
    """All-pairs correlation along rows, ``<f1(x), f2(x')> / sqrt(C)``, average-pooled along ``x'``.

    ``fmap1, fmap2 (N, C, h, w)``. Level ``i`` has ``floor(w / 2^i)`` right-image columns. A lookup
    samples ``2r+1`` positions ``x/2^i + [-r..r]`` per level (linear interpolation, zero outside).
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = CORR_LEVELS,
                 radius: int = CORR_RADIUS):
        n, c, h, w = fmap1.shape
        if w >> (num_levels - 1) < 2:
            raise ValueError(f"feature width {w} too small for a {num_levels}-level correlation pyramid "
                             f"(need >= {2 << (num_levels - 1)} columns: padded input width >= 256 at 1/16)")
        self.radius = radius
        self.shape = (n, h, w)
        corr = fmap1.permute(0, 2, 3, 1) @ fmap2.permute(0, 2, 1, 3)  # (N, h, w, w2)
        corr = corr.reshape(n * h * w, 1, 1, w) / torch.sqrt(torch.tensor(float(c)))
        self.levels: List[torch.Tensor] = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, [1, 2], stride=[1, 2])
            self.levels.append(corr)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, h, w)``: right-image column to look up (pixel column + flow x) -> ``(N, L*(2r+1), h, w)``,
        level-major channels."""
        n, h, w = self.shape
        r = self.radius
        dx = torch.linspace(-r, r, 2 * r + 1, device=x.device, dtype=x.dtype)
        x = x.reshape(n * h * w, 1, 1)
        out = []
        for i, corr in enumerate(self.levels):
            xs = dx + x / 2 ** i  # (M, 1, 2r+1)
            grid = torch.stack([2 * xs / (corr.shape[-1] - 1) - 1, torch.zeros_like(xs)], dim=-1)
            out.append(F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
                       .view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def pixel_columns(n: int, h: int, w: int, device=None) -> torch.Tensor:
    """``(n, h, w)`` float32 column index of every pixel."""
    return torch.arange(w, device=device, dtype=torch.float32).expand(n, h, w)


# ------------------------------------------------------------------------------------ update block
class BasicMotionEncoder(nn.Module):
    """Per-image motion features: ``corr (N, 36, h, w)``, ``flow (N, 2, h, w)`` -> ``(N, 128, h, w)``
    (126 learned channels and the raw flow)."""

    def __init__(self, cor_planes: int = CORR_LEVELS * (2 * CORR_RADIUS + 1)):
        super().__init__()
        self.convc1 = nn.Conv2d(cor_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


def _axis_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a Conv3d whose kernel is 1-D (k along one of T, H, W; zero padding k//2) to
    ``x (B, C, T, H, W)`` as a 2-D convolution (much faster on CPU than ``conv3d``); same result."""
    b, c, t, h, w = x.shape
    kt, kh, kw = conv.kernel_size
    weight = conv.weight
    if kt == 1:  # along H or W: fold time into the batch
        x2 = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = F.conv2d(x2, weight[:, :, 0], conv.bias, padding=(kh // 2, kw // 2))
        return y.view(b, t, -1, h, w).transpose(1, 2)
    if kh == kw == 1:  # along time: fold H*W into the width
        y = F.conv2d(x.reshape(b, c, t, h * w), weight[..., 0], conv.bias, padding=(kt // 2, 0))
        return y.view(b, -1, t, h, w)
    raise ValueError(f"not a 1-D kernel: {conv.kernel_size}")


class SepConvGRU3D(nn.Module):
    """ConvGRU with separable 1-D kernels applied in three passes: along width ``(1,1,5)``, height
    ``(1,5,1)`` and time ``(5,1,1)``, zero padded. ``h (B, 128, T, h, w)``, ``x (B, Cin, T, h, w)``."""

    def __init__(self, hidden_dim: int = HIDDEN_DIM, input_dim: int = 256, k: int = 5):
        super().__init__()
        cin = hidden_dim + input_dim
        for idx, (ks, pad) in enumerate((((1, 1, k), (0, 0, k // 2)), ((1, k, 1), (0, k // 2, 0)),
                                         ((k, 1, 1), (k // 2, 0, 0))), start=1):
            for gate in "zrq":
                setattr(self, f"conv{gate}{idx}", nn.Conv3d(cin, hidden_dim, ks, padding=pad))

    def _pass(self, h: torch.Tensor, x: torch.Tensor, idx: int) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(_axis_conv(getattr(self, f"convz{idx}"), hx))
        r = torch.sigmoid(_axis_conv(getattr(self, f"convr{idx}"), hx))
        q = torch.tanh(_axis_conv(getattr(self, f"convq{idx}"), torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for idx in (1, 2, 3):
            h = self._pass(h, x, idx)
        return h


class FlowHead3D(nn.Module):
    """``(B, 128, T, h, w)`` -> ``(B, 2, T, h, w)`` flow update; 3x3x3 convs, zero padding (time too)."""

    def __init__(self, input_dim: int = HIDDEN_DIM, hidden_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv3d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv3d(hidden_dim, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


def to_video(x: torch.Tensor, T: int) -> torch.Tensor:
    """``(B*T, C, h, w)`` -> ``(B, C, T, h, w)``."""
    bt, c, h, w = x.shape
    return x.view(bt // T, T, c, h, w).transpose(1, 2)


def from_video(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, h, w)`` -> ``(B*T, C, h, w)``."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


class SequenceUpdateBlock3D(nn.Module):
    """One refinement step for a window of frames.

    Motion features (per image) are concatenated with the context ``inp``; with ``attention=True`` (the
    1/16 block) they go through a temporal and then a spatial attention block. The 3-D GRU updates the
    hidden state over width, height and time, the 3-D flow head predicts the flow update, and a 2-D head
    predicts the convex-upsampling mask (``9 * 4 * 4`` logits, scaled by 0.25).
    """

    def __init__(self, hidden_dim: int = HIDDEN_DIM, attention: bool = False):
        super().__init__()
        self.encoder = BasicMotionEncoder()
        self.gru = SepConvGRU3D(hidden_dim, input_dim=128 + hidden_dim)
        self.flow_head = FlowHead3D(hidden_dim, 256)
        self.mask = nn.Sequential(nn.Conv2d(hidden_dim, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 9 * UPSAMPLE_RATE ** 2, 1))
        self.attention = attention
        if attention:
            self.time_attn = TimeAttnBlock(dim=256, num_heads=8)
            self.space_attn = SpaceAttnBlock(dim=256, num_heads=8)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, T: int,
                with_mask: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """``net, inp (N, 128, h, w)``, ``corr (N, 36, h, w)``, ``flow (N, 2, h, w)`` ->
        ``net (N, 128, h, w)``, ``mask (N, 144, h, w)`` (None unless ``with_mask``), ``delta (N, 2, h, w)``."""
        x = torch.cat([inp, self.encoder(flow, corr)], dim=1)
        if self.attention:
            x = self.space_attn(self.time_attn(x, T=T))
        h = self.gru(to_video(net, T), to_video(x, T))
        delta = from_video(self.flow_head(h))
        net = from_video(h)
        mask = 0.25 * self.mask(net) if with_mask else None
        return net, mask, delta


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, rate: int = UPSAMPLE_RATE) -> torch.Tensor:
    """Upsample ``flow (N, D, h, w)`` by ``rate`` as a softmax-weighted combination of each pixel's 3x3
    neighbourhood (zero padded: border pixels are pulled towards 0); values are scaled by ``rate``.
    ``mask (N, 9*rate*rate, h, w)`` -> ``(N, D, rate*h, rate*w)``."""
    n, d, h, w = flow.shape
    weights = mask.view(n, 1, 9, rate, rate, h, w).softmax(dim=2)
    patches = F.unfold(rate * flow, [3, 3], padding=1).view(n, d, 9, 1, 1, h, w)
    up = (weights * patches).sum(dim=2)  # (N, D, rate, rate, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, d, rate * h, rate * w)


__all__ = ["BasicMotionEncoder", "CorrPyramid1D", "FlowHead3D", "SepConvGRU3D", "SequenceUpdateBlock3D",
           "convex_upsample", "from_video", "pixel_columns", "to_video"]
