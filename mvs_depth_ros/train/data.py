"""Training samples: (reference, measurement frames) chosen exactly as at inference.

Frames come from a DeepVideoMVS scene folder (:func:`frames_from_scene`), the synthetic renderer
(:func:`frames_from_synthetic`) or a rosbag2 (:func:`frames_from_bag`): images + poses, ground truth
when the source has it. :func:`keyframe_samples` resizes every frame to the working size (K rescaled in
the same call) and runs the same :class:`~mvs_depth_ros.core.keyframes.KeyframeBuffer` the pipeline
runs, so a network is trained on the reference/measurement configurations it will see in the node.
:func:`index_samples` builds samples from an official keyframe index file instead (evaluation).
:func:`keyframe_sequences` cuts the same keyframes into short runs of *consecutive* keyframes
(:class:`SequenceSample`) for the recurrent fusionnet: the steps a recurrent estimator carries its state
through in the node, each with the measurement frames the buffer chose.

:class:`SampleOrder` gives a deterministic, resumable order: the batch of step ``k`` is a pure function of
``(seed, k)`` (one fresh permutation per epoch), so resuming only needs the step counter.
:func:`collate` turns samples into the tensors the losses read; :func:`collate_sequences` does it per step.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.frame import Frame
from ..core.keyframes import KeyframeBuffer, KeyframeConfig, KeyframeStatus

log = logging.getLogger(__name__)


@dataclass
class TrainingSample:
    """A reference keyframe and its measurement frames, all at the working resolution."""

    reference: Frame
    measurements: List[Frame]
    #: keyframes of one segment follow each other at inference with the recurrent state carried; a new
    #: segment starts where the pipeline would reset (tracking lost) or where a keyframe was left out
    segment: int = 0

    @property
    def frames(self) -> List[Frame]:
        return [self.reference, *self.measurements]

    @property
    def has_gt(self) -> bool:
        return self.reference.depth_gt is not None


# ------------------------------------------------------------------------------------------- sources
def _slice(frames: Iterable[Frame], start: int, stop: Optional[int]) -> List[Frame]:
    out = []
    for i, f in enumerate(frames):
        if stop is not None and i >= stop:
            break
        if i >= start:
            out.append(f)
    return out


def frames_from_scene(path: os.PathLike | str, start: int = 0, stop: Optional[int] = None,
                      with_depth: bool = True) -> List[Frame]:
    """Frames ``start..stop-1`` (sorted-name order) of a DeepVideoMVS-layout scene folder."""
    from ..data.scenes import load_scene
    return list(load_scene(path).frames(start, stop, with_depth=with_depth))


def frames_from_synthetic(n_frames: int, width: int, height: int, seed: int = 0, **kwargs) -> List[Frame]:
    """A rendered synthetic sequence (exact ground truth), rendered directly at ``width x height``."""
    from ..data.synthetic import render_sequence
    return render_sequence(n_frames, width, height, seed=seed, **kwargs).frames


def frames_from_bag(path: os.PathLike | str, start: int = 0, stop: Optional[int] = None, **kwargs) -> List[Frame]:
    """Frames of a rosbag2 (image + camera_info + pose from /tf; ground truth when recorded)."""
    from ..data.bags import read_frames
    return _slice(read_frames(path, **kwargs), start, stop)


def parse_range(text: Optional[str]) -> Tuple[int, Optional[int]]:
    """``"0:100"`` -> (0, 100); ``"100:"`` -> (100, None); None/"" -> (0, None)."""
    if not text:
        return 0, None
    a, _, b = text.partition(":")
    start = int(a) if a.strip() else 0
    stop = int(b) if b.strip() else None
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"invalid frame range {text!r} (expected START:STOP with 0 <= START < STOP)")
    return start, stop


def strip_ground_truth(frames: Sequence[Frame]) -> List[Frame]:
    """The same frames without ``depth_gt`` (self-supervised training must never see it)."""
    return [replace(f, depth_gt=None) if f.depth_gt is not None else f for f in frames]


# ------------------------------------------------------------------------------------------- samples
def keyframe_samples(frames: Iterable[Frame], width: int, height: int, n_measurement: int = 2,
                     config: KeyframeConfig = KeyframeConfig(), require_full: bool = True) -> List[TrainingSample]:
    """Run the inference keyframe buffer over ``frames`` and return one sample per keyframe.

    Frames are resized to ``width x height`` first (K rescaled). With ``require_full`` only keyframes that
    got exactly ``n_measurement`` measurement frames are kept (a batch needs a fixed view count).
    ``TrainingSample.segment`` numbers the runs of consecutive keyframes (see :func:`keyframe_sequences`).
    """
    buffer = KeyframeBuffer(config)
    out: List[TrainingSample] = []
    segment, broken = 0, False
    for f in frames:
        f = f.resized(width, height)
        status = buffer.offer(f)
        if status == KeyframeStatus.TRACKING_LOST:
            broken = True                                   # the pipeline resets its recurrent state here
        if status != KeyframeStatus.KEYFRAME:
            continue
        meas = buffer.measurement_frames(n_measurement)
        if meas and (len(meas) == n_measurement or not require_full):
            if broken and out:
                segment += 1
            broken = False
            out.append(TrainingSample(f, list(meas), segment))
        else:
            broken = True                                   # a keyframe the pipeline runs is missing
    return out


@dataclass
class SequenceSample:
    """Consecutive keyframes of one segment (fusionnet trains on these, its state carried step to step)."""

    steps: List[TrainingSample]

    @property
    def reference(self) -> Frame:
        return self.steps[0].reference

    @property
    def frames(self) -> List[Frame]:
        """Every distinct frame the steps use (references and measurement frames), first use first."""
        seen: Dict[int, Frame] = {}
        for s in self.steps:
            for f in s.frames:
                seen.setdefault(f.uid, f)
        return list(seen.values())

    @property
    def has_gt(self) -> bool:
        return all(s.has_gt for s in self.steps)


def keyframe_sequences(samples: Sequence[TrainingSample], length: int, stride: int = 1) -> List[SequenceSample]:
    """Windows of ``length`` consecutive keyframe samples (from :func:`keyframe_samples`) of one segment,
    starting every ``stride`` keyframes: what fusionnet sees between two resets at inference, cut into
    DeepVideoMVS-style training subsequences. A segment shorter than ``length`` gives none."""
    if length < 1 or stride < 1:
        raise ValueError(f"need length >= 1 and stride >= 1, got {length}, {stride}")
    segments: Dict[int, List[TrainingSample]] = {}
    for s in samples:
        segments.setdefault(s.segment, []).append(s)
    out = []
    for run in segments.values():
        out.extend(SequenceSample(run[i:i + length]) for i in range(0, len(run) - length + 1, stride))
    return out


def index_samples(scene_path: os.PathLike | str, index_path: os.PathLike | str, width: int, height: int,
                  start: int = 0, stop: Optional[int] = None, with_depth: bool = True) -> List[TrainingSample]:
    """Samples from an official keyframe index file, keeping only lines whose reference and measurement
    frames all lie in the frame range ``start..stop-1`` of the scene (sorted-name order)."""
    from ..data.scenes import load_scene, read_keyframe_index
    scene = load_scene(scene_path)
    stop = len(scene) if stop is None else min(stop, len(scene))
    cache: Dict[int, Frame] = {}

    def get(name: str) -> Frame:
        i = scene.index_of(name)
        if i not in cache:
            cache[i] = scene.frame(i, with_depth=with_depth).resized(width, height)
        return cache[i]

    out = []
    for ref, meas in read_keyframe_index(index_path):
        idx = [scene.index_of(n) for n in (ref, *meas)]
        if all(start <= i < stop for i in idx):
            out.append(TrainingSample(get(ref), [get(m) for m in meas]))
    return out


# --------------------------------------------------------------------------------------------- order
class SampleOrder:
    """Deterministic sample order: epoch ``e`` is ``randperm(n)`` from a generator seeded ``seed + e``;
    step ``k`` takes positions ``k*B .. k*B+B-1`` of the concatenated epochs."""

    def __init__(self, n_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        if n_samples < 1:
            raise ValueError("no training samples (too few keyframes with enough measurement frames)")
        self.n, self.batch_size, self.seed, self.shuffle = n_samples, int(batch_size), int(seed), shuffle
        self._perms: Dict[int, List[int]] = {}

    def _perm(self, epoch: int) -> List[int]:
        if epoch not in self._perms:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
                self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
            else:
                self._perms[epoch] = list(range(self.n))
        return self._perms[epoch]

    def epoch_of(self, step: int) -> int:
        return (step * self.batch_size) // self.n

    def batch(self, step: int) -> List[int]:
        pos = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self._perm(p // self.n)[p % self.n] for p in pos]


# ------------------------------------------------------------------------------------------- collate
def collate(samples: Sequence[TrainingSample], device: torch.device | str = "cpu") -> Dict[str, object]:
    """Tensors for the losses:

    * ``images (B, V, 3, H, W)`` float32 in [0, 1], reference first;
    * ``K (B, V, 3, 3)`` float32; ``T_world_cam (B, V, 4, 4)`` float64 (relative poses are formed in
      double precision: world coordinates from a long run can be large);
    * ``depth_gt (B, 1, H, W)`` float32, NaN = unknown (only when every reference has ground truth);
    * ``samples``: the samples themselves (the adapters build each network's own input from the frames
      with the estimators' preprocessing).
    """
    views = {len(s.frames) for s in samples}
    if len(views) != 1:
        raise ValueError(f"samples in one batch must have the same number of views, got {sorted(views)}")
    imgs = np.stack([np.stack([f.image for f in s.frames]) for s in samples])           # (B, V, H, W, 3)
    images = torch.from_numpy(imgs).to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)
    K = torch.from_numpy(np.stack([np.stack([f.K for f in s.frames]) for s in samples])).float().to(device)
    T = torch.from_numpy(np.stack([np.stack([f.T_world_cam for f in s.frames]) for s in samples])).to(device)
    batch: Dict[str, object] = {"images": images, "K": K, "T_world_cam": T, "samples": list(samples)}
    if all(s.has_gt for s in samples):
        gt = np.stack([s.reference.depth_gt.astype(np.float32) for s in samples])[:, None]
        gt = np.where(gt > 0, gt, np.nan).astype(np.float32)
        batch["depth_gt"] = torch.from_numpy(gt).to(device)
    return batch


def collate_sequences(sequences: Sequence[SequenceSample], device: torch.device | str = "cpu") -> Dict[str, object]:
    """``{'steps': [collate(step t of every sequence) for t], 'sequences': sequences}`` (equal lengths)."""
    lengths = {len(s.steps) for s in sequences}
    if len(lengths) != 1:
        raise ValueError(f"sequences in one batch must have the same length, got {sorted(lengths)}")
    steps = [collate([s.steps[t] for s in sequences], device) for t in range(lengths.pop())]
    return {"steps": steps, "sequences": list(sequences)}
