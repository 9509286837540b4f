"""Stereo backends (one rectified pair in, disparity/depth/confidence out; see ``core/stereo.py``).

* :mod:`.sgbm` — OpenCV semi-global matching with left-right check and confidence; ``build(**options)``;
* :mod:`.temporal` — a recursive, pose-aware temporal filter that wraps any stereo estimator;
* :mod:`.dynamic_stereo` — our DynamicStereo (learned temporal stereo; needs the user's own checkpoint).

``build`` here is the default (SGBM); use :func:`mvs_depth_ros.models.registry.create_stereo_model` to pick by name.
"""
from .sgbm import SGBMConfig, SGBMStereo, build
from .temporal import TemporalConfig, TemporalStereo

__all__ = ["SGBMConfig", "SGBMStereo", "TemporalConfig", "TemporalStereo", "build"]
