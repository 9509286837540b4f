"""The video pipeline: keyframe buffer + estimator + recurrent state + temporal fusion.

This object is the only thing the CLI, the tests and the ROS node drive, so a number measured offline
is the number the robot gets.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np

from ..models.base import DepthEstimator
from .frame import DepthResult, Frame
from .fusion import FusionConfig, TemporalFusion
from .keyframes import KeyframeBuffer, KeyframeConfig, KeyframeStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    width: int = 320
    height: int = 256
    n_measurement_frames: int = 2
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    #: temporal fusion of the recent keyframes' depth: off here (library callers, the official-protocol
    #: benchmarks); the CLI and the node turn it on (``--temporal-fusion``, ``temporal_fusion``). The pipeline runs
    #: the causal mode; ``offline`` is applied by the caller to a recorded sequence (``core.fusion.fuse_offline``)
    fusion: FusionConfig = field(default_factory=lambda: FusionConfig(mode="off"))

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"working resolution must be at least 8x8, got {self.width}x{self.height}")
        if self.n_measurement_frames < 1:
            raise ValueError(f"n_measurement_frames must be >= 1, got {self.n_measurement_frames}")


@dataclass
class StepResult:
    """What happened to one input frame. ``result`` is set only for keyframes that got a depth map."""

    status: KeyframeStatus
    frame: Frame                       # the input frame at the working resolution
    measurements: List[Frame] = field(default_factory=list)
    result: Optional[DepthResult] = None
    compute_ms: float = 0.0            # estimator + fusion
    fusion_ms: float = 0.0             # of which temporal fusion
    reset: bool = False                # the recurrent state and buffer were reset before this frame


@dataclass
class PipelineCounters:
    frames: int = 0
    keyframes: int = 0
    predictions: int = 0
    no_pose: int = 0
    resets: int = 0
    fused: int = 0                     # predictions fused with >= 1 earlier keyframe


class VideoPipeline:
    """Online multi-view depth on a posed video stream (DeepVideoMVS' test-time loop)."""

    def __init__(self, estimator: DepthEstimator, config: PipelineConfig = PipelineConfig()):
        self.estimator = estimator
        self.config = config
        self.buffer = KeyframeBuffer(config.keyframes)
        self.state: Any = estimator.initial_state()
        self.fusion = TemporalFusion(config.fusion.resolved(estimator.fusion_defaults))
        self.counters = PipelineCounters()
        # source Frame.uid -> the frame at the working resolution. Re-using the same prepared object keeps
        # its uid stable, so estimators' per-frame feature caches hit when a keyframe is used again.
        self._prepared: "OrderedDict[int, Frame]" = OrderedDict()
        self._prepared_max = config.keyframes.buffer_size + 8

    def reset(self) -> None:
        """Forget the keyframes and the recurrent state (tracking loss, a jump in the pose source)."""
        self.buffer.clear()
        self._prepared.clear()
        self.state = self.estimator.initial_state()
        self.fusion.reset()
        self.counters.resets += 1

    def prepare(self, frame: Frame) -> Frame:
        """The frame at the working resolution (K rescaled); the same object for the same source frame."""
        hit = self._prepared.get(frame.uid)
        if hit is not None:
            self._prepared.move_to_end(frame.uid)
            return hit
        prepared = frame.resized(self.config.width, self.config.height)
        self._prepared[frame.uid] = prepared
        if len(self._prepared) > self._prepared_max:
            self._prepared.popitem(last=False)
        return prepared

    def process(self, frame: Frame) -> StepResult:
        """Offer one frame; runs the estimator when it becomes a keyframe with >= 1 measurement frame."""
        self.counters.frames += 1
        f = self.prepare(frame)
        status = self.buffer.offer(f)
        step = StepResult(status=status, frame=f)
        if status in (KeyframeStatus.NO_POSE, KeyframeStatus.STILL_LOST):
            self.counters.no_pose += 1
        elif status == KeyframeStatus.TRACKING_LOST:
            self.counters.no_pose += 1
            log.warning("tracking lost (%d frames without a pose): keyframes and recurrent state reset",
                        self.config.keyframes.tracking_lost_frames + 1)
            self.state = self.estimator.initial_state()
            self.fusion.reset()
            self.counters.resets += 1
            step.reset = True
        elif status == KeyframeStatus.KEYFRAME:
            self.counters.keyframes += 1
            step.measurements = self.buffer.measurement_frames(self.config.n_measurement_frames)
            self._run(step)
        elif status == KeyframeStatus.FIRST:
            self.counters.keyframes += 1
        return step

    def process_keyframe(self, reference: Frame, measurements: Sequence[Frame]) -> StepResult:
        """Run the estimator on a given reference/measurement set (e.g. from an official index file),
        carrying the recurrent state exactly as the online loop does."""
        self.counters.frames += 1
        self.counters.keyframes += 1
        step = StepResult(status=KeyframeStatus.KEYFRAME, frame=self.prepare(reference),
                          measurements=[self.prepare(m) for m in measurements])
        self._run(step)
        return step

    def _run(self, step: StepResult) -> None:
        if not step.measurements:
            return
        t0 = time.perf_counter()
        kwargs = {}
        if self.config.fusion.mode == "causal" and self.fusion.config.prior and self.estimator.accepts_prior:
            # the fusion state feeds the estimator: the last fused keyframe re-projected into this one
            prior = self.fusion.prior(step.frame.K, step.frame.T_world_cam, step.frame.height, step.frame.width)
            if prior is not None:
                kwargs["prior"] = prior
        prior_ms = (time.perf_counter() - t0) * 1e3
        result = self.estimator.estimate(step.frame, step.measurements, self.state, **kwargs)
        self.state = result.state
        if self.config.fusion.mode == "causal":
            t1 = time.perf_counter()
            result = self._fuse(result, step.frame.T_world_cam)
            step.fusion_ms = (time.perf_counter() - t1) * 1e3 + prior_ms
        step.compute_ms = (time.perf_counter() - t0) * 1e3
        step.result = result
        self.counters.predictions += 1

    def _fuse(self, result: DepthResult, T_world_cam: np.ndarray) -> DepthResult:
        """The causal temporal fusion of ``result`` with the kept keyframes (the raw prediction stays in
        ``info["unfused_depth"]`` / ``info["unfused_confidence"]``)."""
        out = self.fusion.step(result.depth, result.confidence, result.K, T_world_cam)
        if out.n_keyframes > 0:
            self.counters.fused += 1
        info = dict(result.info, unfused_depth=result.depth, unfused_confidence=result.confidence)
        return DepthResult(out.depth, out.confidence, result.K, result.state, info,
                           fused=out.n_keyframes > 0, fusion_keyframes=out.n_keyframes)
