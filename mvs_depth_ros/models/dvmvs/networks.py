"""Cost-volume encoder, multi-scale depth decoder and the ConvLSTM fusion of DeepVideoMVS.

Shapes are for the official 320x256 input (cost volume at 160x128); any size divisible by 32 works.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .features import FPN_CHANNELS
from .layers import DecoderBlock, EncoderBlock, conv_layer, depth_layer_3x3, upsample2x

HYPER_CHANNELS = 32
N_DEPTH_LEVELS = 64
#: the range the published networks were trained for; the sigmoid heads map to [1/MAX, 1/MIN]
TRAIN_MIN_DEPTH = 0.25
TRAIN_MAX_DEPTH = 20.0


class CostVolumeEncoder(nn.Module):
    """Fuses the cost volume with the reference features, coarse to fine.

    Inputs: features (B, 32, H/2..H/16, ...), cost volume (B, 64, H/2, W/2).
    Returns ``skip0..skip3`` (B, 32/64/128/256, H/2..H/16) and ``bottom`` (B, 512, H/32, W/32).
    """

    def __init__(self, n_depth_levels: int = N_DEPTH_LEVELS):
        super().__init__()
        h = HYPER_CHANNELS
        self.aggregator0 = conv_layer(n_depth_levels + FPN_CHANNELS, h, 5)
        self.encoder_block0 = EncoderBlock(h, 2 * h, 5)
        self.aggregator1 = conv_layer(2 * h + FPN_CHANNELS, 2 * h, 3)
        self.encoder_block1 = EncoderBlock(2 * h, 4 * h, 3)
        self.aggregator2 = conv_layer(4 * h + FPN_CHANNELS, 4 * h, 3)
        self.encoder_block2 = EncoderBlock(4 * h, 8 * h, 3)
        self.aggregator3 = conv_layer(8 * h + FPN_CHANNELS, 8 * h, 3)
        self.encoder_block3 = EncoderBlock(8 * h, 16 * h, 3)

    def forward(self, f_half: torch.Tensor, f_quarter: torch.Tensor, f_one_eight: torch.Tensor,
                f_one_sixteen: torch.Tensor, cost_volume: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        skip0 = self.aggregator0(torch.cat([f_half, cost_volume], dim=1))
        skip1 = self.aggregator1(torch.cat([f_quarter, self.encoder_block0(skip0)], dim=1))
        skip2 = self.aggregator2(torch.cat([f_one_eight, self.encoder_block1(skip1)], dim=1))
        skip3 = self.aggregator3(torch.cat([f_one_sixteen, self.encoder_block2(skip2)], dim=1))
        bottom = self.encoder_block3(skip3)
        return skip0, skip1, skip2, skip3, bottom


class CostVolumeDecoder(nn.Module):
    """U-Net decoder with a sigmoid inverse-depth head at each of 1/16, 1/8, 1/4, 1/2 and full resolution.

    ``forward`` returns the five **sigmoid** maps, finest first: (B, 1, H, W), (B, 1, H/2, W/2), ...
    (B, 1, H/16, W/16). :meth:`to_depth` maps them to metres: ``1 / (3.95 s + 0.05)`` in [0.25, 20].
    """

    def __init__(self):
        super().__init__()
        h = HYPER_CHANNELS
        self.decoder_block1 = DecoderBlock(16 * h, 8 * h, 3, plus_one=False)
        self.decoder_block2 = DecoderBlock(8 * h, 4 * h, 3, plus_one=True)
        self.decoder_block3 = DecoderBlock(4 * h, 2 * h, 3, plus_one=True)
        self.decoder_block4 = DecoderBlock(2 * h, h, 5, plus_one=True)
        self.refine = nn.Sequential(conv_layer(h + 4, h, 5), conv_layer(h, h, 5))
        self.depth_layer_one_sixteen = depth_layer_3x3(8 * h)
        self.depth_layer_one_eight = depth_layer_3x3(4 * h)
        self.depth_layer_quarter = depth_layer_3x3(2 * h)
        self.depth_layer_half = depth_layer_3x3(h)
        self.depth_layer_full = depth_layer_3x3(h)

    @staticmethod
    def to_depth(sigmoid: torch.Tensor) -> torch.Tensor:
        inverse_base = 1.0 / TRAIN_MAX_DEPTH
        inverse_range = 1.0 / TRAIN_MIN_DEPTH - 1.0 / TRAIN_MAX_DEPTH
        return 1.0 / (inverse_range * sigmoid + inverse_base)

    def forward(self, image: torch.Tensor, skip0: torch.Tensor, skip1: torch.Tensor, skip2: torch.Tensor,
                skip3: torch.Tensor, bottom: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.decoder_block1(bottom, skip3, None)
        s16 = self.depth_layer_one_sixteen(x)
        x = self.decoder_block2(x, skip2, s16)
        s8 = self.depth_layer_one_eight(x)
        x = self.decoder_block3(x, skip1, s8)
        s4 = self.depth_layer_quarter(x)
        x = self.decoder_block4(x, skip0, s4)
        s2 = self.depth_layer_half(x)
        x = self.refine(torch.cat([upsample2x(x), upsample2x(s2), image], dim=1))
        s1 = self.depth_layer_full(x)
        return s1, s2, s4, s8, s16


class LayerNormConvLSTMCell(nn.Module):
    """ConvLSTM cell of DVMVS: one 3x3 conv for the four gates, layer norm (over H, W, no affine) on the
    candidate ``g`` and on the new cell state, CELU activations.

    ``x`` (B, Cin, h, w), ``hidden``/``cell`` (B, C, h, w) -> new (hidden, cell).
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size,
                              padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        gates = self.conv(torch.cat([x, hidden], dim=1))
        cc_i, cc_f, cc_o, cc_g = torch.split(gates, self.hidden_dim, dim=1)
        hw = list(x.shape[-2:])
        g = torch.celu(torch.layer_norm(cc_g, hw))
        c_next = torch.layer_norm(torch.sigmoid(cc_f) * cell + torch.sigmoid(cc_i) * g, hw)
        h_next = torch.sigmoid(cc_o) * torch.celu(c_next)
        return h_next, c_next


class LSTMFusion(nn.Module):
    """Holds the cell under the official name ``lstm_cell``. The hidden-state warp lives in
    :func:`mvs_depth_ros.models.dvmvs.warps.warp_hidden_state`, applied by the caller before :meth:`forward`."""

    def __init__(self):
        super().__init__()
        self.lstm_cell = LayerNormConvLSTMCell(16 * HYPER_CHANNELS, 16 * HYPER_CHANNELS)

    def forward(self, encoding: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``encoding`` (B, 512, h, w); ``state`` (hidden already warped to this view, cell) or None (zeros)."""
        if state is None:
            zeros = encoding.new_zeros((encoding.shape[0], self.lstm_cell.hidden_dim) + tuple(encoding.shape[-2:]))
            state = (zeros, zeros)
        return self.lstm_cell(encoding, *state)
