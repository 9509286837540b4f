"""DeepVideoMVS (Duzceker et al., CVPR 2021) pairnet and fusionnet; the official weights load unchanged."""
from .estimator import DVMVSEstimator, build_fusionnet, build_pairnet, confidence_map
from .model import DVMVSNet, FusionState, StepOutput

__all__ = ["DVMVSEstimator", "DVMVSNet", "FusionState", "StepOutput", "build_fusionnet", "build_pairnet",
           "confidence_map"]
