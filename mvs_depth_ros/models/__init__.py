"""Model zoo: one estimator interface, many backends (see :mod:`.registry`)."""
from .base import DepthEstimator, resolve_device
from .registry import available_models, create_model

__all__ = ["DepthEstimator", "resolve_device", "available_models", "create_model"]
