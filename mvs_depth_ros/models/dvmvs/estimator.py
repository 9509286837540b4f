"""DeepVideoMVS pairnet / fusionnet behind the package's :class:`DepthEstimator` interface.

* Input frames arrive at the working resolution (the official 320x256, any size divisible by 32 works)
  with matching ``K`` and camera-to-world poses; the image is ImageNet-normalised here.
* Depth is the full-resolution head, ``1 / (3.95 sigmoid + 0.05)``: always inside the trained range
  [0.25, 20] m. The 64 cost-volume planes and that mapping are fixed by training, so ``min_depth`` /
  ``max_depth`` do not change the network; they only mark pixels outside [min_depth, max_depth] as NaN.
* Confidence (DVMVS has none): ``coverage * agreement`` in [0, 1], where ``coverage`` is the fraction
  of (plane, measurement frame) samples of the cost volume that fall inside a measurement image (a pixel
  no measurement frame sees is depth from context alone) and ``agreement = exp(-|s_full - s_half| / step)``
  compares the full-resolution sigmoid head with the upsampled half-resolution head in normalised
  inverse depth, ``step = 1/63`` being one cost-volume plane.
* fusionnet's recurrent state (:class:`FusionState`: ConvLSTM hidden/cell, previous depth and pose) is the
  explicit ``state``; ``initial_state()`` is ``None``. A state of another resolution is refused.
* Half-resolution features of frames already seen are cached by ``Frame.uid`` (LRU, ``cache_size``
  entries, ~2.6 MB each at 320x256); misses are extracted in one batch. Results do not depend on the cache.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...core.frame import DepthResult, Frame
from ..base import DepthEstimator
from ..compiled import CompiledCall, resolve_compile
from .model import DVMVSNet, FusionState, StepOutput
from .networks import N_DEPTH_LEVELS, TRAIN_MAX_DEPTH, TRAIN_MIN_DEPTH

log = logging.getLogger(__name__)


def confidence_map(out: StepOutput, plane_step: float = 1.0 / (N_DEPTH_LEVELS - 1)) -> torch.Tensor:
    """(H, W) confidence in [0, 1] from cost-volume coverage and full/half head agreement."""
    s_full = out.sigmoids[0]
    size = tuple(s_full.shape[-2:])
    s_half = F.interpolate(out.sigmoids[1], size=size, mode="bilinear", align_corners=True)
    agreement = torch.exp(-(s_full - s_half).abs() / plane_step)
    coverage = F.interpolate(out.coverage[None, None], size=size, mode="bilinear", align_corners=True)
    return (agreement * coverage).clamp_(0.0, 1.0)[0, 0]


def frame_image(frame: Frame) -> np.ndarray:
    """(H, W, 3) RGB 0-255 the network is fed: the un-rounded resize when the frame carries it (what the
    official loader feeds, ``cv2.resize`` of the float image), else the captured uint8 image. Training
    builds its input with this function too."""
    return frame.image_float if frame.image_float is not None else frame.image


class DVMVSEstimator(DepthEstimator):
    """pairnet (stateless) or fusionnet (``recurrent``) on one device."""

    preferred_measurement_frames = 2

    def __init__(self, net: DVMVSNet, device: str = "auto", min_depth: float = TRAIN_MIN_DEPTH,
                 max_depth: float = TRAIN_MAX_DEPTH, cache_size: int = 30, compile: Any = "auto"):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        if min_depth < TRAIN_MIN_DEPTH or max_depth > TRAIN_MAX_DEPTH:
            log.warning("DVMVS predicts depth in [%g, %g] m only (fixed by training); the requested range "
                        "[%g, %g] m is clipped to it", TRAIN_MIN_DEPTH, TRAIN_MAX_DEPTH, min_depth, max_depth)
        self.net = net.to(self.device).eval()
        self.recurrent = net.fusion
        self.name = "dvmvs_fusionnet" if net.fusion else "dvmvs_pairnet"
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        # "auto" stays eager: compiling step() (64 planes x sources unrolled) took over 15 min on a loaded 2-vCPU
        # machine without finishing, so it is not known to pay off; compile=True forces it
        use = resolve_compile(compile, self.device, pays_on_cpu=False)
        self._net_features = CompiledCall(self.net.features, f"DVMVS {self.name} features", use)
        self._net_step = CompiledCall(self.net.step, f"DVMVS {self.name}", use)

    # ------------------------------------------------------------------ features
    def _image(self, frame: Frame) -> torch.Tensor:
        """(H, W, 3) float32 0-255 RGB of :func:`frame_image` on the device."""
        return torch.from_numpy(np.ascontiguousarray(frame_image(frame))).to(self.device).float()

    def _remember(self, uid: int, feature_half: torch.Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[uid] = feature_half
        self._cache.move_to_end(uid)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _source_features(self, frames: Sequence[Frame]) -> List[torch.Tensor]:
        """Half-resolution features (1, 32, H/2, W/2) per frame: cached ones reused, the rest in one batch."""
        missing = [f for f in frames if f.uid not in self._cache]
        fresh = {}
        if missing:
            images = DVMVSNet.normalize(torch.stack([self._image(f) for f in missing]))
            half = self._net_features(images, n_outputs=1)[0]
            for i, f in enumerate(missing):
                fresh[f.uid] = half[i:i + 1]
        out = []
        for f in frames:
            if f.uid in fresh:
                feat = fresh[f.uid]
            else:
                feat = self._cache[f.uid]
                self._cache.move_to_end(f.uid)
            out.append(feat)
        for uid, feat in fresh.items():
            self._remember(uid, feat)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ estimate
    def _check(self, reference: Frame, measurements: Sequence[Frame], state: Any) -> None:
        if not measurements:
            raise ValueError(f"{self.name}: needs at least one measurement frame")
        for f in (reference, *measurements):
            if not f.has_pose:
                raise ValueError(f"{self.name}: frame {f.name!r} has no valid camera pose")
            if f.image.shape != reference.image.shape:
                raise ValueError(f"{self.name}: frame {f.name!r} is {f.width}x{f.height}, reference "
                                 f"{reference.width}x{reference.height}; all frames must share the working size")
        if reference.width % 32 or reference.height % 32:
            raise ValueError(f"{self.name}: the working size must be divisible by 32 (e.g. 320x256), "
                             f"got {reference.width}x{reference.height}")
        if state is not None:
            if not isinstance(state, FusionState):
                raise TypeError(f"{self.name}: state must be None or a FusionState, got {type(state).__name__}")
            if tuple(state.depth.shape[-2:]) != (reference.height, reference.width):
                raise ValueError(f"{self.name}: state is for {tuple(state.depth.shape[-2:])}, frames are "
                                 f"{(reference.height, reference.width)}; reset the state when changing size")

    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None) -> DepthResult:
        self._check(reference, measurements, state if self.recurrent else None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            K = torch.from_numpy(reference.K).float().to(self.device)
            pose = torch.from_numpy(reference.T_world_cam).float().to(self.device)
            source_poses = [torch.from_numpy(m.T_world_cam).float().to(self.device) for m in measurements]
            image = DVMVSNet.normalize(self._image(reference)[None])
            features = self._net_features(image)
            sources = self._source_features(measurements)
            out = self._net_step(image, features, sources, pose, source_poses, K,
                                state=state if self.recurrent else None)
            self._remember(reference.uid, features[0])
            depth = out.depths[0][0, 0].float().cpu().numpy()
            confidence = confidence_map(out).float().cpu().numpy()
        depth = depth.astype(np.float32, copy=True)
        depth[(depth < self.min_depth) | (depth > self.max_depth)] = np.nan
        return DepthResult(depth=depth, confidence=confidence.astype(np.float32), K=reference.K.copy(),
                           state=out.state if self.recurrent else None,
                           info={"model": self.name, "ms": (time.perf_counter() - t0) * 1e3,
                                 "n_measurements": len(measurements),
                                 "mean_coverage": float(out.coverage.mean()),
                                 "compile": self._net_step.describe()})


# options of both builders: min_depth, max_depth, cache_size (30), compile ("auto": eager; true: torch.compile, see
# models/compiled.py)
def _build(fusion: bool, checkpoint: Optional[str], device: str, **options) -> DVMVSEstimator:
    net = DVMVSNet(fusion=fusion)
    if checkpoint is None:
        raise ValueError("DeepVideoMVS needs its official weights: pass checkpoint=<folder with "
                         + ", ".join(f for f, _ in net.module_files) + ">")
    net.load_official(checkpoint)
    return DVMVSEstimator(net, device=device, **options)


def build_pairnet(checkpoint: Optional[str] = None, device: str = "auto", **options) -> DVMVSEstimator:
    """DVMVS pairnet from the official weight folder (``0_feature_extractor`` ... ``3_decoder``)."""
    return _build(False, checkpoint, device, **options)


def build_fusionnet(checkpoint: Optional[str] = None, device: str = "auto", **options) -> DVMVSEstimator:
    """DVMVS fusionnet from the official weight folder (``0_feature_extractor`` ... ``4_decoder``)."""
    return _build(True, checkpoint, device, **options)
