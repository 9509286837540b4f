"""DynamicStereo building blocks: feature encoder and the attention layers used at 1/16 resolution.

Written from the DynamicStereo paper (Karaev et al., CVPR 2023) and the behaviour notes of the
conformance fixture (``shared/fixtures/dynamic_stereo/README.md``); no upstream code is used. Module and
parameter names follow the official checkpoints (``dynamic_stereo_sf.pth``), so those load strictly.

Shapes: ``N`` = number of images (batch x time), ``C`` channels, ``h, w`` the feature map size,
``L``/``S`` token counts, ``T`` the window length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 256
NUM_HEADS = 8


# ------------------------------------------------------------------------------------------- encoder
class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm; the shortcut is always a 1x1 conv + instance norm (even at
    stride 1 with equal channels, unlike RAFT). ``(N, Cin, H, W) -> (N, Cout, H/stride, W/stride)``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.downsample(x) + y)


class BasicEncoder(nn.Module):
    """Feature network ``fnet``: ``(N, 3, H, W)`` images in [-1, 1] -> ``(N, 256, H/4, W/4)``.

    conv7x7/2 (3->64) -> 2 x Res(64) -> Res(96, /2), Res(96) -> 2 x Res(128) -> conv1x1 (128->256);
    instance norm without affine parameters everywhere.
    """

    def __init__(self, output_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, 1), ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, 2), ResidualBlock(96, 96, 1))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, 1), ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(128, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


# ------------------------------------------------------------------------------- positional encodings
def sine_position_encoding(channels: int, h: int, w: int, device=None) -> torch.Tensor:
    """LoFTR's 2-D sine encoding (with its "temp bug fix"), ``(channels, h, w)`` float32.

    Positions start at 1. With ``div_k = exp(-2k ln(1e4) / (channels/2))``, ``k = 0..channels/4-1``:
    channels ``4k, 4k+1, 4k+2, 4k+3`` hold ``sin(x div_k), cos(x div_k), sin(y div_k), cos(y div_k)``.
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4, got {channels}")
    half = channels // 2
    div = torch.exp(torch.arange(0, half, 2, device=device).float() * (-math.log(10000.0) / half))[:, None, None]
    y = torch.ones(h, w, device=device).cumsum(0)[None]
    x = torch.ones(h, w, device=device).cumsum(1)[None]
    pe = torch.empty(channels, h, w, device=device)
    pe[0::4] = torch.sin(x * div)
    pe[1::4] = torch.cos(x * div)
    pe[2::4] = torch.sin(y * div)
    pe[3::4] = torch.cos(y * div)
    return pe


def resample_time_embedding(embed: torch.Tensor, T: int) -> torch.Tensor:
    """``(1, T0, C)`` learned per-frame embedding -> ``(1, T, C)`` by nearest resampling along time
    (frame ``t`` takes entry ``floor(t * T0 / T)``)."""
    if embed.shape[1] == T:
        return embed
    return F.interpolate(embed.permute(0, 2, 1), size=T, mode="nearest").permute(0, 2, 1)


# ---------------------------------------------------------------------------------- LoFTR attention
def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear (kernelised, ``elu + 1``) attention. ``q (N, L, H, D)``, ``k, v (N, S, H, D)`` -> ``(N, L, H, D)``."""
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    s = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / s)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s


class LoFTREncoderLayer(nn.Module):
    """One LoFTR transformer layer (linear attention, no projection biases).

    ``x (N, L, C)`` attends to ``source (N, S, C)``; returns ``x + LN2(MLP([x, LN1(merge(attn))]))``.
    """

    def __init__(self, d_model: int = FEATURE_DIM, nhead: int = NUM_HEADS):
        super().__init__()
        self.nhead = nhead
        self.dim = d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.ReLU(True),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, -1, self.nhead, self.dim)
        k = self.k_proj(source).view(n, -1, self.nhead, self.dim)
        v = self.v_proj(source).view(n, -1, self.nhead, self.dim)
        msg = self.norm1(self.merge(linear_attention(q, k, v).reshape(n, -1, self.nhead * self.dim)))
        msg = self.norm2(self.mlp(torch.cat([x, msg], dim=2)))
        return x + msg


class LocalFeatureTransformer(nn.Module):
    """A one-layer LoFTR transformer applied to a left/right pair of token sets ``(N, L, C)``.

    ``self``: both views attend to themselves with the same layer. ``cross``: the left view attends to the
    right one, then the right view attends to the *updated* left view.
    """

    def __init__(self, kind: str, d_model: int = FEATURE_DIM, nhead: int = NUM_HEADS):
        super().__init__()
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
        self.kind = kind
        self.layers = nn.ModuleList([LoFTREncoderLayer(d_model, nhead)])

    def forward(self, feat0: torch.Tensor, feat1: torch.Tensor):
        layer = self.layers[0]
        if self.kind == "self":
            return layer(feat0, feat0), layer(feat1, feat1)
        feat0 = layer(feat0, feat1)
        return feat0, layer(feat1, feat0)


# ------------------------------------------------------------------------------ temporal / spatial
class TemporalSelfAttention(nn.Module):
    """Multi-head softmax attention over time in which queries, keys and values are the input itself.

    The checkpoint carries a ``qkv`` projection, but the official network never applies it (fixture quirk 5);
    it is kept only so the checkpoint loads strictly. ``x (M, T, C) -> (M, T, C)``.
    """

    def __init__(self, dim: int = FEATURE_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # present in checkpoints, unused (quirk 5)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, t, c = x.shape
        heads = x.reshape(m, t, self.num_heads, c // self.num_heads).transpose(1, 2)  # (M, heads, T, d)
        attn = (heads @ heads.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ heads).transpose(1, 2).reshape(m, t, c))


class TimeAttnBlock(nn.Module):
    """Pre-norm residual attention along time at every pixel: ``x + fc(attn(LN(x)))``.

    ``x (B*T, C, h, w)`` (frames of a video contiguous per batch item) -> same shape.
    """

    def __init__(self, dim: int = FEATURE_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.temporal_attn = TemporalSelfAttention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.temporal_norm1 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // T
        xt = x.view(b, T, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, T, c)
        xt = xt + self.temporal_fc(self.temporal_attn(self.temporal_norm1(xt)))
        return xt.view(b, h * w, T, c).permute(0, 2, 3, 1).reshape(bt, c, h, w)


class SpaceAttnBlock(nn.Module):
    """LoFTR self-attention over the ``h*w`` pixels of each frame. ``x (N, C, h, w)`` -> same shape."""

    def __init__(self, dim: int = FEATURE_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.encoder_layer = LoFTREncoderLayer(dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.encoder_layer(tokens, tokens)
        return tokens.transpose(1, 2).reshape(n, c, h, w)


__all__ = ["BasicEncoder", "LoFTREncoderLayer", "LocalFeatureTransformer", "ResidualBlock", "SpaceAttnBlock",
           "TemporalSelfAttention", "TimeAttnBlock", "linear_attention", "resample_time_embedding",
           "sine_position_encoding", "FEATURE_DIM", "NUM_HEADS"]
