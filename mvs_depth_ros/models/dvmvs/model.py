"""The DeepVideoMVS networks (pairnet, fusionnet) and one keyframe step with an explicit recurrent state.

:class:`DVMVSNet` holds the official modules under the names the weight files map to. :meth:`DVMVSNet.step`
is the body of the official ``run-testing.py`` loop for one keyframe, from features to the decoder output;
it also runs a batch of keyframes (one per training sequence) and is differentiable when autograd is on,
so training (``mvs_depth_ros.train.adapters``) runs the very code inference runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import FUSIONNET_FILES, PAIRNET_FILES, load_weight_folder
from .features import FeatureExtractor, FeatureShrinker
from .networks import (N_DEPTH_LEVELS, TRAIN_MAX_DEPTH, TRAIN_MIN_DEPTH, CostVolumeDecoder, CostVolumeEncoder,
                       LSTMFusion)
from .warps import (dot_product_cost_volume, grid_coverage, homogeneous_pixel_grid, inverse_depth_plane_depths,
                    plane_sweep_grids, reproject_depth_farthest, warp_hidden_state)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FusionState:
    """Recurrent state of fusionnet after one keyframe (all tensors on the network's device).

    ``hidden``/``cell`` (B, 512, H/32, W/32): ConvLSTM state, hidden in the view of ``pose``;
    ``depth`` (B, 1, H, W): full-resolution prediction; ``pose`` (4, 4) (B = 1) or (B, 4, 4) float32
    camera-to-world. B is 1 at inference.
    """

    hidden: torch.Tensor
    cell: torch.Tensor
    depth: torch.Tensor
    pose: torch.Tensor


@dataclass
class StepOutput:
    """Everything one keyframe step produces. Sigmoid/depth maps finest first: full, 1/2, 1/4, 1/8, 1/16,
    each (B, 1, H/s, W/s). ``depth_estimation`` (B, 1, H/32, W/32) is None for pairnet. ``coverage`` is
    (H/2, W/2) for one keyframe with (4, 4) poses, (B, H/2, W/2) for a batch."""

    depths: List[torch.Tensor]
    sigmoids: List[torch.Tensor]
    cost_volume: torch.Tensor
    skips: Tuple[torch.Tensor, ...]
    bottom: torch.Tensor
    coverage: torch.Tensor
    depth_estimation: Optional[torch.Tensor] = None
    state: Optional[FusionState] = None
    features: List[torch.Tensor] = field(default_factory=list)


class DVMVSNet(nn.Module):
    """pairnet (``fusion=False``) or fusionnet (``fusion=True``).

    Inference runs it in eval mode under ``inference_mode``; training runs the same :meth:`step` with
    autograd on (the cost volume then takes its differentiable path).
    """

    #: depth range (m) fixed by the published training: the sigmoid heads map to [1/max, 1/min]
    depth_range: Tuple[float, float] = (TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH)
    #: number of fronto-parallel planes of the cost volume
    n_planes: int = N_DEPTH_LEVELS

    def __init__(self, fusion: bool):
        super().__init__()
        self.fusion = fusion
        self.feature_extractor = FeatureExtractor()
        self.feature_shrinker = FeatureShrinker()
        self.cost_volume_encoder = CostVolumeEncoder()
        if fusion:
            self.lstm_fusion = LSTMFusion()
        self.cost_volume_decoder = CostVolumeDecoder()
        self._constants: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.eval()

    @property
    def module_files(self):
        return FUSIONNET_FILES if self.fusion else PAIRNET_FILES

    def load_official(self, folder: str) -> "DVMVSNet":
        """Load the official per-module weight files from ``folder`` (strict)."""
        load_weight_folder(self, folder, self.module_files)
        return self

    @staticmethod
    def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) RGB in 0-255 (uint8 or float) -> (N, 3, H, W) float32 ImageNet-normalised."""
        x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def features(self, images: torch.Tensor, n_outputs: int = 4) -> List[torch.Tensor]:
        """(N, 3, H, W) normalised images -> FPN features [(N, 32, H/2, W/2), ..., (N, 32, H/16, W/16)][:n_outputs]."""
        return self.feature_shrinker(*self.feature_extractor(images), n_outputs=n_outputs)

    def plane_constants(self, height: int, width: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached ``(uv1 (3, h*w), plane depths (64,))`` of the ``h x w`` (half-resolution) cost volume:
        pixel centres and the plane depths, far to near, uniform in inverse depth over :attr:`depth_range`."""
        key = (height, width, str(device))
        if key not in self._constants:
            self._constants[key] = (homogeneous_pixel_grid(height, width, device),
                                    inverse_depth_plane_depths(TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH, N_DEPTH_LEVELS, device))
        return self._constants[key]

    def step(self, image: torch.Tensor, features: Sequence[torch.Tensor], source_features: Sequence[torch.Tensor],
             pose: torch.Tensor, source_poses: Sequence[torch.Tensor], K: torch.Tensor,
             state: Optional[FusionState] = None, hidden_depth: Optional[torch.Tensor] = None) -> StepOutput:
        """One keyframe (inference), or one keyframe of each of B sequences (training).

        ``image`` (B, 3, H, W) normalised reference; ``features`` its 4 FPN maps; ``source_features[i]``
        (B, 32, H/2, W/2) of the measurement frames; ``pose``/``source_poses[i]`` camera-to-world float32,
        (4, 4) when B is 1 or (B, 4, 4); ``K`` float32 intrinsics at H x W, (3, 3) or (B, 3, 3); ``state``
        the previous fusionnet state (None: start of a sequence). Pairnet ignores ``state``.

        fusionnet: the previous prediction is splatted into this view (a non-differentiable estimate, as
        in the official code) and the ConvLSTM hidden state is warped with it; gradients flow through the
        warped hidden state and the cell into the previous steps. ``hidden_depth`` (B, 1, H/32, W/32),
        when given, replaces that estimate (DeepVideoMVS' training warps with ground truth; <= 0.01 =
        unknown, the hidden state is zeroed there).
        """
        height, width = image.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"DVMVS needs an image size divisible by 32, got {width}x{height}")
        batch = image.shape[0]
        if batch != 1 and (pose.dim() != 3 or K.dim() != 3):
            raise ValueError(f"a batch of {batch} keyframes needs poses (B, 4, 4) and K (B, 3, 3), got "
                             f"{tuple(pose.shape)} and {tuple(K.shape)}")
        h2, w2 = height // 2, width // 2
        K_half = K.clone()
        K_half[..., :2, :] /= 2.0
        uv1, plane_depths = self.plane_constants(h2, w2, image.device)
        grids = [plane_sweep_grids(pose, p, K_half, plane_depths, uv1, h2, w2) for p in source_poses]
        cost_volume = dot_product_cost_volume(features[0], source_features, grids)
        skip0, skip1, skip2, skip3, bottom = self.cost_volume_encoder(*features, cost_volume)

        out = StepOutput(depths=[], sigmoids=[], cost_volume=cost_volume, skips=(skip0, skip1, skip2, skip3),
                         bottom=bottom, coverage=grid_coverage(grids), features=list(features))
        decoder_input = bottom
        if self.fusion:
            K_lstm = K.clone()
            K_lstm[..., :2, :] /= 32.0
            lstm_state = None
            if state is None:
                out.depth_estimation = bottom.new_zeros((batch, 1) + tuple(bottom.shape[-2:]))
            else:
                if hidden_depth is not None:
                    out.depth_estimation = hidden_depth
                else:
                    estimate = reproject_depth_farthest(state.depth.detach(), state.pose, pose, K, K_half, (h2, w2))
                    out.depth_estimation = F.interpolate(estimate, scale_factor=1.0 / 16.0, mode="nearest")
                hidden = warp_hidden_state(state.hidden, out.depth_estimation, state.pose, pose, K_lstm)
                lstm_state = (hidden, state.cell)
            hidden, cell = self.lstm_fusion(bottom, lstm_state)
            decoder_input = hidden
        out.sigmoids = list(self.cost_volume_decoder(image, skip0, skip1, skip2, skip3, decoder_input))
        out.depths = [CostVolumeDecoder.to_depth(s) for s in out.sigmoids]
        if self.fusion:
            out.state = FusionState(hidden=hidden, cell=cell, depth=out.depths[0], pose=pose)
        return out
