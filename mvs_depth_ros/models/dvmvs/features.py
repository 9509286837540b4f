"""Image features: MNASNet 1.0 backbone (first 14 layers) and the 32-channel feature pyramid.

Written from the MNASNet paper (Tan et al., CVPR 2019) and torchvision's layer layout so that the
official DeepVideoMVS files ``0_feature_extractor`` / ``1_feature_pyramid`` load with ``strict=True``;
torchvision itself is not needed.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: MNASNet 1.0 stages used by DVMVS: (in, out, kernel, stride, expansion, repeats)
_STACKS = {
    "layer2": [(16, 24, 3, 2, 3, 3)],
    "layer3": [(24, 40, 5, 2, 3, 3)],
    "layer4": [(40, 80, 5, 2, 6, 3), (80, 96, 3, 1, 6, 2)],
    "layer5": [(96, 192, 5, 2, 6, 4), (192, 320, 3, 1, 6, 1)],
}
#: channels of the five backbone outputs (strides 2, 4, 8, 16, 32)
BACKBONE_CHANNELS = (16, 24, 40, 96, 320)
FPN_CHANNELS = 32


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand, kxk depthwise (stride), 1x1 project; identity shortcut when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int):
        super().__init__()
        mid = in_ch * expansion
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size, stride=stride, padding=kernel_size // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y + x if self.apply_residual else y


def _stack(in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int, repeats: int) -> nn.Sequential:
    blocks = [InvertedResidual(in_ch, out_ch, kernel_size, stride, expansion)]
    blocks += [InvertedResidual(out_ch, out_ch, kernel_size, 1, expansion) for _ in range(repeats - 1)]
    return nn.Sequential(*blocks)


class FeatureExtractor(nn.Module):
    """MNASNet 1.0 layers 0-13, split as in DVMVS.

    (B, 3, H, W) ImageNet-normalised RGB -> five maps at strides 2..32 with 16, 24, 40, 96, 320 channels.
    """

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        for name, stacks in _STACKS.items():
            setattr(self, name, nn.Sequential(*[_stack(*s) for s in stacks]))

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x1 = self.layer1(image)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        x5 = self.layer5(x4)
        return x1, x2, x3, x4, x5


class FeaturePyramid(nn.Module):
    """Top-down FPN (Lin et al. 2017) as in torchvision, without extra blocks.

    Key layout ``inner_blocks.N.0`` / ``layer_blocks.N.0`` (torchvision >= 0.13); the 2021 files'
    ``inner_blocks.N`` names are mapped by the loader.
    """

    def __init__(self, in_channels: Tuple[int, ...], out_channels: int):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
                                          for _ in in_channels)

    def forward(self, xs: List[torch.Tensor], n_outputs: int) -> List[torch.Tensor]:
        """``xs`` finest first; returns the ``n_outputs`` finest outputs (the coarsest output of the
        full FPN is not used by DVMVS and is not computed: it does not influence the others)."""
        last = self.inner_blocks[-1](xs[-1])
        outs: List[torch.Tensor] = []
        for idx in range(len(xs) - 2, -1, -1):
            lateral = self.inner_blocks[idx](xs[idx])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            if idx < n_outputs:
                outs.insert(0, self.layer_blocks[idx](last))
        return outs


class FeatureShrinker(nn.Module):
    """Backbone maps -> 32-channel features at 1/2, 1/4, 1/8, 1/16 (each (B, 32, H/s, W/s))."""

    def __init__(self):
        super().__init__()
        self.fpn = FeaturePyramid(BACKBONE_CHANNELS, FPN_CHANNELS)

    def forward(self, *layers: torch.Tensor, n_outputs: int = 4) -> List[torch.Tensor]:
        return self.fpn(list(layers), n_outputs)
