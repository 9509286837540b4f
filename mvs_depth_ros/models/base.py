"""The one estimator interface every depth backend implements.

An estimator is called once per keyframe with the reference frame, its measurement frames (all already
at the pipeline's working resolution, with matching ``K``) and the recurrent state returned by its
previous call (``initial_state()`` at the start and after a reset). It returns a :class:`DepthResult`
at the reference frame's resolution. State is a value passed in and out, never hidden in the object, so
the caller can reset it (tracking loss) or keep several streams apart. Estimators may keep *caches*
(e.g. features of frames already seen, keyed by ``Frame.uid``) as long as results do not depend on them.
"""
from __future__ import annotations

import abc
import logging
from typing import Any, Dict, Optional, Sequence

import torch

from ..core.frame import DepthResult, Frame

log = logging.getLogger(__name__)

#: "confident pixels" threshold for estimators that do not recommend their own
DEFAULT_CONFIDENCE_THRESHOLD = 0.5


def recommended_threshold(result: DepthResult) -> float:
    """The confidence threshold the estimator recommends for this result (``info["confidence_threshold"]``),
    else :data:`DEFAULT_CONFIDENCE_THRESHOLD`. The CLI's and the ROS evaluator's "filtered" numbers use it."""
    return float(result.info.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device=cpu or auto")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")


class DepthEstimator(abc.ABC):
    """Base class: subclasses implement :meth:`estimate`."""

    #: registry name, e.g. ``"planesweep"``
    name: str = "base"
    #: True when the estimator carries information from one keyframe to the next in ``state``
    recurrent: bool = False
    #: number of measurement frames the estimator wants (None: any number >= 1)
    preferred_measurement_frames: Optional[int] = None
    #: the estimator-dependent settings of the temporal fusion (``core.fusion.DEFAULTS`` keys) that differ for it
    fusion_defaults: Dict[str, Any] = {}
    #: True when :meth:`estimate` takes ``prior=(depth, confidence)``: the temporal fusion's state re-projected
    #: into the reference (``core.fusion.TemporalFusion.prior``; NaN depth / 0 confidence = none)
    accepts_prior: bool = False

    def __init__(self, device: str = "auto", min_depth: float = 0.25, max_depth: float = 20.0):
        if not (0 < min_depth < max_depth):
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.device = resolve_device(device)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def initial_state(self) -> Any:
        """State for the first keyframe of a stream (``None`` for stateless estimators)."""
        return None

    @abc.abstractmethod
    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None) -> DepthResult:
        """Depth of ``reference`` from ``measurements`` (>= 1 posed frames at the same resolution)."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} (depth {self.min_depth:g}-{self.max_depth:g} m)"
