"""The DynamicStereo network (Karaev et al., "DynamicStereo: Consistent Dynamic Depth from Stereo Videos",
CVPR 2023): a window of rectified stereo pairs in, a disparity map per frame out.

Written from the paper and the behaviour notes of ``shared/fixtures/dynamic_stereo/README.md`` (no
upstream code is used). The module tree and parameter names equal the official ``DynamicStereo`` in its
evaluation configuration (``attention_type="self_stereo_temporal_update_time_update_space"``, 3-D update
blocks, one update block per scale), so the published checkpoints load with ``strict=True``.

Forward pass for a window of ``T`` frames (images padded to multiples of 32):

1. ``fnet`` (shared by left and right) -> features at 1/4.
2. 1/16: 4x4 average pooling, sine positional encoding, learned time embedding (resampled by nearest
   neighbour when ``T != 5``), then 4 x (self attention, cross attention, temporal attention).
3. Coarse-to-fine refinement with a 1-D correlation pyramid per scale: ``iters//2`` updates at 1/16,
   ``iters//2`` at 1/8 and ``iters`` at 1/4. Each scale starts from the previous scale's convex-upsampled
   field, resized and multiplied by ``-0.5`` (the sign flips at every transition, as in the official
   network), and from a hidden state that averages the new scale's features with the coarser state.
4. Output: the convex-upsampled full-resolution field of the last update; disparity = ``|x channel|``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic_stereo_blocks import (FEATURE_DIM, BasicEncoder, LocalFeatureTransformer, TimeAttnBlock,
                                    resample_time_embedding, sine_position_encoding)
from .dynamic_stereo_update import (HIDDEN_DIM, UPSAMPLE_RATE, CorrPyramid1D, SequenceUpdateBlock3D,
                                    convex_upsample, pixel_columns)

#: frames the time embedding was trained for
NUM_FRAMES = 5
#: (self, cross, temporal) attention rounds at 1/16
ATTENTION_DEPTH = 4
#: input sizes must be multiples of this (the caller pads)
DIVISOR = 32


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _split_context(fmap: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, 256, h, w)`` -> hidden state ``tanh`` and context ``relu`` halves ``(N, 128, h, w)``."""
    net, inp = torch.split(fmap, [HIDDEN_DIM, HIDDEN_DIM], dim=1)
    return torch.tanh(net), F.relu(inp)


@dataclass
class DynamicStereoOutput:
    """``flow (B, T, 2, H, W)``: full-resolution field of the last update (x = -disparity when the model is
    right; the official disparity is ``|flow[:, :, 0]|``). ``last_delta (B, T, 2, H/4, W/4)``: the last 1/4
    update (pixels at 1/4 resolution), a convergence measure."""

    flow: torch.Tensor
    last_delta: torch.Tensor

    @property
    def disparity(self) -> torch.Tensor:
        """``(B, T, H, W)`` official disparity ``|x|``."""
        return self.flow[:, :, 0].abs()


class DynamicStereo(nn.Module):
    """DynamicStereo with the official parameter names (274 state-dict entries)."""

    def __init__(self, num_frames: int = NUM_FRAMES):
        super().__init__()
        self.num_frames = num_frames
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, FEATURE_DIM))
        self.fnet = BasicEncoder(FEATURE_DIM)
        self.update_block08 = SequenceUpdateBlock3D(HIDDEN_DIM, attention=False)
        self.update_block16 = SequenceUpdateBlock3D(HIDDEN_DIM, attention=True)
        self.update_block04 = SequenceUpdateBlock3D(HIDDEN_DIM, attention=False)
        self.time_attn_blocks = nn.ModuleList([TimeAttnBlock(FEATURE_DIM) for _ in range(ATTENTION_DEPTH)])
        self.self_attn_blocks = nn.ModuleList([LocalFeatureTransformer("self") for _ in range(ATTENTION_DEPTH)])
        self.cross_attn_blocks = nn.ModuleList([LocalFeatureTransformer("cross") for _ in range(ATTENTION_DEPTH)])

    # ------------------------------------------------------------------------------------ features
    def features(self, left: torch.Tensor, right: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``left, right (N, 3, H, W)`` float 0..255 -> 1/4 features ``(N, 256, H/4, W/4)`` each."""
        n = left.shape[0]
        images = 2 * (torch.cat([left, right], dim=0) / 255.0) - 1.0
        fmaps = self.fnet(images)
        return fmaps[:n], fmaps[n:]

    def attend(self, fmap1: torch.Tensor, fmap2: torch.Tensor, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stereo-temporal attention at 1/16: ``(B*T, 256, h, w)`` pair -> same shapes."""
        n, c, h, w = fmap1.shape
        pe = sine_position_encoding(c, h, w, device=fmap1.device)
        embed = resample_time_embedding(self.time_embed, T)[0]  # (T, C)
        embed = embed.repeat(n // T, 1)[:, :, None, None]  # (N, C, 1, 1)
        fmap1 = fmap1 + pe + embed
        fmap2 = fmap2 + pe + embed
        for self_attn, cross_attn, time_attn in zip(self.self_attn_blocks, self.cross_attn_blocks,
                                                    self.time_attn_blocks):
            t1, t2 = fmap1.flatten(2).transpose(1, 2), fmap2.flatten(2).transpose(1, 2)  # (N, h*w, C)
            t1, t2 = cross_attn(*self_attn(t1, t2))
            fmap1 = t1.transpose(1, 2).reshape(n, c, h, w)
            fmap2 = t2.transpose(1, 2).reshape(n, c, h, w)
            fmap1, fmap2 = time_attn(fmap1, T), time_attn(fmap2, T)
        return fmap1, fmap2

    # ---------------------------------------------------------------------------------- refinement
    def _refine(self, block: SequenceUpdateBlock3D, corr: CorrPyramid1D, net: torch.Tensor, inp: torch.Tensor,
                flow: torch.Tensor, n_iters: int, T: int, scale: int, full_size: Tuple[int, int],
                trace: Optional[Dict], tag: str):
        """``n_iters`` updates at one scale. Returns ``(flow, net, flow_up, delta)``: the field and hidden
        state at this scale, the x4 convex-upsampled field after the last update and the last update.
        ``scale``: this scale's x4-upsampled field is ``1/scale`` of the full resolution."""
        columns = pixel_columns(*flow[:, 0].shape, device=flow.device)
        flow_up = delta = None
        for it in range(n_iters):
            last = it == n_iters - 1
            lookup = corr(columns + flow[:, 0])
            if trace is not None and it == 0:
                trace[f"corr_init_{tag}"] = lookup
            net, mask, delta = block(net, inp, lookup, flow, T, with_mask=last or trace is not None)
            flow = flow + delta
            if mask is not None:
                flow_up = convex_upsample(flow, mask, UPSAMPLE_RATE)
            if trace is not None:
                trace.setdefault(f"flow_{tag}_iters", []).append(flow)
                pred = flow_up if scale == 1 else scale * _resize(flow_up, full_size)
                trace.setdefault("preds", []).append(pred[:, :1])
        if trace is not None:
            trace[f"flow_up_{tag}_last"] = flow_up
        return flow, net, flow_up, delta

    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int = 20,
                trace: Optional[Dict[str, object]] = None) -> DynamicStereoOutput:
        """``left, right (B, T, 3, H, W)`` float RGB 0..255, ``H, W`` multiples of 32 (pad first; the padded
        width must be >= 256). ``iters`` (>= 2): ``iters//2`` updates at 1/16 and 1/8, ``iters`` at 1/4.

        ``trace``: a dict to receive intermediates (features, attention outputs, correlation lookups,
        every update's field, every full-resolution prediction); costs time and memory, tests only.
        """
        if left.ndim != 5 or left.shape != right.shape or left.shape[2] != 3:
            raise ValueError(f"left/right must both be (B, T, 3, H, W), got {tuple(left.shape)}, {tuple(right.shape)}")
        b, T, _, H, W = left.shape
        if H % DIVISOR or W % DIVISOR:
            raise ValueError(f"image size {W}x{H} must be a multiple of {DIVISOR} (pad the input)")
        if iters < 2:
            raise ValueError(f"iters must be >= 2, got {iters}")
        fmap1, fmap2 = self.features(left.reshape(b * T, 3, H, W), right.reshape(b * T, 3, H, W))
        h, w = fmap1.shape[-2:]

        f1_16, f2_16 = F.avg_pool2d(fmap1, 4, stride=4), F.avg_pool2d(fmap2, 4, stride=4)
        if trace is not None:
            trace.update(fnet=(fmap1, fmap2), fmap_dw16_pre_attn=(f1_16, f2_16))
        f1_16, f2_16 = self.attend(f1_16, f2_16, T)
        f1_8 = (F.avg_pool2d(fmap1, 2, stride=2) + _resize(f1_16, (h // 2, w // 2))) / 2
        f2_8 = (F.avg_pool2d(fmap2, 2, stride=2) + _resize(f2_16, (h // 2, w // 2))) / 2
        if trace is not None:
            trace["fmap_dw16_post_attn"] = (f1_16, f2_16)

        # 1/16: zero initial field, hidden state and context from the attended left features
        net, inp = _split_context(f1_16)
        flow = torch.zeros(b * T, 2, *f1_16.shape[-2:], device=fmap1.device, dtype=fmap1.dtype)
        flow, net, flow_up, _ = self._refine(self.update_block16, CorrPyramid1D(f1_16, f2_16), net, inp, flow,
                                             iters // 2, T, 4, (H, W), trace, "dw16")

        # 1/8: flipped, rescaled 1/16 field; hidden state averaged with the 1/16 state
        flow = -(h // 2) / flow_up.shape[-2] * _resize(flow_up, (h // 2, w // 2))
        net8, inp = _split_context(f1_8)
        net = (net8 + _resize(net, (h // 2, w // 2))) / 2
        if trace is not None:
            trace["flow_init_dw8"] = flow
        flow, net, flow_up, _ = self._refine(self.update_block08, CorrPyramid1D(f1_8, f2_8), net, inp, flow,
                                             iters // 2, T, 2, (H, W), trace, "dw8")

        # 1/4: flipped, rescaled 1/8 field; raw fnet features for the correlation
        flow = -h / flow_up.shape[-2] * _resize(flow_up, (h, w))
        net4, inp = _split_context(fmap1)
        net = (net4 + _resize(net, (h, w))) / 2
        if trace is not None:
            trace["flow_init_dw4"] = flow
        flow, net, flow_up, delta = self._refine(self.update_block04, CorrPyramid1D(fmap1, fmap2), net, inp, flow,
                                                 iters, T, 1, (H, W), trace, "dw4")
        return DynamicStereoOutput(flow=flow_up.view(b, T, 2, H, W), last_delta=delta.view(b, T, 2, h, w))


__all__ = ["ATTENTION_DEPTH", "DIVISOR", "NUM_FRAMES", "DynamicStereo", "DynamicStereoOutput"]
