"""A differentiable forward per model family, returning multi-scale depth.

Each adapter owns the network module tree the estimator uses (same class, same parameter names) and
builds the network input from :class:`~mvs_depth_ros.core.frame.Frame` objects with the *estimators'*
preprocessing functions (``network_image``, ``projection_matrix``, ``world_to_camera``,
``DVMVSNet.normalize``), so training sees exactly what inference sees. Nothing here runs under
``inference_mode``.

``forward(batch)`` returns an :class:`AdapterOutput`: ``depths`` finest first (``depths[0]`` is the depth
the estimator would return, before its clamping), and optionally features for the feature-metric loss.

Model families: ``itermvs``, ``patchmatchnet`` (official ``{'model', 'optimizer', 'epoch'}`` checkpoints)
and ``dvmvs_pairnet`` (official weight folder). The only network code re-implemented is DVMVS' cost
volume: :func:`mvs_depth_ros.models.dvmvs.warps.dot_product_cost_volume` writes into a preallocated
tensor with ``torch.sum(..., out=...)``, which autograd refuses; :func:`dvmvs_cost_volume` computes the
same quantity out of place (checked against it in the tests).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import TrainingSample

log = logging.getLogger(__name__)

#: registry names that can be trained
TRAINABLE = ("itermvs", "patchmatchnet", "dvmvs_pairnet")


@dataclass
class AdapterOutput:
    depths: List[torch.Tensor]                     # finest first, each (B, 1, h, w) metres
    confidence: Optional[torch.Tensor] = None      # (B, 1, H, W) when the model has one
    features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (ref (B, C, h, w), src (B, S, C, h, w))
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)


class ModelAdapter:
    """Base class. ``net`` is the official module tree; ``feature_modules`` the feature extractor that
    the two-stage schedule freezes first."""

    name: str = ""
    #: image sides must be multiples of this
    multiple: int = 1
    #: checkpoint kind: "file" (one .ckpt) or "folder" (DVMVS module files)
    checkpoint_kind: str = "file"
    #: the model's own depth range (None: configurable)
    fixed_range: Optional[Tuple[float, float]] = None

    def __init__(self, net: nn.Module, device: torch.device, min_depth: float, max_depth: float):
        self.net = net.to(device)
        self.device = device
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    # -- parameters -------------------------------------------------------------------------------
    def feature_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def feature_parameters(self) -> List[nn.Parameter]:
        return [p for m in self.feature_modules() for p in m.parameters()]

    def set_features_frozen(self, frozen: bool) -> None:
        """Stage 1 of the two-stage schedule: no gradient into the feature extractor and its batch-norm
        statistics kept (eval mode) while frozen."""
        for m in self.feature_modules():
            for p in m.parameters():
                p.requires_grad_(not frozen)
            if frozen:
                m.eval()

    def train(self, bn_train: bool = True) -> None:
        """Training mode; ``bn_train=False`` keeps every batch-norm layer on its running statistics
        (what fine-tuning with batches of one or two wants)."""
        self.net.train()
        if not bn_train:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def eval(self) -> None:
        self.net.eval()

    # -- checkpoints ------------------------------------------------------------------------------
    def load_weights(self, checkpoint: str) -> None:
        raise NotImplementedError

    def forward(self, batch: Dict[str, object]) -> AdapterOutput:
        raise NotImplementedError

    def check_size(self, width: int, height: int) -> None:
        if width % self.multiple or height % self.multiple:
            raise ValueError(f"{self.name}: the working size must be a multiple of {self.multiple}, got "
                             f"{width}x{height}")

    def _range(self, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        dmin = torch.full((b,), self.min_depth, dtype=torch.float32, device=self.device)
        dmax = torch.full((b,), self.max_depth, dtype=torch.float32, device=self.device)
        return dmin, dmax


def _samples(batch: Dict[str, object]) -> List[TrainingSample]:
    return batch["samples"]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- IterMVS
class IterMVSAdapter(ModelAdapter):
    """IterMVS: full-resolution convex-upsampled depth, then the 1/4-resolution depth of every GRU
    iteration (last first) and of the hidden-state initialisation, then the initial soft-argmax."""

    name = "itermvs"
    multiple = 32

    def __init__(self, device: torch.device, min_depth: float, max_depth: float, iterations: int = 4):
        from ..models.itermvs import IterMVSNet
        super().__init__(IterMVSNet(iteration=iterations), device, min_depth, max_depth)

    def feature_modules(self) -> List[nn.Module]:
        return [self.net.feature_net]

    def load_weights(self, checkpoint: str) -> None:
        from ..models.mvs_common import load_official_weights
        load_official_weights(self.net, checkpoint, what="IterMVS")

    def _inputs(self, samples: Sequence[TrainingSample]):
        from ..models.itermvs import LEVELS
        from ..models.mvs_common import network_image, projection_matrix
        images = torch.from_numpy(np.stack([np.stack([network_image(f, "signed") for f in s.frames])
                                            for s in samples])).permute(0, 1, 4, 2, 3).to(self.device)
        proj = {l: torch.from_numpy(np.stack([np.stack([projection_matrix(f.K, f.T_world_cam, 0.5 ** l)
                                                        for f in s.frames]) for s in samples])).to(self.device)
                for l in LEVELS}
        return images, proj

    def forward(self, batch: Dict[str, object]) -> AdapterOutput:
        from ..models.itermvs import LEVELS
        samples = _samples(batch)
        images, proj = self._inputs(samples)
        b, v = images.shape[:2]
        feats = [self.net.feature_net(images[:, i].contiguous()) for i in range(v)]
        projs = [{l: proj[l][:, i] for l in LEVELS} for i in range(v)]
        dmin, dmax = self._range(b)
        out = self.net.iter_mvs(feats[0], feats[1:], projs[0], projs[1:], dmin, dmax, intermediates=True)
        iters = out["depth_iters"]                                   # (B, 1 + iterations, H/4, W/4)
        depths = [out["depth"]] + [iters[:, i:i + 1] for i in range(iters.shape[1] - 1, -1, -1)]
        depths.append(out["depth_init_softargmax"])
        src = torch.stack([f[1] for f in feats[1:]], 1).detach()
        return AdapterOutput(depths=depths, confidence=out["confidence"],
                             features=(feats[0][1].detach(), src))


# ------------------------------------------------------------------------------------- PatchmatchNet
class PatchmatchNetAdapter(ModelAdapter):
    """PatchmatchNet: refined full-resolution depth, then the last PatchMatch iteration of stages 1, 2, 3
    (1/2, 1/4, 1/8 resolution). The stage-3 initialisation is drawn from the adapter's own generator
    (part of the resumable state)."""

    name = "patchmatchnet"
    multiple = 8

    def __init__(self, device: torch.device, min_depth: float, max_depth: float, seed: int = 0):
        from ..models.patchmatchnet import OFFICIAL_CONFIG, PatchmatchNet
        super().__init__(PatchmatchNet(**OFFICIAL_CONFIG), device, min_depth, max_depth)
        self.generator = torch.Generator().manual_seed(int(seed))

    def feature_modules(self) -> List[nn.Module]:
        return [self.net.feature]

    def load_weights(self, checkpoint: str) -> None:
        from ..models.mvs_common import load_official_weights
        load_official_weights(self.net, checkpoint, what="PatchmatchNet")

    def forward(self, batch: Dict[str, object]) -> AdapterOutput:
        from ..models.mvs_common import network_image, world_to_camera
        samples = _samples(batch)
        b, v = len(samples), len(samples[0].frames)
        images = [torch.from_numpy(np.stack([network_image(s.frames[i], "unit") for s in samples]))
                  .permute(0, 3, 1, 2).contiguous().to(self.device) for i in range(v)]
        intr = torch.from_numpy(np.stack([np.stack([f.K for f in s.frames]) for s in samples])
                                .astype(np.float32)).to(self.device)
        extr = torch.from_numpy(np.stack([np.stack([world_to_camera(f.T_world_cam) for f in s.frames])
                                          for s in samples]).astype(np.float32)).to(self.device)
        dmin, dmax = self._range(b)
        h, w = images[0].shape[2:]
        init = torch.rand(self.net.init_shape(h, w, b), generator=self.generator)
        out = self.net(images, intr, extr, dmin, dmax, init_uniform=init)
        depths = [out["depth"]] + [out["depth_patchmatch"][s][-1] for s in (1, 2, 3)]
        return AdapterOutput(depths=depths, confidence=out["confidence"])


# ------------------------------------------------------------------------------------ DVMVS pairnet
def dvmvs_cost_volume(reference: torch.Tensor, sources: Sequence[torch.Tensor],
                      grids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Differentiable DVMVS cost volume (same value as ``dot_product_cost_volume``).

    ``reference`` (1, C, H, W); ``sources[i]`` (1, C, H, W); ``grids[i]`` (D, H, W, 2) -> (1, D, H, W):
    mean over sources of the channel mean of ``reference * warped source`` (bilinear, zeros outside).
    """
    channels = reference.shape[1]
    total = 0.0
    for source, grid in zip(sources, grids):
        d = grid.shape[0]
        warped = F.grid_sample(source.expand(d, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=True)                                  # (D, C, H, W)
        total = total + (warped * reference).sum(1) / channels
    return (total / len(sources)).unsqueeze(0)


class DVMVSPairnetAdapter(ModelAdapter):
    """DeepVideoMVS pairnet: the five sigmoid heads mapped to depth, finest first (full .. 1/16).
    The depth range is fixed by the network (0.25-20 m)."""

    name = "dvmvs_pairnet"
    multiple = 32
    checkpoint_kind = "folder"

    def __init__(self, device: torch.device, min_depth: float = 0.25, max_depth: float = 20.0):
        from ..models.dvmvs.model import DVMVSNet
        from ..models.dvmvs.networks import TRAIN_MAX_DEPTH, TRAIN_MIN_DEPTH
        super().__init__(DVMVSNet(fusion=False), device, TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH)
        self.fixed_range = (TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH)

    def feature_modules(self) -> List[nn.Module]:
        return [self.net.feature_extractor, self.net.feature_shrinker]

    def load_weights(self, checkpoint: str) -> None:
        self.net.load_official(checkpoint)

    def forward(self, batch: Dict[str, object]) -> AdapterOutput:
        from ..models.dvmvs.model import DVMVSNet
        from ..models.dvmvs.networks import N_DEPTH_LEVELS, TRAIN_MAX_DEPTH, TRAIN_MIN_DEPTH, CostVolumeDecoder
        from ..models.dvmvs.warps import homogeneous_pixel_grid, inverse_depth_plane_depths, plane_sweep_grids
        samples = _samples(batch)
        b, v = len(samples), len(samples[0].frames)
        uint8 = torch.from_numpy(np.stack([f.image for s in samples for f in s.frames])).to(self.device)
        images = DVMVSNet.normalize(uint8)                                 # (B*V, 3, H, W)
        height, width = images.shape[-2:]
        feats = self.net.features(images)                                  # 4 x (B*V, 32, ...)
        feats = [f.view(b, v, *f.shape[1:]) for f in feats]
        h2, w2 = height // 2, width // 2
        uv1 = homogeneous_pixel_grid(h2, w2, self.device)
        planes = inverse_depth_plane_depths(TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH, N_DEPTH_LEVELS, self.device)
        volumes = []
        for i, s in enumerate(samples):
            K = torch.from_numpy(s.reference.K).float().to(self.device)
            K_half = K.clone()
            K_half[:2] /= 2.0
            poses = [torch.from_numpy(f.T_world_cam).float().to(self.device) for f in s.frames]
            grids = [plane_sweep_grids(poses[0], p, K_half, planes, uv1, h2, w2) for p in poses[1:]]
            volumes.append(dvmvs_cost_volume(feats[0][i, :1], [feats[0][i, j:j + 1] for j in range(1, v)], grids))
        cost_volume = torch.cat(volumes, 0)
        ref_feats = [f[:, 0] for f in feats]
        skip0, skip1, skip2, skip3, bottom = self.net.cost_volume_encoder(*ref_feats, cost_volume)
        ref_images = images.view(b, v, *images.shape[1:])[:, 0]
        sigmoids = self.net.cost_volume_decoder(ref_images, skip0, skip1, skip2, skip3, bottom)
        depths = [CostVolumeDecoder.to_depth(s) for s in sigmoids]
        return AdapterOutput(depths=depths, features=(feats[0][:, 0].detach(), feats[0][:, 1:].detach()))


# ------------------------------------------------------------------------------------------- factory
def create_adapter(name: str, device: torch.device, min_depth: float = 0.25, max_depth: float = 20.0,
                   seed: int = 0, **options) -> ModelAdapter:
    """The trainable adapter for a registry model name."""
    if name == "itermvs":
        return IterMVSAdapter(device, min_depth, max_depth, **options)
    if name == "patchmatchnet":
        return PatchmatchNetAdapter(device, min_depth, max_depth, seed=seed)
    if name == "dvmvs_pairnet":
        return DVMVSPairnetAdapter(device, min_depth, max_depth)
    raise ValueError(f"model {name!r} cannot be trained here; trainable models: {', '.join(TRAINABLE)}")
