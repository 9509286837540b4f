"""DynamicStereo (Karaev et al., CVPR 2023) as a temporal stereo backend: our own implementation.

The network (:mod:`.dynamic_stereo_net`) was written from the paper and the behaviour notes of the
conformance fixture; none of the upstream code is used or shipped. Its parameter names equal the official
ones, so the published checkpoints ``dynamic_stereo_sf.pth`` / ``dynamic_stereo_dr_sf.pth``
(facebookresearch/dynamic_stereo) load strictly and give the official behaviour. **Those checkpoints are
licensed CC BY-NC 4.0 (non-commercial)**: users download them themselves; nothing is downloaded at run time.

This module holds
* :func:`load_weights`: strict loading of plain, ``{"model": ...}`` and ``{"state_dict": ...}`` checkpoints,
  with or without a ``module.`` prefix, with a readable list of missing / unexpected / mis-shaped keys
  (the official loader is ``strict=False`` and silently loads *nothing* from a ``state_dict`` checkpoint);
* :func:`pad_amounts` / :func:`pad_video`: the official replicate padding to multiples of 32;
* :func:`window_plan` / :func:`infer_video`: windowed inference over a video. ``mode="official"``
  reproduces ``forward_batch_test`` exactly, including its frame dropping (for ``kernel_size=20``, a video
  of n <= 10 frames loses its last 5 frames, 5 frames give an empty result, 10 < n < 20 loses frames
  n-5..n-1). ``mode="complete"`` (our default) returns every frame: videos no longer than the window run
  as one window, longer ones use windows at ``stride = kernel_size // 2`` plus one window ending at the
  last frame, and every frame is taken from the window in which it is most central;
* :class:`DynamicStereoEstimator` / :func:`build`: the :class:`~mvs_depth_ros.core.stereo.StereoEstimator`.

Settings and cost. The official evaluation runs ``kernel_size=20`` frame windows with ``iters=20``
(10 updates at 1/16, 10 at 1/8, 20 at 1/4) at full resolution and needs a 32 GB GPU. The 1/4-resolution
3-D GRU dominates, so cost is about linear in ``window x iters x pixels``; the 1/4 correlation volume grows
with ``window x H x W^2 / 64``. Reduced settings:

* CPU (2 cores): ``window=3``, ``iters=10``, ``scale=0.5`` on VGA input (the padded width must be >= 256;
  smaller images are padded up to it). Still several seconds per frame: the streaming estimator runs a
  whole window for every new frame (measure with ``benchmarks/bench_dynamic_stereo.py``).
* Smaller GPUs (estimates from tensor sizes, not measured here): the largest tensors are the 1/4
  correlation volume (``4 * T * (H/4) * (W/4)^2`` bytes plus ~1x for its pyramid) and the GRU input
  (``384 * 4 * T * H * W / 16`` bytes, a few live copies). ``window=5``, ``iters=20`` at 640x480 needs well
  under 4 GB; ``kernel_size=10`` halves the window memory of offline 720p video.
* 32 GB GPU: the official ``kernel_size=20``, ``iters=20`` at 1280x720.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...core.frame import StereoFrame
from ...core.stereo import StereoEstimator, StereoResult, disparity_to_depth, frame_doffs
from ..base import resolve_device
from ..checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strict
from .dynamic_stereo_net import DIVISOR, DynamicStereo, DynamicStereoOutput

log = logging.getLogger(__name__)

#: the padded width the 4-level 1/16 correlation pyramid needs
MIN_PADDED_WIDTH = 256


class MissingCheckpointError(ValueError):
    """DynamicStereo was asked for without weights (the caller falls back to a classical backend)."""


# ------------------------------------------------------------------------------------------ weights
def load_weights(net: DynamicStereo, checkpoint: Union[str, Mapping[str, Any]]) -> None:
    """Load a checkpoint file (or an already loaded dict) into ``net`` strictly.

    Accepts a plain state dict, ``{"model": sd}`` and ``{"state_dict": sd}``, keys with or without a
    ``module.`` prefix; raises :class:`~mvs_depth_ros.models.checkpoints.CheckpointError` listing every
    missing, unexpected or mis-shaped key.
    """
    obj = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__") \
        else checkpoint
    sd = extract_state_dict(obj, keys=("model", "state_dict"), strip_prefix="module.")
    load_state_dict_strict(net, sd, what="DynamicStereo")


# ------------------------------------------------------------------------------------------ padding
def pad_amounts(height: int, width: int, divis_by: int = DIVISOR, min_width: int = 0) -> Tuple[int, int, int, int]:
    """Official ``InputPadder`` padding ``(left, right, top, bottom)``: up to the next multiple of
    ``divis_by`` (none when already a multiple), split with the smaller half first. ``min_width`` widens
    the padded image further (ours only; the official network fails below 256)."""
    pad_h = (((height // divis_by) + 1) * divis_by - height) % divis_by
    pad_w = (((width // divis_by) + 1) * divis_by - width) % divis_by
    pad_w = max(pad_w, min_width - width)
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_video(video: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
    """Replicate-pad ``(..., 3, H, W)`` by ``pads = (left, right, top, bottom)``."""
    if not any(pads):
        return video
    padded = F.pad(video.reshape(-1, *video.shape[-3:]), pads, mode="replicate")
    return padded.reshape(*video.shape[:-2], *padded.shape[-2:])


def run_window(net: DynamicStereo, video: torch.Tensor, iters: int, min_width: int = MIN_PADDED_WIDTH
               ) -> Tuple[DynamicStereoOutput, Tuple[int, int, int, int]]:
    """One window: ``video (T, 2, 3, H, W)`` float 0..255 (left, right) on the network's device ->
    the network output on the padded frame and the padding used (crop it with :func:`unpad`)."""
    pads = pad_amounts(video.shape[-2], video.shape[-1], min_width=min_width)
    padded = pad_video(video, pads)
    return net(padded[None, :, 0], padded[None, :, 1], iters=iters), pads


def unpad(x: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
    """Crop ``(..., H_pad, W_pad)`` back to the unpadded size."""
    left, right, top, bottom = pads
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


# ---------------------------------------------------------------------------------------- windowing
@dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` run together; frames ``[keep_start, keep_stop)`` (absolute) are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def window_plan(n: int, kernel_size: int = 20, mode: str = "complete") -> List[Window]:
    """Windows for a video of ``n`` frames (stride ``kernel_size // 2``).

    ``official``: ``forward_batch_test``'s rule. The first window keeps all but its last ``ceil(stride/2)``
    frames; a later window is kept only if it has >= ``stride`` frames, without its first ``stride // 2``
    frames and, when it is a full window, without its last ``ceil(stride/2)``. Windows that keep nothing
    are omitted (the official code computes and then discards them). Frames can be lost (module docstring).
    ``complete``: every frame exactly once (module docstring).
    """
    if kernel_size < 2:
        raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stride = kernel_size // 2
    tail = -(-stride // 2)  # ceil(stride / 2): the official "[: -stride // 2]"
    plan: List[Window] = []
    if mode == "official":
        for i in range(0, n, stride):
            stop = min(i + kernel_size, n)
            length = stop - i
            if i == 0:
                keep = (0, max(length - tail, 0))
            elif length >= stride:
                keep = (stride // 2, length if length < kernel_size else length - tail)
            else:
                continue
            if keep[1] > keep[0]:
                plan.append(Window(i, stop, i + keep[0], i + keep[1]))
        return plan
    if mode != "complete":
        raise ValueError(f"mode must be 'official' or 'complete', got {mode!r}")
    if n <= kernel_size:
        return [Window(0, n, 0, n)] if n else []
    starts = list(range(0, n - kernel_size + 1, stride))
    if starts[-1] != n - kernel_size:
        starts.append(n - kernel_size)
    centres = np.asarray(starts, np.float64) + (kernel_size - 1) / 2.0
    owner = np.argmin(np.abs(np.arange(n)[:, None] - centres[None, :]), axis=1)  # ties -> earlier window
    for j, s in enumerate(starts):
        mine = np.flatnonzero(owner == j)
        if mine.size:
            plan.append(Window(s, s + kernel_size, int(mine[0]), int(mine[-1]) + 1))
    return plan


def infer_video(net: DynamicStereo, video: Union[np.ndarray, torch.Tensor], kernel_size: int = 20,
                iters: int = 20, mode: str = "complete", device: Optional[torch.device] = None) -> np.ndarray:
    """Disparity of a stereo video, window by window.

    ``video (n, 2, 3, H, W)``: ``[frame, (left, right), RGB]`` uint8 or float 0..255 (the official
    ``batch_dict["stereo_video"]`` layout). Returns ``(m, H, W)`` float32 ``|x|`` disparity of the kept
    frames in order (``m == n`` for ``mode="complete"``; see :func:`window_plan` for ``official``).
    """
    device = device or next(net.parameters()).device
    video = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if video.ndim != 5 or video.shape[1:3] != (2, 3):
        raise ValueError(f"video must be (n, 2, 3, H, W), got {tuple(video.shape)}")
    out = []
    with torch.inference_mode():
        for win in window_plan(video.shape[0], kernel_size, mode):
            clip = video[win.start:win.stop].to(device=device, dtype=torch.float32)
            result, pads = run_window(net, clip, iters)
            disp = unpad(result.disparity[0], pads)[win.keep_start - win.start:win.keep_stop - win.start]
            out.append(disp.cpu().numpy())
    h, w = video.shape[-2:]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, h, w), np.float32)


# ---------------------------------------------------------------------------------------- estimator
@dataclass(frozen=True)
class DynamicStereoConfig:
    """``window``: frames run together (the newest is the output; 5 = training length). ``iters``: updates
    (``iters//2`` at 1/16 and 1/8, ``iters`` at 1/4; official 20). ``scale``: the pair is resized by this
    factor before the network and the disparity is resized back (and divided by ``scale``).
    ``conf_tau``: px; confidence ``exp(-|last 1/4 update| / conf_tau)`` (see :class:`DynamicStereoEstimator`).
    ``max_positive``: px; fields pointing right of the pixel by more than this get zero confidence."""

    window: int = 5
    iters: int = 20
    scale: float = 1.0
    conf_tau: float = 0.25
    max_positive: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.iters < 2:
            raise ValueError(f"iters must be >= 2, got {self.iters}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if self.conf_tau <= 0 or self.max_positive < 0:
            raise ValueError(f"need conf_tau > 0 and max_positive >= 0, got {self.conf_tau}, {self.max_positive}")


@dataclass(frozen=True)
class DynamicStereoState:
    """The sliding window: the most recent frames (oldest first) that go in with the next frame."""

    frames: Tuple[StereoFrame, ...] = field(default_factory=tuple)


def _compatible(a: StereoFrame, b: StereoFrame) -> bool:
    return (a.left.shape == b.left.shape and np.allclose(a.K, b.K) and abs(a.baseline - b.baseline) < 1e-9
            and frame_doffs(a) == frame_doffs(b))


class DynamicStereoEstimator(StereoEstimator):
    """DynamicStereo over a sliding window of the most recent pairs; the newest frame's disparity is the
    output (causal, no latency).

    Difference to the official offline evaluation: it keeps frames from the *middle* of 20-frame windows
    (both past and future context), whereas a live estimator sees only the past, so the newest frame sits at
    the window's edge. At the start of a stream (and after a reset or a change of image size, intrinsics or
    baseline) the window is shorter; the time embedding is then resampled as the official code does for
    any ``T != 5``. Use :func:`infer_video` for offline clips.

    Confidence in [0, 1] (a heuristic, not calibrated): ``exp(-|d_N - d_(N-1)| / conf_tau)`` with the
    change of the disparity (full-resolution px) in the last 1/4 update, i.e. how well the recurrent
    refinement has converged there, times 0 where the match ``u - d`` falls outside the right image (the
    correlation is zero padded there, so the value is extrapolated) or where the field points right by
    more than ``max_positive`` px (a physically impossible match that ``abs`` would hide).
    Disparity is dense (the official ``|x|``); depth is ``fx * B / (d + doffs)``, NaN where ``d + doffs <= 0``.
    """

    name = "dynamic_stereo"
    recurrent = True

    def __init__(self, net: DynamicStereo, config: DynamicStereoConfig = DynamicStereoConfig(),
                 device: str = "auto"):
        self.device = resolve_device(device)
        self.net = net.eval().to(self.device)
        self.config = config

    def initial_state(self) -> DynamicStereoState:
        return DynamicStereoState()

    def describe(self) -> str:
        c = self.config
        return f"dynamic_stereo (window {c.window}, iters {c.iters}, scale {c.scale}, {self.device})"

    def _network_pair(self, frame: StereoFrame) -> np.ndarray:
        """``(2, 3, h, w)`` uint8 network input of one pair at the working scale."""
        imgs = (frame.left, frame.right)
        if self.config.scale != 1.0:
            h, w = frame.left.shape[:2]
            size = (max(1, round(w * self.config.scale)), max(1, round(h * self.config.scale)))
            imgs = tuple(cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in imgs)
        return np.stack([np.ascontiguousarray(im.transpose(2, 0, 1)) for im in imgs])

    def estimate(self, frame: StereoFrame, state: Any = None) -> StereoResult:
        t0 = time.perf_counter()
        c = self.config
        previous = state.frames if isinstance(state, DynamicStereoState) else ()
        if previous and not _compatible(previous[-1], frame):
            previous = ()
        frames = (previous + (frame,))[-c.window:]
        video = torch.from_numpy(np.stack([self._network_pair(f) for f in frames]))
        with torch.inference_mode():
            out, pads = run_window(self.net, video.to(self.device, torch.float32), c.iters)
            flow_x = unpad(out.flow[0, -1, 0], pads)  # (h, w) network resolution, signed
            delta = 4.0 * F.interpolate(out.last_delta[0, -1:, :1], scale_factor=4, mode="bilinear",
                                        align_corners=False)[0, 0]
            delta = unpad(delta, pads)
            flow_x, delta = flow_x.float().cpu().numpy(), delta.abs().float().cpu().numpy()
        H, W = frame.left.shape[:2]
        if flow_x.shape != (H, W):
            sx = W / flow_x.shape[1]
            flow_x = cv2.resize(flow_x, (W, H), interpolation=cv2.INTER_LINEAR) * sx
            delta = cv2.resize(delta, (W, H), interpolation=cv2.INTER_LINEAR) * sx
        disp = np.abs(flow_x).astype(np.float32)
        in_view = (np.arange(W, dtype=np.float32)[None, :] - disp) >= -0.5
        conf = np.exp(-delta / c.conf_tau) * in_view * (flow_x <= c.max_positive)
        depth = disparity_to_depth(disp, frame.K[0, 0], frame.baseline, frame_doffs(frame))
        info = {"model": self.name, "window": len(frames), "iters": c.iters,
                "ms": 1000.0 * (time.perf_counter() - t0), "positive_fraction": float((flow_x > 0).mean())}
        return StereoResult(disparity=disp, depth=depth, confidence=np.clip(conf, 0, 1).astype(np.float32),
                            K=frame.K, baseline=frame.baseline, state=DynamicStereoState(frames), info=info)


def build(checkpoint: Optional[Union[str, Mapping[str, Any]]] = None, device: str = "auto",
          **options: Any) -> DynamicStereoEstimator:
    """Registry builder: ``checkpoint`` (required; the official ``dynamic_stereo_sf.pth`` /
    ``dynamic_stereo_dr_sf.pth``, CC BY-NC 4.0, or a compatible state dict) and
    :class:`DynamicStereoConfig` options (``window``, ``iters``, ``scale``, ``conf_tau``, ``max_positive``).
    Without a checkpoint raises :class:`MissingCheckpointError` (a ``ValueError``) so the caller can fall
    back to SGBM."""
    if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint):
        raise MissingCheckpointError(
            "dynamic_stereo needs a checkpoint: download dynamic_stereo_sf.pth or dynamic_stereo_dr_sf.pth from "
            "facebookresearch/dynamic_stereo (CC BY-NC 4.0, non-commercial) and pass its path; "
            "nothing is downloaded automatically")
    unknown = set(options) - set(DynamicStereoConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown dynamic_stereo option(s) {sorted(unknown)}; known: "
                         f"{sorted(DynamicStereoConfig.__dataclass_fields__)}")
    net = DynamicStereo()
    load_weights(net, checkpoint)
    return DynamicStereoEstimator(net, DynamicStereoConfig(**options), device=device)


__all__ = ["DynamicStereoConfig", "DynamicStereoEstimator", "DynamicStereoState", "MissingCheckpointError",
           "Window", "build", "infer_video", "load_weights", "pad_amounts", "pad_video", "run_window", "unpad",
           "window_plan"]
