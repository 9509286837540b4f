"""PatchmatchNet (Wang et al., CVPR 2021): learned cascade PatchMatch for multi-view stereo.

Our implementation from the paper and the conformance fixture (``shared/fixtures/patchmatchnet``); the
module tree carries the official parameter names, so the published checkpoint loads with ``strict=True``.

For a reference view and ``V-1`` source views (``H, W`` multiples of 8):

1. :class:`FeatureNet` per view: stage 3 (1/8, 64 ch), stage 2 (1/4, 32 ch), stage 1 (1/2, 16 ch).
2. Stages 3 -> 1, each a :class:`PatchMatch`: hypotheses (stage 3 starts from 48 stratified random
   inverse depths, later iterations perturb the previous estimate), adaptive propagation (learned
   offsets), adaptive evaluation (group correlation weighted by pixel-wise view weights, learned spatial
   aggregation), regression. View weights come from the first stage-3 iteration and are reused.
3. :class:`Refinement` to full resolution guided by the reference image; photometric confidence from
   the last stage-1 probabilities.

The only randomness is the stage-3 initialisation: an explicit input (``init_uniform``) or a
``torch.Generator``; on CPU, a generator seeded with 0 reproduces the official fixture's draw.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame
from .base import DepthEstimator
from .compiled import CompiledCall, resolve_compile
from .mvs_common import (ConvBnReLU, ConvBnReLU3D, LRUCache, check_frames, conv3d_fast, conv_bn_relu_3d,
                         image_tensor, load_official_weights, network_image, world_to_camera)
from .warping import project_depth_hypotheses, relative_projection, rotate_pixel_grid, stack_views, warp_correlation

log = logging.getLogger(__name__)

#: eval.py defaults; index i is stage i+1
OFFICIAL_CONFIG = dict(patchmatch_interval_scale=(0.005, 0.0125, 0.025), propagation_range=(6, 4, 2),
                       patchmatch_iteration=(1, 2, 2), patchmatch_num_sample=(8, 8, 16),
                       propagate_neighbors=(0, 8, 16), evaluate_neighbors=(9, 9, 9))
NUM_INIT_SAMPLES = 48


# ----------------------------------------------------------------------------------------------- features
class FeatureNet(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> {3: (B, 64, H/8, W/8), 2: (B, 32, H/4, W/4), 1: (B, 16, H/2, W/2)}."""

    def __init__(self):
        super().__init__()
        self.conv0 = ConvBnReLU(3, 8, 3, 1, 1)
        self.conv1 = ConvBnReLU(8, 8, 3, 1, 1)
        self.conv2 = ConvBnReLU(8, 16, 5, 2, 2)
        self.conv3 = ConvBnReLU(16, 16, 3, 1, 1)
        self.conv4 = ConvBnReLU(16, 16, 3, 1, 1)
        self.conv5 = ConvBnReLU(16, 32, 5, 2, 2)
        self.conv6 = ConvBnReLU(32, 32, 3, 1, 1)
        self.conv7 = ConvBnReLU(32, 32, 3, 1, 1)
        self.conv8 = ConvBnReLU(32, 64, 5, 2, 2)
        self.conv9 = ConvBnReLU(64, 64, 3, 1, 1)
        self.conv10 = ConvBnReLU(64, 64, 3, 1, 1)
        self.output1 = nn.Conv2d(64, 64, 1, bias=False)
        self.inner1 = nn.Conv2d(32, 64, 1, bias=True)
        self.inner2 = nn.Conv2d(16, 64, 1, bias=True)
        self.output2 = nn.Conv2d(64, 32, 1, bias=False)
        self.output3 = nn.Conv2d(64, 16, 1, bias=False)

    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        conv1 = self.conv1(self.conv0(x))
        conv4 = self.conv4(self.conv3(self.conv2(conv1)))
        conv7 = self.conv7(self.conv6(self.conv5(conv4)))
        conv10 = self.conv10(self.conv9(self.conv8(conv7)))
        out = {3: self.output1(conv10)}
        t = F.interpolate(conv10, scale_factor=2.0, mode="bilinear", align_corners=False) + self.inner1(conv7)
        out[2] = self.output2(t)
        t = F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False) + self.inner2(conv4)
        out[1] = self.output3(t)
        return out


class Refinement(nn.Module):
    """Depth ``(B, 1, H/2, W/2)`` + image ``(B, 3, H, W)`` -> depth ``(B, 1, H, W)`` (residual on the nearest
    x2 upsampling of the range-normalised depth; not clamped)."""

    def __init__(self):
        super().__init__()
        self.conv0 = ConvBnReLU(3, 8)
        self.conv1 = ConvBnReLU(1, 8)
        self.conv2 = ConvBnReLU(8, 8)
        self.deconv = nn.ConvTranspose2d(8, 8, kernel_size=3, padding=1, output_padding=1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv3 = ConvBnReLU(16, 8)
        self.res = nn.Conv2d(8, 1, 3, padding=1, bias=False)

    def forward(self, img: torch.Tensor, depth_0: torch.Tensor, depth_min: torch.Tensor,
                depth_max: torch.Tensor) -> torch.Tensor:
        b = depth_min.shape[0]
        dmin, drange = depth_min.view(b, 1, 1, 1), (depth_max - depth_min).view(b, 1, 1, 1)
        depth = (depth_0 - dmin) / drange
        conv0 = self.conv0(img)
        deconv = F.relu(self.bn(self.deconv(self.conv2(self.conv1(depth)))), inplace=True)
        res = self.res(self.conv3(torch.cat((deconv, conv0), dim=1)))
        depth = F.interpolate(depth, scale_factor=2.0, mode="nearest") + res
        return depth * drange + dmin


# ------------------------------------------------------------------------------------------- patchmatch
class PixelwiseNet(nn.Module):
    """Similarity ``(B, G, D, H, W)`` -> view weight ``(B, 1, H, W)`` = max over D of a 1x1x1 conv net + sigmoid."""

    def __init__(self, G: int):
        super().__init__()
        self.conv0 = ConvBnReLU3D(G, 16, kernel_size=1, stride=1, pad=0)
        self.conv1 = ConvBnReLU3D(16, 8, kernel_size=1, stride=1, pad=0)
        self.conv2 = nn.Conv3d(8, 1, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv3d_fast(self.conv2, conv_bn_relu_3d(self.conv1, conv_bn_relu_3d(self.conv0, x)))
        return torch.max(torch.sigmoid(x.squeeze(1)), dim=1)[0].unsqueeze(1)


class SimilarityNet(nn.Module):
    """Similarity ``(B, G, D, H, W)`` -> cost ``(B, D, H, W)``: 1x1x1 convs, then the adaptive spatial
    aggregation over ``K`` learned neighbours (``grid (B, K*H, W, 2)``, ``weight (B, D, K, H, W)``)."""

    def __init__(self, G: int):
        super().__init__()
        self.conv0 = ConvBnReLU3D(G, 16, kernel_size=1, stride=1, pad=0)
        self.conv1 = ConvBnReLU3D(16, 8, kernel_size=1, stride=1, pad=0)
        self.similarity = nn.Conv3d(8, 1, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        k = grid.shape[1] // h
        x = conv3d_fast(self.similarity, conv_bn_relu_3d(self.conv1, conv_bn_relu_3d(self.conv0, x)))
        x = F.grid_sample(x.squeeze(1), grid, mode="bilinear", padding_mode="border",
                          align_corners=False).view(b, d, k, h, w)
        return torch.sum(x * weight, dim=2)


class FeatureWeightNet(nn.Module):
    """Reference features ``(B, C, H, W)`` at the ``K`` evaluation neighbours -> weights ``(B, K, H, W)``."""

    def __init__(self, neighbors: int = 9, G: int = 8):
        super().__init__()
        self.neighbors = neighbors
        self.G = G
        self.conv0 = ConvBnReLU3D(G, 16, kernel_size=1, stride=1, pad=0)
        self.conv1 = ConvBnReLU3D(16, 8, kernel_size=1, stride=1, pad=0)
        self.similarity = nn.Conv3d(8, 1, kernel_size=1, stride=1, padding=0)

    def forward(self, ref_feature: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ref_feature.shape
        x = F.grid_sample(ref_feature, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x.view(b, self.G, c // self.G, self.neighbors, h, w)
        x = (x * ref_feature.view(b, self.G, c // self.G, h, w).unsqueeze(3)).mean(2)
        x = conv3d_fast(self.similarity, conv_bn_relu_3d(self.conv1, conv_bn_relu_3d(self.conv0, x)))
        return torch.sigmoid(x.squeeze(1))


class Evaluation(nn.Module):
    """Adaptive evaluation: view-weighted group correlation, :class:`SimilarityNet`, softmax, regression."""

    def __init__(self, G: int):
        super().__init__()
        self.G = G
        self.pixel_wise_net = PixelwiseNet(G)
        self.similarity_net = SimilarityNet(G)


def depth_weight(depth_sample: torch.Tensor, inv_dmin: torch.Tensor, inv_dmax: torch.Tensor, grid: torch.Tensor,
                 interval_scale: float, neighbors: int) -> torch.Tensor:
    """Weights ``(B, D, K, H, W)`` from the normalised inverse-depth difference between each hypothesis and
    the same hypothesis at the ``K`` neighbours: ``sigmoid(4 - 2 clamp(|dn| / interval_scale, 0, 4))``."""
    b, d, h, w = depth_sample.shape
    x = (1.0 / depth_sample - inv_dmax) / (inv_dmin - inv_dmax)
    x1 = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).view(b, d, neighbors, h, w)
    x1 = torch.abs(x1 - x.unsqueeze(2)) / interval_scale
    return torch.sigmoid(4.0 - 2.0 * x1.clamp(min=0, max=4))


def _neighbour_offsets(kind: str, n: int, dilation: int) -> List[Tuple[int, int]]:
    """``(dy, dx)`` base offsets of the official propagation (4/8/16) and evaluation (9/17) patterns."""
    ring = [(-dilation, -dilation), (-dilation, 0), (-dilation, dilation), (0, -dilation), (0, dilation),
            (dilation, -dilation), (dilation, 0), (dilation, dilation)]
    if kind == "propagation":
        if n == 4:
            return [(-dilation, 0), (0, -dilation), (0, dilation), (dilation, 0)]
        if n == 8:
            return ring
        if n == 16:
            return ring + [(2 * y, 2 * x) for y, x in ring]
    elif kind == "evaluation":
        square = ring[:4] + [(0, 0)] + ring[4:]
        if n == 9:
            return square
        if n == 17:
            return square + [(2 * y, 2 * x) for y, x in ring]
    raise ValueError(f"unsupported {kind} neighbourhood of {n}")


class PatchMatch(nn.Module):
    """One PatchMatch stage (official parameter names: ``propa_conv``, ``eval_conv``, ``evaluation``,
    ``feature_weight_net``)."""

    #: hypotheses warped per ``grid_sample`` call in the evaluation (:func:`~.warping.warp_correlation`)
    planes_per_call: int = 8

    def __init__(self, propagation_out_range: int = 2, patchmatch_iteration: int = 2, patchmatch_num_sample: int = 16,
                 patchmatch_interval_scale: float = 0.025, num_feature: int = 64, G: int = 8,
                 propagate_neighbors: int = 16, evaluate_neighbors: int = 9, stage: int = 3):
        super().__init__()
        self.patchmatch_iteration = patchmatch_iteration
        self.patchmatch_num_sample = patchmatch_num_sample
        self.patchmatch_interval_scale = patchmatch_interval_scale
        self.G = G
        self.stage = stage
        self.dilation = propagation_out_range
        self.propagate_neighbors = propagate_neighbors
        self.evaluate_neighbors = evaluate_neighbors
        self.evaluation = Evaluation(G)
        # present in the checkpoint even where unused (stage 1 has no propagation)
        self.propa_conv = nn.Conv2d(num_feature, max(2 * propagate_neighbors, 1), kernel_size=3, stride=1,
                                    padding=self.dilation, dilation=self.dilation, bias=True)
        self.eval_conv = nn.Conv2d(num_feature, 2 * evaluate_neighbors, kernel_size=3, stride=1,
                                   padding=self.dilation, dilation=self.dilation, bias=True)
        self.feature_weight_net = FeatureWeightNet(evaluate_neighbors, G)

    def _grid(self, offsets: List[Tuple[int, int]], learned: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Sampling grid ``(B, K*H, W, 2)`` at ``pixel + base offset + learned offset`` (``learned (B, 2K, H*W)``,
        channels x0, y0, x1, y1, ...). Normalised with the align_corners=True formula but sampled with
        align_corners=False, as the official code does."""
        b = learned.shape[0]
        base = torch.tensor([[ox, oy] for oy, ox in offsets], dtype=learned.dtype, device=learned.device)
        xy = torch.stack(torch.meshgrid(torch.arange(0, width, dtype=learned.dtype, device=learned.device),
                                        torch.arange(0, height, dtype=learned.dtype, device=learned.device),
                                        indexing="xy")).view(1, 2, 1, height * width)
        off = base.t().view(1, 2, -1, 1) + learned.view(b, -1, 2, height * width).transpose(1, 2)
        xy = xy + off                                                       # [B, 2, K, H*W]
        x_n = xy[:, 0] / ((width - 1) / 2) - 1
        y_n = xy[:, 1] / ((height - 1) / 2) - 1
        return torch.stack((x_n, y_n), dim=3).view(b, len(offsets) * height, width, 2)

    def init_hypotheses(self, depth: Optional[torch.Tensor], inv_dmin: torch.Tensor, inv_dmax: torch.Tensor,
                        height: int, width: int, init_uniform: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, N, H, W)`` hypotheses: stratified random inverse depths (``depth`` None) or the previous
        estimate ``(B, 1, H, W)`` perturbed by ``N`` steps of ``interval_scale`` of the inverse range."""
        if depth is None:
            if init_uniform is None:
                raise ValueError("the first stage-3 iteration needs init_uniform (B, 48, H, W) in [0, 1)")
            s = init_uniform + torch.arange(0, NUM_INIT_SAMPLES, 1, device=init_uniform.device).view(1, -1, 1, 1)
            return 1.0 / (inv_dmax + s / NUM_INIT_SAMPLES * (inv_dmin - inv_dmax))
        if self.patchmatch_num_sample == 1:
            return depth
        n = self.patchmatch_num_sample
        steps = torch.arange(-n // 2, n // 2, 1, device=depth.device).view(1, n, 1, 1).float()
        inv = 1.0 / depth + (inv_dmin - inv_dmax) * self.patchmatch_interval_scale * steps
        return 1.0 / torch.maximum(torch.minimum(inv, inv_dmin), inv_dmax)

    def forward(self, ref_feature: torch.Tensor, src_features: Sequence[torch.Tensor], rels: Sequence[torch.Tensor],
                inv_dmin: torch.Tensor, inv_dmax: torch.Tensor, depth: Optional[torch.Tensor],
                view_weights: Optional[torch.Tensor], init_uniform: Optional[torch.Tensor] = None):
        """
        Args:
            ref_feature: ``(B, C, H, W)``; src_features: per view ``(B, C, H, W)``.
            rels: per source view ``(B, 4, 4)`` = ``src_proj @ inv(ref_proj)`` at this stage.
            inv_dmin, inv_dmax: ``(B, 1, 1, 1)`` (``inv_dmin = 1/depth_min``, the large one).
            depth: previous estimate ``(B, 1, H, W)`` or None (stage 3 start).
            view_weights: ``(B, V-1, H, W)`` or None (computed in the first evaluation).
        Returns:
            ``(depths: list of (B, 1, H, W) per iteration, score (B, D, H, W) of the last one, view_weights)``.
        """
        b, _, h, w = ref_feature.shape
        propagate = self.propagate_neighbors > 0 and not (self.stage == 1 and self.patchmatch_iteration == 1)
        propa_grid = None
        if propagate:
            propa_grid = self._grid(_neighbour_offsets("propagation", self.propagate_neighbors, self.dilation),
                                    self.propa_conv(ref_feature).view(b, -1, h * w), h, w)
        eval_grid = self._grid(_neighbour_offsets("evaluation", self.evaluate_neighbors, self.dilation - 1),
                               self.eval_conv(ref_feature).view(b, -1, h * w), h, w)
        feature_weight = self.feature_weight_net(ref_feature, eval_grid)
        rots = [rotate_pixel_grid(r, h, w) for r in rels]
        depths, score = [], None
        for it in range(1, self.patchmatch_iteration + 1):
            last_stage1 = self.stage == 1 and it == self.patchmatch_iteration
            samples = self.init_hypotheses(depth, inv_dmin, inv_dmax, h, w, init_uniform)
            if propagate and not last_stage1:
                n = samples.shape[1]
                prop = F.grid_sample(samples[:, n // 2:n // 2 + 1], propa_grid, mode="bilinear", padding_mode="border",
                                     align_corners=False).view(b, self.propagate_neighbors, h, w)
                samples = torch.sort(torch.cat((samples, prop), dim=1), dim=1)[0]
            weight = depth_weight(samples, inv_dmin, inv_dmax, eval_grid, self.patchmatch_interval_scale,
                                  self.evaluate_neighbors) * feature_weight.unsqueeze(1)
            weight = weight / torch.sum(weight, dim=2).unsqueeze(2)
            depth, score, view_weights = self.evaluate(ref_feature, src_features, rels, rots, samples, eval_grid,
                                                       weight, view_weights, inverse=last_stage1)
            depths.append(depth)
        return depths, score, view_weights

    def evaluate(self, ref_feature, src_features, rels, rots, samples, grid, weight, view_weights, inverse: bool):
        """Adaptive evaluation of ``samples (B, D, H, W)`` -> ``(depth (B, 1, H, W), score (B, D, H, W),
        view_weights (B, V-1, H, W))``."""
        b, c, h, w = ref_feature.shape
        d = samples.shape[1]
        weight_sum = 1e-5 * torch.ones((b, 1, 1, h, w), dtype=torch.float32, device=ref_feature.device)
        sim_sum = torch.zeros((b, self.G, d, h, w), dtype=torch.float32, device=ref_feature.device)
        computed = []
        with torch.no_grad():
            grids = [project_depth_hypotheses(rels[v], samples, src.shape[2:], min_z=1e-3, rot_xyz=rots[v])
                     for v, src in enumerate(src_features)]
        # all source views in one batch (grid_sample samples them in parallel), views outermost
        n = len(src_features)
        ref = ref_feature if b == 1 else ref_feature.repeat(n, 1, 1, 1)
        sims = warp_correlation(stack_views(src_features), ref, torch.cat(grids).view(n * b, d, h, w, 2), self.G,
                                self.planes_per_call)
        vws = self.evaluation.pixel_wise_net(sims) if view_weights is None else None
        for v in range(n):
            sim = sims[v * b:(v + 1) * b]
            if view_weights is None:
                vw = vws[v * b:(v + 1) * b]
                computed.append(vw)
            else:
                vw = view_weights[:, v:v + 1]
            sim_sum += sim * vw.unsqueeze(1)
            weight_sum += vw.unsqueeze(1)
        if view_weights is None:
            view_weights = torch.cat(computed, dim=1)
        score = self.evaluation.similarity_net(sim_sum / weight_sum, grid, weight)
        score = torch.exp(torch.log_softmax(score, dim=1))
        if inverse:
            index = torch.sum(torch.arange(0, d, 1, device=score.device).view(1, d, 1, 1) * score, dim=1)
            inv_min, inv_max = 1.0 / samples[:, -1], 1.0 / samples[:, 0]
            depth = 1.0 / (inv_max + index / (d - 1) * (inv_min - inv_max))
        else:
            depth = torch.sum(samples * score, dim=1)
        return depth.unsqueeze(1), score, view_weights


def photometric_confidence(score: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Sum of the 4 probabilities around the regressed hypothesis index (``i-1 .. i+2``), nearest-upsampled.

    Args:
        score: ``(B, D, h, w)`` probabilities of the last stage-1 evaluation.
        size: output ``(H, W)``.
    Returns:
        ``(B, 1, H, W)`` in [0, 1].
    """
    d = score.shape[1]
    sum4 = 4 * F.avg_pool3d(F.pad(score.unsqueeze(1), pad=(0, 0, 0, 0, 1, 2)), (4, 1, 1), stride=1,
                            padding=0).squeeze(1)
    index = torch.sum(score * torch.arange(d, device=score.device, dtype=torch.float).view(d, 1, 1), dim=1)
    index = index.unsqueeze(1).long().clamp(0, d - 1)
    return F.interpolate(torch.gather(sum4, 1, index), size=list(size), mode="nearest")


class PatchmatchNet(nn.Module):
    """The official network: ``feature``, ``patchmatch_{1,2,3}``, ``upsample_net``."""

    def __init__(self, patchmatch_interval_scale=OFFICIAL_CONFIG["patchmatch_interval_scale"],
                 propagation_range=OFFICIAL_CONFIG["propagation_range"],
                 patchmatch_iteration=OFFICIAL_CONFIG["patchmatch_iteration"],
                 patchmatch_num_sample=OFFICIAL_CONFIG["patchmatch_num_sample"],
                 propagate_neighbors=OFFICIAL_CONFIG["propagate_neighbors"],
                 evaluate_neighbors=OFFICIAL_CONFIG["evaluate_neighbors"]):
        super().__init__()
        self.feature = FeatureNet()
        num_features, groups = (16, 32, 64), (4, 8, 8)
        for i in range(3):
            setattr(self, f"patchmatch_{i + 1}", PatchMatch(
                propagation_range[i], patchmatch_iteration[i], patchmatch_num_sample[i],
                patchmatch_interval_scale[i], num_features[i], groups[i], propagate_neighbors[i],
                evaluate_neighbors[i], stage=i + 1))
        self.upsample_net = Refinement()

    def init_shape(self, height: int, width: int, batch: int = 1) -> Tuple[int, int, int, int]:
        """Shape of the uniform draw the stage-3 initialisation consumes."""
        return batch, NUM_INIT_SAMPLES, height // 8, width // 8

    def run(self, ref_image: torch.Tensor, ref_feature: Dict[int, torch.Tensor],
            src_features: Sequence[Dict[int, torch.Tensor]], ref_proj: Dict[int, torch.Tensor],
            src_projs: Sequence[Dict[int, torch.Tensor]], depth_min: torch.Tensor, depth_max: torch.Tensor,
            init_uniform: torch.Tensor) -> Dict[str, Any]:
        """Everything after feature extraction.

        Args:
            ref_image: ``(B, 3, H, W)`` in [0, 1].
            ref_feature, src_features: stage -> features (see :class:`FeatureNet`).
            ref_proj, src_projs: stage (1, 2, 3) -> ``(B, 4, 4)`` float32 projection matrices.
            depth_min, depth_max: ``(B,)``.
            init_uniform: ``(B, 48, H/8, W/8)`` uniform [0, 1) draw for the stage-3 initialisation.
        Returns:
            ``depth (B, 1, H, W)`` (refined, not clamped), ``confidence (B, 1, H, W)``, ``depth_patchmatch``
            (stage -> per-iteration depths), ``score`` and ``view_weights`` per stage.
        """
        b = depth_min.shape[0]
        depth_min, depth_max = depth_min.float(), depth_max.float()
        inv_dmin, inv_dmax = (1.0 / depth_min).view(b, 1, 1, 1), (1.0 / depth_max).view(b, 1, 1, 1)
        depth, view_weights = None, None
        out: Dict[str, Any] = {"depth_patchmatch": {}, "score": {}, "view_weights": {}}
        for stage in (3, 2, 1):
            pm = getattr(self, f"patchmatch_{stage}")
            rels = [relative_projection(p[stage], ref_proj[stage]) for p in src_projs]
            depths, score, view_weights = pm(ref_feature[stage], [s[stage] for s in src_features], rels, inv_dmin,
                                             inv_dmax, depth, view_weights, init_uniform if stage == 3 else None)
            out["depth_patchmatch"][stage] = depths
            out["score"][stage] = score
            out["view_weights"][stage] = view_weights
            depth = depths[-1]
            if stage > 1:
                depth = F.interpolate(depth, scale_factor=2.0, mode="nearest")
                view_weights = F.interpolate(view_weights, scale_factor=2.0, mode="nearest")
        h, w = ref_image.shape[2:]
        out["depth"] = self.upsample_net(ref_image, depth, depth_min, depth_max)
        out["confidence"] = photometric_confidence(out["score"][1], (h, w))
        return out

    def forward(self, images: Sequence[torch.Tensor], intrinsics: torch.Tensor, extrinsics: torch.Tensor,
                depth_min: torch.Tensor, depth_max: torch.Tensor, init_uniform: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """The official call: ``images`` V x ``(B, 3, H, W)`` (reference first, H, W multiples of 8),
        ``intrinsics (B, V, 3, 3)`` at H x W, ``extrinsics (B, V, 4, 4)`` world-to-camera.

        The stage-3 draw is ``init_uniform`` if given, else ``torch.rand`` on the CPU from ``generator``
        (or the global generator), moved to the device.
        """
        h, w = images[0].shape[2:]
        if h % 8 or w % 8:
            raise ValueError(f"PatchmatchNet needs H, W multiples of 8, got {w}x{h}")
        feats = [self.feature(img) for img in images]
        projs = stage_projections(intrinsics, extrinsics)
        if init_uniform is None:
            init_uniform = torch.rand(self.init_shape(h, w, images[0].shape[0]), generator=generator)
        out = self.run(images[0], feats[0], feats[1:], projs[0], projs[1:], depth_min, depth_max,
                       init_uniform.to(images[0].device))
        out["ref_feature"] = feats[0]
        return out


def stage_projections(intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> List[Dict[int, torch.Tensor]]:
    """Per view, stage -> ``(B, 4, 4)`` projection ``[[K_s E[:3, :4]], [E[3]]]`` with ``K_s`` = rows 0-1 of K
    times ``2^-stage``, computed in float32 as the official network does."""
    out = []
    for v in range(intrinsics.shape[1]):
        per = {}
        for stage in (1, 2, 3):
            K = intrinsics[:, v].clone()
            K[:, :2] *= 0.5 ** stage
            P = extrinsics[:, v].clone()
            P[:, :3, :4] = torch.matmul(K, extrinsics[:, v, :3, :4])
            per[stage] = P
        out.append(per)
    return out


# --------------------------------------------------------------------------------------------- estimator
class PatchmatchNetEstimator(DepthEstimator):
    """PatchmatchNet as a :class:`DepthEstimator` (official eval configuration).

    ``seed``: an int makes every call draw its stage-3 initialisation from a fresh CPU generator seeded
    with it (so a result is a pure function of its inputs; seed 0 reproduces the official fixture's draw);
    None draws from torch's global generator. Depth is clamped to ``[min_depth, max_depth]`` (the
    refinement can leave the range), confidence is the photometric confidence in [0, 1].
    """

    name = "patchmatchnet"
    # its gross errors are depth far behind the surface: re-projected depth in front of the new prediction is
    # the evidence against it, depth behind it is hidden; and its confidence hardly tells good depth from bad,
    # so the new prediction gets no more weight than a re-projected one (HoloLens sample, causal fusion:
    # abs_rel 0.2528 without both, 0.2346 with the occlusion test, 0.2184 with both, 0.2175 with the discontinuity
    # test ``edge_rel`` of every estimator too; README)
    fusion_defaults = {"occlusion_test": True, "current_weight": 1.0}
    preferred_measurement_frames = 2

    def __init__(self, checkpoint: Optional[str] = None, device: str = "auto", min_depth: float = 0.25,
                 max_depth: float = 20.0, seed: Optional[int] = 0, feature_cache: int = 16, compile: Any = "auto",
                 **config):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        unknown = set(config) - set(OFFICIAL_CONFIG)
        if unknown:
            raise ValueError(f"unknown PatchmatchNet options: {sorted(unknown)}")
        self.net = PatchmatchNet(**{**OFFICIAL_CONFIG, **config})
        if checkpoint:
            load_official_weights(self.net, checkpoint, what="PatchmatchNet")
        else:
            log.warning("PatchmatchNet built without a checkpoint: random weights")
        self.net.eval().to(self.device)
        self.seed = seed
        self.cache = LRUCache(feature_cache)
        use = resolve_compile(compile, self.device, pays_on_cpu=False)  # opt-in: see compiled.py
        self._feature = CompiledCall(self.net.feature, "PatchmatchNet feature net", use)
        self._run = CompiledCall(self.net.run, "PatchmatchNet", use)

    def _image_and_features(self, frame: Frame):
        def compute():
            img = image_tensor(network_image(frame, "unit"), self.device, channels_last=False)
            return img, self._feature(img)
        return self.cache.get_or_compute(frame.uid, compute)

    def draw_init(self, height: int, width: int) -> torch.Tensor:
        gen = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))
        return torch.rand(self.net.init_shape(height, width), generator=gen)

    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None) -> DepthResult:
        check_frames(reference, measurements, 8, "PatchmatchNet")
        t0 = time.perf_counter()
        frames = (reference, *measurements)
        with torch.inference_mode():
            data = [self._image_and_features(f) for f in frames]
            intr = torch.from_numpy(np.stack([f.K for f in frames]).astype(np.float32))[None].to(self.device)
            extr = torch.from_numpy(np.stack([world_to_camera(f.T_world_cam) for f in frames])
                                    .astype(np.float32))[None].to(self.device)
            projs = stage_projections(intr, extr)
            dmin = torch.tensor([self.min_depth], dtype=torch.float32, device=self.device)
            dmax = torch.tensor([self.max_depth], dtype=torch.float32, device=self.device)
            init = self.draw_init(reference.height, reference.width).to(self.device)
            out = self._run(data[0][0], data[0][1], [d[1] for d in data[1:]], projs[0], projs[1:], dmin, dmax, init)
            depth = out["depth"][0, 0].float().cpu().numpy()
            conf = out["confidence"][0, 0].float().cpu().numpy()
        depth = np.where(np.isfinite(depth), np.clip(depth, self.min_depth, self.max_depth), np.nan).astype(np.float32)
        conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0).astype(np.float32)
        return DepthResult(depth=depth, confidence=conf, K=reference.K.copy(), state=state,
                           info={"model": self.name, "ms": (time.perf_counter() - t0) * 1e3,
                                 "cache_hits": self.cache.hits, "compile": self._run.describe()})


def build(checkpoint: Optional[str] = None, device: str = "auto", **options) -> PatchmatchNetEstimator:
    """Registry builder: ``options`` = ``min_depth``, ``max_depth``, ``seed`` (0; None = global RNG),
    ``feature_cache`` (16), ``compile`` ("auto": eager; true: torch.compile, see ``models/compiled.py``) and the official
    config keys (``patchmatch_iteration`` etc.)."""
    return PatchmatchNetEstimator(checkpoint=checkpoint, device=device, **options)
