"""Name -> estimator builder. Builders are imported lazily so that a missing optional dependency of
one model never breaks the others (or the classical default)."""
from __future__ import annotations

import importlib
import logging
from dataclasses import fields
from typing import Callable, Dict, Iterable, List, Optional, Union

from .base import DepthEstimator
from .checkpoints import CheckpointError

log = logging.getLogger(__name__)

#: registry name -> "module:callable"; the callable takes (checkpoint=None, device="auto", **options)
_BUILDERS: Dict[str, str] = {
    "planesweep": "mvs_depth_ros.models.planesweep:build",
    "dvmvs_pairnet": "mvs_depth_ros.models.dvmvs:build_pairnet",
    "dvmvs_fusionnet": "mvs_depth_ros.models.dvmvs:build_fusionnet",
    "patchmatchnet": "mvs_depth_ros.models.patchmatchnet:build",
    "itermvs": "mvs_depth_ros.models.itermvs:build",
    "mvsnet": "mvs_depth_ros.models.mvsnet:build",
    "mvdepthnet": "mvs_depth_ros.models.mvdepthnet:build",
}

#: models that cannot run without weights (everything but the classical sweep)
NEEDS_CHECKPOINT = frozenset(n for n in _BUILDERS if n != "planesweep")
DEFAULT_MODEL = "planesweep"


def available_models() -> List[str]:
    return sorted(_BUILDERS)


def _resolve(name: str) -> Callable[..., DepthEstimator]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    module_name, attr = _BUILDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"model {name!r} is not available in this install: {exc}") from exc
    return getattr(module, attr)


def parse_model_options(items: Union[str, Iterable[str]]) -> dict:
    """Estimator options from ``KEY=VALUE`` text: ``["n_planes=32", "compile=true"]`` or one string with the items
    separated by commas or whitespace (``"n_planes=32, compile=true"``, the node's ``model_options``) ->
    ``{"n_planes": 32, "compile": True}``; values are parsed as YAML scalars. ``ValueError`` names a bad item."""
    import yaml

    if isinstance(items, str):
        items = items.replace(",", " ").split()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model option {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"model option {item!r}: the value is not a YAML scalar ({exc})") from exc
    return out


def create_model(name: str = DEFAULT_MODEL, checkpoint: Optional[str] = None, device: str = "auto",
                 **options) -> DepthEstimator:
    """Build an estimator by name.

    A learned model with no checkpoint falls back to the classical plane sweep with a clear log line
    (nothing is ever downloaded). A checkpoint given to the weightless ``planesweep`` is refused
    (:class:`CheckpointError`): it would be silently ignored, and it almost always means the ``model`` setting
    was forgotten. Unusable checkpoints raise :class:`CheckpointError` with one readable message.
    """
    if name in NEEDS_CHECKPOINT and not checkpoint:
        log.warning("model %r needs a checkpoint and none is configured: falling back to the classical "
                    "'planesweep' estimator (set checkpoint to the published weights to use %s)", name, name)
        from .planesweep import PlaneSweepConfig
        known = {f.name for f in fields(PlaneSweepConfig)}
        dropped = sorted(set(options) - known)
        if dropped:
            log.warning("options %s were meant for %r; the plane sweep does not take them", dropped, name)
        options = {k: v for k, v in options.items() if k in known}
        name = "planesweep"
    builder = _resolve(name)
    if name == "planesweep":
        if checkpoint:
            raise CheckpointError(f"model 'planesweep' has no weights, so checkpoint {checkpoint!r} would be ignored: "
                                  f"set model to the network the checkpoint belongs to "
                                  f"({', '.join(sorted(NEEDS_CHECKPOINT))}) or drop the checkpoint")
        return builder(device=device, **options)
    try:
        return builder(checkpoint=checkpoint, device=device, **options)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a state dict of an unexpected structure
        if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):  # an option, not the weights
            raise ValueError(f"model {name!r} does not take that option: {exc}") from exc
        raise CheckpointError(f"checkpoint {checkpoint!r} cannot be used for model {name!r} (wrong network or "
                              f"format): {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------- stereo
#: stereo registry name -> "module:callable" (interface: core/stereo.py StereoEstimator)
_STEREO_BUILDERS: Dict[str, str] = {
    "sgbm": "mvs_depth_ros.models.stereo.sgbm:build",
    "dynamic_stereo": "mvs_depth_ros.models.stereo.dynamic_stereo:build",
}
DEFAULT_STEREO_MODEL = "sgbm"


def available_stereo_models() -> List[str]:
    return sorted(_STEREO_BUILDERS)


def create_stereo_model(name: str = DEFAULT_STEREO_MODEL, checkpoint: Optional[str] = None, device: str = "auto",
                        **options):
    """Build a stereo estimator by name; a learned one without weights falls back to SGBM with a log line."""
    if name not in _STEREO_BUILDERS:
        raise ValueError(f"unknown stereo model {name!r}; available: {', '.join(available_stereo_models())}")
    if name != DEFAULT_STEREO_MODEL and not checkpoint:
        log.warning("stereo model %r needs a checkpoint and none is configured: falling back to the classical "
                    "'sgbm' matcher", name)
        name = DEFAULT_STEREO_MODEL
    module_name, attr = _STEREO_BUILDERS[name].split(":")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise RuntimeError(f"stereo model {name!r} is not available in this install: {exc}") from exc
    return builder(checkpoint=checkpoint, device=device, **options)
