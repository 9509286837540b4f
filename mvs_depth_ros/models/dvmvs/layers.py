"""Building blocks of the DeepVideoMVS cost-volume encoder/decoder.

Attribute names follow the official modules so that ``state_dict`` keys match the published weight files
(``conv_layer`` -> ``N.0`` conv + ``N.1`` BatchNorm, ``down_convolution.down_conv``, ``standard_convolution.conv1``...).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def conv_layer(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bn_relu: bool = True) -> nn.Sequential:
    """'Same'-padded conv without bias, followed by BatchNorm + ReLU (``bn_relu``)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)
    if not bn_relu:
        return nn.Sequential(conv)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def depth_layer_3x3(in_ch: int) -> nn.Sequential:
    """Single-channel sigmoid head: (B, in_ch, H, W) -> (B, 1, H, W) in (0, 1)."""
    return nn.Sequential(nn.Conv2d(in_ch, 1, 3, padding=1), nn.Sigmoid())


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with ``align_corners=True`` (used everywhere in the DVMVS decoder)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class DownconvolutionLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.down_conv = conv_layer(in_ch, out_ch, kernel_size, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_conv(x)


class UpconvolutionLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = conv_layer(in_ch, out_ch, kernel_size, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample2x(x))


class StandardLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, bn_relu: bool = True):
        super().__init__()
        self.conv1 = conv_layer(channels, channels, kernel_size, stride=1)
        self.conv2 = conv_layer(channels, channels, kernel_size, stride=1, bn_relu=bn_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class EncoderBlock(nn.Module):
    """Stride-2 conv then two convs: (B, in_ch, H, W) -> (B, out_ch, H/2, W/2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.down_convolution = DownconvolutionLayer(in_ch, out_ch, kernel_size)
        self.standard_convolution = StandardLayer(out_ch, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standard_convolution(self.down_convolution(x))


class DecoderBlock(nn.Module):
    """Upsample x2 + conv, concatenate the skip (and the upsampled coarser sigmoid depth), two convs.

    ``x`` (B, in_ch, h, w), ``skip`` (B, in_ch - out_ch, 2h, 2w), ``depth`` (B, 1, h, w) or None
    -> (B, out_ch, 2h, 2w).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, plus_one: bool):
        super().__init__()
        self.up_convolution = UpconvolutionLayer(in_ch, out_ch, kernel_size)
        self.convolution1 = conv_layer(in_ch + int(plus_one), out_ch, kernel_size)
        self.convolution2 = conv_layer(out_ch, out_ch, kernel_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, depth: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.up_convolution(x)
        parts = [x, skip] if depth is None else [x, skip, upsample2x(depth)]
        return self.convolution2(self.convolution1(torch.cat(parts, dim=1)))
