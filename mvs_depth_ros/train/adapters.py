"""A differentiable forward per model family, returning multi-scale depth.

Each adapter owns the network module tree the estimator uses (same class, same parameter names) and
builds the network input from :class:`~mvs_depth_ros.core.frame.Frame` objects with the *estimators'*
preprocessing functions (``network_image``, ``projection_matrix``, ``world_to_camera``,
``DVMVSNet.normalize``, ``dvmvs.estimator.frame_image``), so training sees exactly what inference sees.
Nothing here runs under ``inference_mode``.

``forward(batch)`` returns an :class:`AdapterOutput`: ``depths`` finest first (``depths[0]`` is the depth
the estimator would return, before its clamping), and optionally features for the feature-metric loss.
``forward_steps(batch)`` returns ``[(step batch, output)]``: one pair for the single-keyframe models, one
per keyframe of the sequence for the recurrent fusionnet (whose batches are built by ``adapter.collate``
from :class:`~mvs_depth_ros.train.data.SequenceSample` items).

Model families: ``itermvs``, ``patchmatchnet`` (official ``{'model', 'optimizer', 'epoch'}`` checkpoints),
``dvmvs_pairnet`` and ``dvmvs_fusionnet`` (official weight folders). DeepVideoMVS runs
:meth:`mvs_depth_ros.models.dvmvs.model.DVMVSNet.step`, the inference code itself, batched and with
autograd on (its cost volume then takes the differentiable path); no network code is re-implemented here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import SequenceSample, TrainingSample, collate, collate_sequences

log = logging.getLogger(__name__)

#: registry names that can be trained
TRAINABLE = ("itermvs", "patchmatchnet", "dvmvs_pairnet", "dvmvs_fusionnet")


@dataclass
class AdapterOutput:
    depths: List[torch.Tensor]                     # finest first, each (B, 1, h, w) metres
    confidence: Optional[torch.Tensor] = None      # (B, 1, H, W) when the model has one
    features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (ref (B, C, h, w), src (B, S, C, h, w))
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    state: Any = None                              # recurrent models: the state after this step


class ModelAdapter:
    """Base class. ``net`` is the official module tree; ``feature_modules`` the feature extractor that
    the two-stage schedule freezes first."""

    name: str = ""
    #: trains on SequenceSample items (consecutive keyframes, state carried), not single keyframes
    recurrent: bool = False
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

    def recurrent_modules(self) -> List[nn.Module]:
        """Modules trained alone first in DeepVideoMVS' schedule (fusionnet: ConvLSTM cell + decoder)."""
        return []

    def set_frozen(self, modules: Sequence[nn.Module]) -> None:
        """Exactly ``modules`` frozen: no gradient, batch-norm statistics kept (eval mode); every other
        parameter trainable."""
        frozen = {id(p) for m in modules for p in m.parameters()}
        for p in self.net.parameters():
            p.requires_grad_(id(p) not in frozen)
        for m in modules:
            m.eval()

    def set_features_frozen(self, frozen: bool) -> None:
        """Stage 1 of the two-stage schedule: no gradient into the feature extractor and its batch-norm
        statistics kept (eval mode) while frozen."""
        self.set_frozen(self.feature_modules() if frozen else [])

    def set_only_recurrent_trained(self) -> None:
        """Stage 0 of DeepVideoMVS' gradual unfreezing: everything but :meth:`recurrent_modules` frozen."""
        keep = self.recurrent_modules()
        if not keep:
            raise ValueError(f"{self.name} has no recurrent modules to train alone")
        self.set_frozen([m for m in self.net.children() if all(m is not k for k in keep)])

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

    def collate(self, items: Sequence[Any], device: torch.device | str) -> Dict[str, object]:
        """The batch ``forward_steps`` reads (``data.collate`` of keyframe samples)."""
        return collate(items, device)

    def forward_steps(self, batch: Dict[str, object]) -> List[Tuple[Dict[str, object], AdapterOutput]]:
        """``[(batch the loss reads, output)]``: one pair here, one per keyframe for recurrent models."""
        return [(batch, self.forward(batch))]

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


# ------------------------------------------------------------------------------------- DeepVideoMVS
class DVMVSPairnetAdapter(ModelAdapter):
    """DeepVideoMVS pairnet: the five sigmoid heads mapped to depth, finest first (full .. 1/16).
    The depth range is fixed by the network (0.25-20 m). A batch is one :meth:`DVMVSNet.step` of B
    keyframes; the features of the distinct frames of the batch are extracted in one call."""

    name = "dvmvs_pairnet"
    multiple = 32
    checkpoint_kind = "folder"
    fusion = False

    def __init__(self, device: torch.device, min_depth: float = 0.25, max_depth: float = 20.0):
        from ..models.dvmvs.model import DVMVSNet
        super().__init__(DVMVSNet(fusion=self.fusion), device, *DVMVSNet.depth_range)
        self.fixed_range = DVMVSNet.depth_range

    def feature_modules(self) -> List[nn.Module]:
        return [self.net.feature_extractor, self.net.feature_shrinker]

    def load_weights(self, checkpoint: str) -> None:
        self.net.load_official(checkpoint)

    def _features(self, frames: Sequence) -> Tuple[torch.Tensor, List[torch.Tensor], Dict[int, int]]:
        """Normalised images (N, 3, H, W) and the 4 FPN feature maps of the N distinct frames (by ``uid``),
        and each frame's row."""
        from ..models.dvmvs.estimator import frame_image
        from ..models.dvmvs.model import DVMVSNet
        rows: Dict[int, int] = {}
        distinct = []
        for f in frames:
            if f.uid not in rows:
                rows[f.uid] = len(distinct)
                distinct.append(f)
        images = DVMVSNet.normalize(torch.from_numpy(np.stack([frame_image(f) for f in distinct])).to(self.device))
        return images, self.net.features(images), rows

    def _step(self, samples: Sequence[TrainingSample], images: torch.Tensor, feats: List[torch.Tensor],
              rows: Dict[int, int], state=None, hidden_depth: Optional[torch.Tensor] = None):
        """:meth:`DVMVSNet.step` for one keyframe per sample (float32 poses and K as the estimator feeds them)."""
        def index(frames) -> torch.Tensor:
            return torch.tensor([rows[f.uid] for f in frames], device=self.device)

        def matrices(frames) -> torch.Tensor:
            return torch.from_numpy(np.stack(frames)).float().to(self.device)

        n_meas = {len(s.measurements) for s in samples}
        if len(n_meas) != 1:
            raise ValueError(f"samples in one batch must have the same number of views, got {sorted(n_meas)}")
        ref = index([s.reference for s in samples])
        src = [index([s.measurements[j] for s in samples]) for j in range(n_meas.pop())]
        return self.net.step(images[ref], [f[ref] for f in feats], [feats[0][i] for i in src],
                             matrices([s.reference.T_world_cam for s in samples]),
                             [matrices([s.measurements[j].T_world_cam for s in samples]) for j in range(len(src))],
                             matrices([s.reference.K for s in samples]), state=state, hidden_depth=hidden_depth)

    @staticmethod
    def _output(out, src_features: torch.Tensor) -> AdapterOutput:
        return AdapterOutput(depths=out.depths, features=(out.features[0].detach(), src_features.detach()),
                             state=out.state)

    def _sources(self, samples: Sequence[TrainingSample], feats: List[torch.Tensor], rows: Dict[int, int]):
        return torch.stack([feats[0][[rows[m.uid] for m in s.measurements]] for s in samples])   # (B, S, C, h, w)

    def forward(self, batch: Dict[str, object]) -> AdapterOutput:
        """One keyframe per sample (fusionnet: from the initial, zero state)."""
        samples = _samples(batch)
        images, feats, rows = self._features([f for s in samples for f in s.frames])
        return self._output(self._step(samples, images, feats, rows), self._sources(samples, feats, rows))


class DVMVSFusionnetAdapter(DVMVSPairnetAdapter):
    """DeepVideoMVS fusionnet on subsequences of consecutive keyframes (:class:`SequenceSample`), as
    DeepVideoMVS trains it: the first step starts from the zero state, every later step warps the ConvLSTM
    hidden state into its view and the loss is summed over the steps (and scales). Back-propagation runs
    through the whole subsequence (the warped hidden state and the cell carry the gradient).

    ``hidden_depth``: the depth the hidden state is warped with. ``"predicted"`` (default): the previous
    step's prediction splatted into the new view, exactly what inference does; ``"ground_truth"``: the
    current ground truth at 1/32 (nearest), what the official training script does (supervised data only).

    Checkpoints: ``load_weights`` takes a fusionnet folder, or a pairnet folder whose four modules are
    shared (feature extractor, pyramid, encoder, decoder; the ConvLSTM keeps its initialisation):
    DeepVideoMVS starts fusionnet from pairnet and first trains only the ConvLSTM cell and the decoder
    (``TrainConfig.lstm_decoder_steps``), then everything.
    """

    name = "dvmvs_fusionnet"
    fusion = True
    recurrent = True
    HIDDEN_DEPTH = ("predicted", "ground_truth")

    def __init__(self, device: torch.device, min_depth: float = 0.25, max_depth: float = 20.0,
                 hidden_depth: str = "predicted"):
        if hidden_depth not in self.HIDDEN_DEPTH:
            raise ValueError(f"hidden_depth must be one of {self.HIDDEN_DEPTH}, got {hidden_depth!r}")
        super().__init__(device, min_depth, max_depth)
        self.hidden_depth = hidden_depth

    def recurrent_modules(self) -> List[nn.Module]:
        return [self.net.lstm_fusion, self.net.cost_volume_decoder]

    def load_weights(self, checkpoint: str) -> None:
        from ..models.dvmvs.checkpoint import PAIRNET_FILES, find_module_file, load_weight_folder
        folder = os.fspath(checkpoint)
        if (os.path.isdir(folder) and find_module_file(folder, "3_decoder") is not None
                and find_module_file(folder, "4_decoder") is None):
            load_weight_folder(self.net, folder, PAIRNET_FILES)
            log.info("%s: shared modules loaded from the pairnet weights in %s; the ConvLSTM starts from its "
                     "initialisation", self.name, folder)
            return
        self.net.load_official(folder)

    def collate(self, items: Sequence[Any], device: torch.device | str) -> Dict[str, object]:
        if not all(isinstance(i, SequenceSample) for i in items):
            raise TypeError(f"{self.name} trains on SequenceSample items (data.keyframe_sequences)")
        return collate_sequences(items, device)

    def forward_steps(self, batch: Dict[str, object]) -> List[Tuple[Dict[str, object], AdapterOutput]]:
        if "steps" not in batch:
            return super().forward_steps(batch)
        sequences: List[SequenceSample] = batch["sequences"]  # type: ignore[assignment]
        images, feats, rows = self._features([f for s in sequences for f in s.frames])
        state, results = None, []
        for step_batch in batch["steps"]:  # type: ignore[union-attr]
            samples = _samples(step_batch)
            hidden_depth = None
            if self.hidden_depth == "ground_truth" and state is not None:
                gt = step_batch.get("depth_gt")
                if gt is None:
                    raise ValueError("hidden_depth='ground_truth' needs ground-truth depth; use 'predicted'")
                hidden_depth = F.interpolate(torch.nan_to_num(gt, nan=0.0), scale_factor=1.0 / 32.0, mode="nearest")
            out = self._step(samples, images, feats, rows, state, hidden_depth)
            state = out.state
            results.append((step_batch, self._output(out, self._sources(samples, feats, rows))))
        return results


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
    if name == "dvmvs_fusionnet":
        return DVMVSFusionnetAdapter(device, min_depth, max_depth, **options)
    raise ValueError(f"model {name!r} cannot be trained here; trainable models: {', '.join(TRAINABLE)}")
