"""IterMVS (Wang et al., CVPR 2022): iterative probability estimation for efficient multi-view stereo.

Our implementation from the paper and the conformance fixture (``shared/fixtures/itermvs``); the module
tree carries the official parameter names, so the published checkpoints load with ``strict=True``.

Pipeline for a reference view and ``V-1`` source views (``H, W`` multiples of 32; level ``l`` = 1/2^l):

1. :class:`FeatureNet` per view: levels 1, 2, 3 with 16, 32, 48 channels.
2. Initial evaluation at level 3: 32 hypotheses uniform in inverse depth, group-wise correlation (G=8),
   pixel-wise view weights, cost regularisation (``corr_conv1[2]``) -> ``(B, 32, H/8, W/8)``.
3. ``hidden_init`` -> GRU state ``h0`` at level 2; ``n0 = depth_head(h0)`` (classification + local
   regression over 256 bins of normalised inverse depth).
4. ``iterations`` ConvGRU updates, each fed 10 correlations sampled around the current estimate at
   levels 1-3 (evaluated on the level-2 grid).
5. Confidence head on the last hidden state; convex x4 upsampling of the normalised inverse depth.

Normalised inverse depth ``n`` in [0, 1]: 0 = ``depth_max``, 1 = ``depth_min``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import DepthResult, Frame
from .base import DepthEstimator
from .compiled import CompiledCall, resolve_compile
from .mvs_common import (ConvBn, ConvBnReLU, ConvReLU, LRUCache, check_frames, image_tensor,
                         load_official_weights, network_image, projection_matrix)
from .warping import group_correlation, project_depth_hypotheses, relative_projection, rotate_pixel_grid, \
    sample_source

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3)
#: official per-level sample offsets, in units of one 256-bin step of normalised inverse depth
SAMPLE_OFFSETS = {1: (-2.0, -2.0 / 3, 2.0 / 3, 2.0), 2: (-8.0, -8.0 / 3, 8.0 / 3, 8.0), 3: (-32.0, 32.0)}


def depth_unnormalization(n: torch.Tensor, inv_dmin: torch.Tensor, inv_dmax: torch.Tensor) -> torch.Tensor:
    """Normalised inverse depth ``n`` -> depth. ``inv_dmin = 1/depth_min`` (the large inverse depth),
    both ``(B, 1, 1, 1)``."""
    return 1.0 / (inv_dmax + n * (inv_dmin - inv_dmax))


def depth_normalization(depth: torch.Tensor, inv_dmin: torch.Tensor, inv_dmax: torch.Tensor) -> torch.Tensor:
    """Depth -> normalised inverse depth (the official ``1/(d + 1e-5)`` form)."""
    return (1.0 / (depth + 1e-5) - inv_dmax) / (inv_dmin - inv_dmax)


# ---------------------------------------------------------------------------------------------- modules
class ResidualBlock(nn.Module):
    """Two 3x3 ConvBn(ReLU) with an identity or 3x3 strided ConvBn shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBnReLU(in_planes, planes, 3, stride=stride, pad=1)
        self.conv2 = ConvBn(planes, planes, 3, stride=1, pad=1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 else ConvBn(in_planes, planes, 3, stride=stride, pad=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class FeatureNet(nn.Module):
    """``(B, 3, H, W)`` in [-1, 1] -> {1: (B, 16, H/2, W/2), 2: (B, 32, H/4, W/4), 3: (B, 48, H/8, W/8)}.

    ``inner3`` exists in the checkpoint but is never used by the official forward.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBnReLU(3, 8)
        self.layer1 = nn.Sequential(ResidualBlock(8, 16, stride=2), ResidualBlock(16, 16))
        self.layer2 = nn.Sequential(ResidualBlock(16, 32, stride=2), ResidualBlock(32, 32))
        self.layer3 = nn.Sequential(ResidualBlock(32, 48, stride=2), ResidualBlock(48, 48))
        self.output3 = nn.Conv2d(48, 48, 3, stride=1, padding=1)
        self.output2 = nn.Conv2d(48, 32, 3, stride=1, padding=1)
        self.output1 = nn.Conv2d(48, 16, 3, stride=1, padding=1)
        self.inner1 = nn.Conv2d(16, 48, 1)
        self.inner2 = nn.Conv2d(32, 48, 1)
        self.inner3 = nn.Conv2d(48, 48, 1)

    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        fea1 = self.layer1(self.conv1(x))
        fea2 = self.layer2(fea1)
        fea3 = self.layer3(fea2)
        out = {3: self.output3(fea3)}
        t = F.interpolate(fea3, scale_factor=2.0, mode="bilinear", align_corners=False) + self.inner2(fea2)
        out[2] = self.output2(t)
        t = F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False) + self.inner1(fea1)
        out[1] = self.output1(t)
        return out


class PixelViewWeight(nn.Module):
    """Correlation ``(B, G, N, H, W)`` -> view weight ``(B, 1, H, W)`` = max over N of softmax over N."""

    def __init__(self, G: int):
        super().__init__()
        self.conv = nn.Sequential(ConvReLU(G, 16), nn.Conv2d(16, 1, 1, stride=1, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, n, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * n, g, h, w)
        x = torch.softmax(self.conv(x).view(b, n, h, w), dim=1)
        return torch.max(x, dim=1)[0].unsqueeze(1)


class CorrNet(nn.Module):
    """Small 2-D U-Net applied per hypothesis: ``(B, G, N, H, W)`` -> cost ``(B, N, H, W)``.
    H and W must be multiples of 4."""

    def __init__(self, G: int):
        super().__init__()
        self.conv0 = ConvReLU(G, 8)
        self.conv1 = ConvReLU(8, 16, stride=2)
        self.conv2 = ConvReLU(16, 32, stride=2)
        self.conv3 = nn.ConvTranspose2d(32, 16, 3, padding=1, output_padding=1, stride=2, bias=False)
        self.conv4 = nn.ConvTranspose2d(16, 8, 3, padding=1, output_padding=1, stride=2, bias=False)
        self.conv5 = nn.Conv2d(8, 1, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, n, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * n, g, h, w)
        conv0 = self.conv0(x)
        conv1 = self.conv1(conv0)
        x = conv1 + self.conv3(self.conv2(conv1))
        x = conv0 + self.conv4(x)
        return self.conv5(x).view(b, n, h, w)


class Evaluation(nn.Module):
    """Matching-cost evaluation: view weights, group correlation (G=8) and ``corr_conv1[l-1]`` per level."""

    G = 8

    def __init__(self):
        super().__init__()
        self.pixel_view_weight = PixelViewWeight(self.G)
        self.corr_conv1 = nn.ModuleList([CorrNet(self.G) for _ in LEVELS])


class ConvGRU(nn.Module):
    """ConvGRU with 3x3 dilation-2 gates: ``h (B, Ch, H, W), x (B, Cx, H, W) -> h'``."""

    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=2, dilation=2)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=2, dilation=2)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=2, dilation=2)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class Update(nn.Module):
    """GRU update and the three heads (depth classification, confidence, hidden-state init)."""

    def __init__(self, input_dim: int = 11, hidden_dim: int = 32, num_sample: int = 32, out_num_samples: int = 256,
                 radius: int = 4):
        super().__init__()
        self.out_num_samples = out_num_samples
        self.radius = radius
        self.gru = ConvGRU(hidden_dim, input_dim)
        self.depth_head = nn.Sequential(
            nn.Conv2d(hidden_dim, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(64, out_num_samples, 1))
        self.confidence_head = nn.Sequential(
            nn.Conv2d(hidden_dim, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 1))
        self.hidden_init_head = nn.Sequential(
            nn.Conv2d(num_sample, 64, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(64, hidden_dim, 1))

    def hidden_init(self, corr: torch.Tensor) -> torch.Tensor:
        """Level-3 cost ``(B, 32, H/8, W/8)`` -> ``h0 (B, 32, H/4, W/4)``."""
        h = F.interpolate(self.hidden_init_head(corr), scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.tanh(h)

    def confidence(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, 32, h, w)`` -> ``(B, 1, h, w)`` in (0, 1)."""
        return torch.sigmoid(self.confidence_head(hidden))

    def depth(self, hidden: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Classification + local regression: ``n = (sum_i i p_i / (1e-6 + sum_i p_i)) / 255`` over the 9 bins
        ``argmax-4 .. argmax+4`` (clamped to [0, 255], so border bins repeat as in the official code).

        Returns ``norm_depth (B, 1, h, w)``, ``argmax (B, 1, h, w)`` and ``window_prob (B, 9, h, w)``.
        """
        b, _, h, w = hidden.shape
        conv3, _, conv1a, _, conv1b = self.depth_head
        x = F.relu(conv3(hidden), inplace=True).flatten(2).transpose(1, 2)              # (B, h*w, 32)
        # the two 1x1 convs (32 -> 64 -> 256 bins) as matrix products with the channels innermost: softmax,
        # argmax and the window gather then run along a contiguous dimension (along dim 1 of NCHW they were ~10x
        # slower on CPU; the 1x1 convs went to PyTorch's im2col fallback); same values to float rounding
        x = F.relu(F.linear(x, conv1a.weight.flatten(1), conv1a.bias), inplace=True)
        logits = F.linear(x, conv1b.weight.flatten(1), conv1b.bias)                     # (B, h*w, 256)
        prob = torch.softmax(logits, dim=2)
        arg = torch.argmax(prob, dim=2, keepdim=True)                                   # (B, h*w, 1)
        steps = torch.arange(-self.radius, self.radius + 1, device=prob.device).view(1, 1, -1)
        index = torch.clamp(arg + steps, 0, self.out_num_samples - 1)                   # (B, h*w, 9)
        window = torch.gather(prob, 2, index).transpose(1, 2).reshape(b, -1, h, w)     # (B, 9, h, w)
        index = index.transpose(1, 2).reshape(b, -1, h, w)
        arg = arg.view(b, 1, h, w)
        index_f = index.to(prob.dtype)
        # accumulate in the official order (keeps the result bit-identical)
        regress = 0
        prob_sum = 1e-6
        for i in range(2 * self.radius + 1):
            regress = regress + index_f[:, i:i + 1] * window[:, i:i + 1]
            prob_sum = prob_sum + window[:, i:i + 1]
        norm = regress / prob_sum / (self.out_num_samples - 1.0)
        return {"norm_depth": norm, "argmax": arg, "window_prob": window}

    def forward(self, hidden: torch.Tensor, norm_depth: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        """One GRU step: ``h' = GRU(h, [n, corr])``."""
        return self.gru(hidden, torch.cat([norm_depth, corr], dim=1))


def convex_upsample(x: torch.Tensor, logits: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Convex upsampling: each output pixel is a softmax-weighted mix of the 3x3 neighbourhood of its
    low-resolution pixel (replication-padded).

    Args:
        x: ``(B, 1, h, w)``.
        logits: ``(B, 9*scale*scale, h, w)``, channel ``k*s*s + i*s + j`` = neighbour k (row-major 3x3),
            sub-pixel row i, column j.
    Returns:
        ``(B, 1, scale*h, scale*w)``.
    """
    b, _, h, w = x.shape
    weight = torch.softmax(logits.view(b, 1, 9, scale, scale, h, w), dim=2)
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), [3, 3], padding=0).view(b, -1, 9, 1, 1, h, w)
    up = torch.sum(patches * weight, dim=2)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, -1, scale * h, scale * w)


class IterMVSCore(nn.Module):
    """Everything after the feature network (the official ``iter_mvs`` submodule)."""

    num_sample = 32
    interval_scale = 1.0 / 256

    def __init__(self, iteration: int = 4, feature_dim: int = 32, hidden_dim: int = 32):
        super().__init__()
        self.iteration = iteration
        self.evaluation = Evaluation()
        self.update = Update(1 + 10, hidden_dim, self.num_sample)
        self.upsample = nn.Sequential(
            nn.Conv2d(feature_dim, 64, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(64, 16 * 9, 1, bias=False))

    # -- helpers -------------------------------------------------------------------------------------
    def _correlate(self, ref_feat: torch.Tensor, src_feats: Sequence[torch.Tensor],
                   rels: Sequence[torch.Tensor], rots: Sequence[torch.Tensor], depth: torch.Tensor,
                   view_weights: Optional[Sequence[torch.Tensor]]):
        """Weighted group correlation over the source views at one level.

        ``ref_feat (B, C, H, W)`` on the sample grid; ``depth (B, N, H, W)``. With ``view_weights`` None
        (the initial evaluation), computes them. Returns ``(corr (B, G, N, H, W), [w_v (B, 1, H, W)])``.
        """
        _, num, height, width = depth.shape
        corr_sum = 0
        weight_sum = 1e-5
        computed = []
        for v, src in enumerate(src_feats):
            hs, ws = src.shape[2:]
            with torch.no_grad():
                grid = project_depth_hypotheses(rels[v], depth, (hs, ws), grid_scale=(ws / width, hs / height),
                                                min_z=1e-2, rot_xyz=rots[v])
            corr = group_correlation(sample_source(src, grid, num, height, width), ref_feat, self.evaluation.G)
            if view_weights is None:
                w = self.evaluation.pixel_view_weight(corr)
                computed.append(w)
            else:
                w = view_weights[v]
            corr_sum = corr_sum + corr * w.unsqueeze(1)
            weight_sum = weight_sum + w.unsqueeze(1)
        return corr_sum / weight_sum, computed

    def prepare(self, ref_feature: Dict[int, torch.Tensor], src_features: Sequence[Dict[int, torch.Tensor]],
                ref_proj: Dict[int, torch.Tensor], src_projs: Sequence[Dict[int, torch.Tensor]],
                depth_min: torch.Tensor, depth_max: torch.Tensor) -> Dict[str, Any]:
        """Everything that stays constant over the updates: relative projections, rotated pixel grids,
        reference features resampled to the level-2 grid, inverse depth range (``(B, 1, 1, 1)``)."""
        batch, _, height, width = ref_feature[2].shape
        device = ref_feature[2].device
        rels = {l: [relative_projection(s[l], ref_proj[l]) for s in src_projs] for l in LEVELS}
        return {
            "ref": ref_feature, "src": src_features, "rels": rels, "size": (batch, height, width),
            "inv_dmin": (1.0 / depth_min.float()).view(batch, 1, 1, 1),
            "inv_dmax": (1.0 / depth_max.float()).view(batch, 1, 1, 1),
            "rot_init": [rotate_pixel_grid(r, height // 2, width // 2) for r in rels[3]],
            "rots": {l: [rotate_pixel_grid(r, height, width, (s[l].shape[3] / width, s[l].shape[2] / height))
                         for r, s in zip(rels[l], src_features)] for l in LEVELS},
            "ref_on_grid": {
                1: F.interpolate(ref_feature[1], scale_factor=0.5, mode="bilinear", align_corners=False),
                2: ref_feature[2],
                3: F.interpolate(ref_feature[3], scale_factor=2.0, mode="bilinear", align_corners=False)},
            "offsets": {l: torch.tensor(SAMPLE_OFFSETS[l], dtype=torch.float32, device=device).view(1, -1, 1, 1)
                        * self.interval_scale for l in LEVELS},
        }

    def initial_evaluation(self, ctx: Dict[str, Any]) -> Dict[str, Any]:
        """32 hypotheses uniform in inverse depth at level 3.

        Returns ``hypotheses (B, 32, H/8, W/8)``, ``cost (B, 32, H/8, W/8)``, ``view_weights_level3`` and the
        x2-upsampled ``view_weights`` (lists of ``(B, 1, h, w)``, frozen for all updates) and the
        soft-argmax depth ``depth_init_softargmax (B, 1, H/4, W/4)`` (used only by the training loss).
        """
        batch, height, width = ctx["size"]
        index = torch.arange(0, self.num_sample, 1, device=ctx["inv_dmin"].device).view(1, -1, 1, 1).float()
        norm_init = index.repeat(batch, 1, height // 2, width // 2) / (self.num_sample - 1)
        hyp = 1.0 / (ctx["inv_dmax"] + norm_init * (ctx["inv_dmin"] - ctx["inv_dmax"]))
        corr, weights3 = self._correlate(ctx["ref"][3], [s[3] for s in ctx["src"]], ctx["rels"][3], ctx["rot_init"],
                                         hyp, None)
        cost = self.evaluation.corr_conv1[-1](corr)
        prob = torch.softmax(cost, dim=1)
        idx = torch.sum(index * prob, dim=1, keepdim=True) / (self.num_sample - 1.0)
        soft = F.interpolate(depth_unnormalization(idx, ctx["inv_dmin"], ctx["inv_dmax"]), scale_factor=2.0,
                             mode="bilinear", align_corners=False)
        return {"hypotheses": hyp, "cost": cost, "view_weights_level3": weights3,
                "view_weights": [F.interpolate(w, scale_factor=2.0, mode="bilinear", align_corners=False)
                                 for w in weights3],
                "depth_init_softargmax": soft}

    def sample_correlation(self, ctx: Dict[str, Any], norm: torch.Tensor,
                           view_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Correlation fed to one update: ``norm (B, 1, H/4, W/4)`` -> ``(B, 10, H/4, W/4)`` (channels 0-3
        level 1, 4-7 level 2, 8-9 level 3; the current estimate itself is not sampled)."""
        corrs = []
        for l in LEVELS:
            sample = depth_unnormalization(torch.clamp(norm + ctx["offsets"][l], min=0, max=1),
                                           ctx["inv_dmin"], ctx["inv_dmax"])
            c, _ = self._correlate(ctx["ref_on_grid"][l], [s[l] for s in ctx["src"]], ctx["rels"][l],
                                   ctx["rots"][l], sample, view_weights)
            corrs.append(self.evaluation.corr_conv1[l - 1](c))
        return torch.cat(corrs, dim=1)

    def forward(self, ref_feature: Dict[int, torch.Tensor], src_features: Sequence[Dict[int, torch.Tensor]],
                ref_proj: Dict[int, torch.Tensor], src_projs: Sequence[Dict[int, torch.Tensor]],
                depth_min: torch.Tensor, depth_max: torch.Tensor,
                intermediates: bool = False) -> Dict[str, Any]:
        """
        Args:
            ref_feature: level -> ``(B, C_l, H_l, W_l)`` reference features (levels 1, 2, 3).
            src_features: per source view, level -> features.
            ref_proj, src_projs: level -> ``(B, 4, 4)`` float32 projection matrices at that level.
            depth_min, depth_max: ``(B,)`` metres.
            intermediates: also return every stage the conformance fixture stores.
        Returns:
            ``depth (B, 1, 4h, 4w)``, ``confidence (B, 1, 4h, 4w)`` (h, w = level-2 size), ``norm_depth``
            and ``confidence_lowres (B, 1, h, w)``, plus intermediates on request.
        """
        ctx = self.prepare(ref_feature, src_features, ref_proj, src_projs, depth_min, depth_max)
        up_logits = self.upsample(ref_feature[2])
        init = self.initial_evaluation(ctx)
        view_weights = init["view_weights"]
        hidden = hidden_init = self.update.hidden_init(init["cost"])
        head = self.update.depth(hidden)
        norm = head["norm_depth"]
        trace = {"norm": [norm], "argmax": [head["argmax"]], "window": [head["window_prob"]], "corr": []}
        for _ in range(self.iteration):
            corr = self.sample_correlation(ctx, norm, view_weights)
            hidden = self.update(hidden, norm, corr)
            head = self.update.depth(hidden)
            norm = head["norm_depth"]
            if intermediates:
                for key, val in (("corr", corr), ("norm", norm), ("argmax", head["argmax"]),
                                 ("window", head["window_prob"])):
                    trace[key].append(val)
        confidence = self.update.confidence(hidden)
        norm_up = convex_upsample(norm, up_logits)
        out: Dict[str, Any] = {
            "depth": depth_unnormalization(norm_up, ctx["inv_dmin"], ctx["inv_dmax"]),
            "confidence": F.interpolate(confidence, scale_factor=4.0, mode="bilinear", align_corners=False),
            "norm_depth": norm, "confidence_lowres": confidence}
        if intermediates:
            norms = torch.cat(trace["norm"], 1)
            out.update(init_depth_hypotheses=init["hypotheses"][:, :, 0, 0],
                       view_weights_level3=torch.cat(init["view_weights_level3"], 1),
                       view_weights=torch.cat(view_weights, 1), init_corr_cost=init["cost"],
                       depth_init_softargmax=init["depth_init_softargmax"], hidden_init=hidden_init,
                       norm_depth_iters=norms,
                       depth_iters=depth_unnormalization(norms, ctx["inv_dmin"], ctx["inv_dmax"]),
                       corr_iters=trace["corr"], prob_argmax_iters=torch.cat(trace["argmax"], 1),
                       prob_window9_iters=torch.stack(trace["window"], 1), hidden_final=hidden,
                       upsample_logits=up_logits)
        return out


class IterMVSNet(nn.Module):
    """The official ``Pipeline``: ``feature_net`` + ``iter_mvs`` (parameter names as in the checkpoints)."""

    def __init__(self, iteration: int = 4):
        super().__init__()
        self.feature_net = FeatureNet()
        self.iter_mvs = IterMVSCore(iteration=iteration, feature_dim=32, hidden_dim=32)

    def forward(self, images: torch.Tensor, proj: Dict[int, torch.Tensor], depth_min: torch.Tensor,
                depth_max: torch.Tensor, intermediates: bool = False) -> Dict[str, Any]:
        """
        Args:
            images: ``(B, V, 3, H, W)`` in [-1, 1], reference first; H, W multiples of 32.
            proj: level (1, 2, 3) -> ``(B, V, 4, 4)`` projection matrices at that level.
            depth_min, depth_max: ``(B,)``.
        """
        feats = [self.feature_net(images[:, v]) for v in range(images.shape[1])]
        projs = [{l: proj[l][:, v].float() for l in LEVELS} for v in range(images.shape[1])]
        out = self.iter_mvs(feats[0], feats[1:], projs[0], projs[1:], depth_min, depth_max, intermediates)
        if intermediates:
            out["ref_feature"] = feats[0]
        return out


# --------------------------------------------------------------------------------------------- estimator
class IterMVSEstimator(DepthEstimator):
    """IterMVS as a :class:`DepthEstimator` (official eval configuration by default).

    Depth: convex-upsampled, always inside ``[min_depth, max_depth]``. Confidence: the model's
    confidence head (trained to predict ``|n - n_gt| < 0.002``), the official fusion keeps ``> 0.3``.
    """

    name = "itermvs"
    preferred_measurement_frames = 2

    def __init__(self, checkpoint: Optional[str] = None, device: str = "auto", min_depth: float = 0.25,
                 max_depth: float = 20.0, iterations: int = 4, feature_cache: int = 16, compile: Any = "auto"):
        super().__init__(device=device, min_depth=min_depth, max_depth=max_depth)
        self.net = IterMVSNet(iteration=int(iterations))
        if checkpoint:
            load_official_weights(self.net, checkpoint, what="IterMVS")
        else:
            log.warning("IterMVS built without a checkpoint: random weights")
        self.net.eval().to(self.device)
        self.cache = LRUCache(feature_cache)
        use = resolve_compile(compile, self.device, pays_on_cpu=False)  # opt-in: see compiled.py
        self._feature_net = CompiledCall(self.net.feature_net, "IterMVS feature net", use)
        self._core = CompiledCall(self.net.iter_mvs, "IterMVS", use)

    def _features(self, frame: Frame) -> Dict[int, torch.Tensor]:
        def compute():
            img = network_image(frame, "signed")
            return self._feature_net(image_tensor(img, self.device))
        return self.cache.get_or_compute(frame.uid, compute)

    def _projections(self, frame: Frame) -> Dict[int, torch.Tensor]:
        return {l: torch.from_numpy(projection_matrix(frame.K, frame.T_world_cam, 0.5 ** l))[None].to(self.device)
                for l in LEVELS}

    def estimate(self, reference: Frame, measurements: Sequence[Frame], state: Any = None) -> DepthResult:
        check_frames(reference, measurements, 32, "IterMVS")
        t0 = time.perf_counter()
        with torch.inference_mode():
            feats = [self._features(f) for f in (reference, *measurements)]
            projs = [self._projections(f) for f in (reference, *measurements)]
            dmin = torch.tensor([self.min_depth], dtype=torch.float32, device=self.device)
            dmax = torch.tensor([self.max_depth], dtype=torch.float32, device=self.device)
            out = self._core(feats[0], feats[1:], projs[0], projs[1:], dmin, dmax)
            depth = out["depth"][0, 0].float().cpu().numpy()
            conf = out["confidence"][0, 0].float().cpu().numpy()
        depth = np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)
        conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0).astype(np.float32)
        return DepthResult(depth=depth, confidence=conf, K=reference.K.copy(), state=state,
                           info={"model": self.name, "ms": (time.perf_counter() - t0) * 1e3,
                                 "cache_hits": self.cache.hits, "compile": self._core.describe()})


def build(checkpoint: Optional[str] = None, device: str = "auto", **options) -> IterMVSEstimator:
    """Registry builder: ``options`` = ``min_depth``, ``max_depth``, ``iterations`` (4), ``feature_cache`` (16),
    ``compile`` ("auto": eager; true: torch.compile, see ``models/compiled.py``)."""
    return IterMVSEstimator(checkpoint=checkpoint, device=device, **options)
