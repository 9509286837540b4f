"""Training losses for multi-view depth networks, as pure functions over tensors.

Shapes follow kornia's style: images ``(B, 3, H, W)`` in [0, 1], depth ``(B, 1, H, W)`` metres (NaN or
<= 0 = unknown in ground truth), intrinsics ``(B, 3, 3)`` of the map they are used with (pixel-centre
coordinates, the same ``K`` the estimators use), poses ``(B, 4, 4)`` camera-to-world (OpenCV axes).
Multi-view inputs stack views on dim 1: images ``(B, V, 3, H, W)``, ``K (B, V, 3, 3)``, ``T (B, V, 4, 4)``,
reference first.

* :func:`multiscale_depth_l1` - supervised L1 on depth or inverse depth with validity masks, ground truth
  resized to each prediction scale with nearest neighbour (no depth invented across edges);
* :func:`warp_to_reference` - a source image warped into the reference view with the reference depth
  and the known relative pose (kornia back-projection/projection + ``grid_sample``);
* :func:`photometric_loss` - Monodepth2-style reconstruction: ``alpha (1 - SSIM) / 2 + (1 - alpha) L1``
  (kornia SSIM), per-pixel minimum over the sources, auto-masking of pixels that a source explains
  without any warping (static camera, objects moving with it);
* :func:`edge_aware_smoothness` - mean-normalised inverse depth smoothness weighted by image gradients
  (kornia's ``inverse_depth_smoothness_loss``);
* :func:`feature_metric_loss` - optional reconstruction in a feature space (cosine distance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import kornia
import torch
import torch.nn.functional as F
from kornia.geometry.depth import depth_to_3d_v2
from kornia.geometry.linalg import transform_points

__all__ = [
    "valid_depth_mask", "resize_depth_nearest", "depth_l1", "multiscale_depth_l1", "relative_pose",
    "warp_to_reference", "photometric_error", "PhotometricResult", "photometric_loss",
    "edge_aware_smoothness", "feature_metric_loss", "scale_intrinsics_t", "SelfSupervisedLoss",
    "SupervisedLoss",
]


# --------------------------------------------------------------------------------------- supervised
def valid_depth_mask(depth: torch.Tensor, min_depth: float = 0.0, max_depth: float = float("inf")) -> torch.Tensor:
    """``(B, 1, H, W)`` bool: finite, > 0 and inside ``[min_depth, max_depth]``."""
    return torch.isfinite(depth) & (depth > 0) & (depth >= min_depth) & (depth <= max_depth)


def resize_depth_nearest(depth: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``(B, 1, H, W)`` depth map (NaN kept) to ``size = (h, w)``."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode="nearest")


def depth_l1(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 0.0, max_depth: float = float("inf"),
             inverse: bool = False) -> torch.Tensor:
    """Mean L1 between ``pred (B, 1, h, w)`` and ``gt (B, 1, H, W)`` over valid ground-truth pixels.

    ``gt`` is resized to ``pred``'s size (nearest). ``inverse=True`` compares ``1/depth`` (the quantity
    plane-sweep networks regress; errors far away count less). Returns 0 (with a graph) when no pixel
    is valid.
    """
    gt = resize_depth_nearest(gt, pred.shape[-2:])
    mask = valid_depth_mask(gt, min_depth, max_depth)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    p, g = pred[mask], gt[mask]
    if inverse:
        p, g = 1.0 / p.clamp_min(1e-6), 1.0 / g
    return (p - g).abs().mean()


def multiscale_depth_l1(preds: Sequence[torch.Tensor], gt: torch.Tensor, weights: Optional[Sequence[float]] = None,
                        min_depth: float = 0.0, max_depth: float = float("inf"), inverse: bool = False) -> torch.Tensor:
    """``sum_i w_i * depth_l1(preds[i], gt)``; ``weights`` default to 1 for every scale."""
    if weights is None:
        weights = [1.0] * len(preds)
    if len(weights) != len(preds):
        raise ValueError(f"{len(weights)} weights for {len(preds)} predictions")
    total = 0.0
    for w, p in zip(weights, preds):
        total = total + w * depth_l1(p, gt, min_depth, max_depth, inverse)
    return total


# ------------------------------------------------------------------------------------------ warping
def relative_pose(T_world_ref: torch.Tensor, T_world_src: torch.Tensor) -> torch.Tensor:
    """``T_src_ref = inv(T_world_src) @ T_world_ref`` (maps reference-camera points to the source camera)."""
    return torch.linalg.solve(T_world_src, T_world_ref)


def scale_intrinsics_t(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """``K (..., 3, 3)`` of a map stretched by ``sx, sy`` (the package's pixel-corner convention)."""
    S = torch.diag(torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device))
    return S @ K


def warp_to_reference(src: torch.Tensor, depth_ref: torch.Tensor, K_ref: torch.Tensor, K_src: torch.Tensor,
                      T_src_ref: torch.Tensor, min_z: float = 1e-3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample ``src (B, C, Hs, Ws)`` at the projections of the reference pixels.

    Args:
        src: source image or feature map.
        depth_ref: ``(B, 1, H, W)`` reference depth (non-finite or <= 0: invalid).
        K_ref: ``(B, 3, 3)`` intrinsics of the ``H x W`` reference grid.
        K_src: ``(B, 3, 3)`` intrinsics of the ``Hs x Ws`` source map.
        T_src_ref: ``(B, 4, 4)`` reference camera -> source camera.
    Returns:
        ``warped (B, C, H, W)`` (bilinear, zeros outside) and ``valid (B, 1, H, W)`` bool: depth valid, in
        front of the source camera and inside the source map.
    """
    b, _, h, w = depth_ref.shape
    hs, ws = src.shape[-2:]
    dvalid = torch.isfinite(depth_ref) & (depth_ref > 0)
    depth = torch.where(dvalid, depth_ref, torch.ones_like(depth_ref))
    pts = depth_to_3d_v2(depth[:, 0], K_ref.to(depth.dtype))                       # (B, H, W, 3)
    pts = transform_points(T_src_ref.to(depth.dtype), pts.reshape(b, h * w, 3))  # (B, HW, 3)
    z = pts[..., 2:3]
    in_front = z > min_z
    uv = kornia.geometry.camera.perspective.project_points(
        torch.where(in_front, pts, torch.ones_like(pts)), K_src.to(depth.dtype)[:, None])   # (B, HW, 2)
    grid = kornia.geometry.conversions.normalize_pixel_coordinates(uv, hs, ws).view(b, h, w, 2)
    warped = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = (grid.abs() <= 1.0).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    valid = dvalid & in_front.view(b, 1, h, w) & inside
    return warped, valid


# --------------------------------------------------------------------------------------- photometric
def photometric_error(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.85, window: int = 3) -> torch.Tensor:
    """Per-pixel ``alpha (1 - SSIM) / 2 + (1 - alpha) |a - b|``, channel mean: ``(B, C, H, W) -> (B, 1, H, W)``."""
    l1 = (a - b).abs().mean(1, keepdim=True)
    if alpha <= 0:
        return l1
    ssim = kornia.metrics.ssim(a, b, window, max_val=1.0).mean(1, keepdim=True)
    return alpha * (1.0 - ssim).clamp(0, 2) / 2.0 + (1.0 - alpha) * l1


@dataclass
class PhotometricResult:
    """``loss`` scalar; ``error (B, 1, H, W)`` per-pixel error that was averaged; ``reprojection (B, 1, H, W)``
    min over sources of the warped error (inf where no source sees the pixel); ``automask (B, 1, H, W)``
    True where the warped error won (the pixels that carry gradient)."""

    loss: torch.Tensor
    error: torch.Tensor
    reprojection: torch.Tensor
    automask: torch.Tensor


def photometric_loss(images: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T_world_cam: torch.Tensor,
                     alpha: float = 0.85, automask: bool = True, pixel_mask: Optional[torch.Tensor] = None
                     ) -> PhotometricResult:
    """Self-supervised reconstruction loss of the reference view (view 0) from the sources (views 1..).

    Args:
        images: ``(B, V, 3, H, W)`` in [0, 1], reference first.
        depth: ``(B, 1, H, W)`` predicted reference depth (lower resolutions are upsampled bilinearly).
        K: ``(B, V, 3, 3)`` intrinsics of the ``H x W`` images.
        T_world_cam: ``(B, V, 4, 4)`` camera-to-world poses.
        automask: Monodepth2 auto-masking: each pixel's error is ``min(min_s reprojection_s,
            min_s identity_s)`` where ``identity_s`` compares the *unwarped* source with the reference, so
            pixels a source explains without motion (static camera, objects moving with the camera,
            textureless regions) contribute a depth-independent constant instead of a wrong gradient.
            Pixels that no source sees also fall back to the identity error, so pushing points out of
            view can never lower the loss.
        pixel_mask: optional ``(B, 1, H, W)`` bool of pixels to average over (default all).
    """
    b, v, _, h, w = images.shape
    if v < 2:
        raise ValueError("photometric_loss needs at least one source view")
    if depth.shape[-2:] != (h, w):
        depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
    ref = images[:, 0]
    reproj, ident = [], []
    for s in range(1, v):
        warped, valid = warp_to_reference(images[:, s], depth, K[:, 0], K[:, s],
                                          relative_pose(T_world_cam[:, 0], T_world_cam[:, s]))
        err = photometric_error(warped, ref, alpha)
        reproj.append(torch.where(valid, err, torch.full_like(err, float("inf"))))
        if automask:
            ident.append(photometric_error(images[:, s], ref, alpha))
    reprojection = torch.cat(reproj, 1).min(1, keepdim=True)[0]
    if automask:
        identity = torch.cat(ident, 1).min(1, keepdim=True)[0]
        won = reprojection < identity
        error = torch.where(won, reprojection, identity)
    else:
        won = torch.isfinite(reprojection)
        error = torch.where(won, reprojection, torch.zeros_like(reprojection))
    mask = won if not automask else torch.ones_like(won)
    if pixel_mask is not None:
        mask = mask & pixel_mask
    n = mask.sum().clamp_min(1)
    loss = (error * mask).sum() / n
    return PhotometricResult(loss=loss, error=error, reprojection=reprojection, automask=won)


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of mean-normalised inverse depth (Monodepth2): ``depth (B, 1, h, w)``,
    ``image (B, 3, H, W)`` resized to ``h x w`` (area) when needed."""
    if image.shape[-2:] != depth.shape[-2:]:
        image = F.interpolate(image, size=depth.shape[-2:], mode="area")
    disp = 1.0 / depth.clamp_min(1e-6)
    disp = disp / disp.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return kornia.losses.inverse_depth_smoothness_loss(disp, image.to(disp.dtype))


def feature_metric_loss(ref_feature: torch.Tensor, src_features: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                        T_world_cam: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Feature-metric reconstruction: ``1 - cos`` between reference features and source features warped
    with the predicted depth, min over sources, mean over pixels some source sees.

    Args:
        ref_feature: ``(B, C, h, w)``; src_features: ``(B, S, C, h, w)`` (same size).
        depth: ``(B, 1, H', W')`` resized bilinearly to ``h x w``.
        K: ``(B, V, 3, 3)`` intrinsics of the images of size ``image_size = (H, W)``; rescaled to ``h x w``.
        T_world_cam: ``(B, V, 4, 4)``.
    """
    b, s, c, h, w = src_features.shape
    if depth.shape[-2:] != (h, w):
        depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
    Ks = scale_intrinsics_t(K, w / image_size[1], h / image_size[0])
    errs = []
    for i in range(s):
        warped, valid = warp_to_reference(src_features[:, i], depth, Ks[:, 0], Ks[:, i + 1],
                                          relative_pose(T_world_cam[:, 0], T_world_cam[:, i + 1]))
        err = 1.0 - F.cosine_similarity(warped, ref_feature, dim=1, eps=1e-6).unsqueeze(1)
        errs.append(torch.where(valid, err, torch.full_like(err, float("inf"))))
    err = torch.cat(errs, 1).min(1, keepdim=True)[0]
    ok = torch.isfinite(err)
    return torch.where(ok, err, torch.zeros_like(err)).sum() / ok.sum().clamp_min(1)


# ----------------------------------------------------------------------------------- composite losses
class SupervisedLoss:
    """Multi-scale L1 (depth or inverse depth) against ground truth, each scale weighted."""

    def __init__(self, min_depth: float, max_depth: float, inverse: bool = True,
                 weights: Optional[Sequence[float]] = None):
        self.min_depth, self.max_depth, self.inverse, self.weights = min_depth, max_depth, inverse, weights

    def __call__(self, depths: Sequence[torch.Tensor], batch: Dict[str, torch.Tensor], **_) -> Dict[str, torch.Tensor]:
        gt = batch.get("depth_gt")
        if gt is None:
            raise ValueError("supervised loss needs ground-truth depth (the data source has none): use "
                             "--loss self-supervised")
        w = self.weights if self.weights is not None else [0.5 ** i for i in range(len(depths))]
        loss = multiscale_depth_l1(depths, gt, w[:len(depths)], self.min_depth, self.max_depth, self.inverse)
        return {"loss": loss, "l1": loss.detach()}


class SelfSupervisedLoss:
    """Photometric (every scale upsampled to full resolution, Monodepth2) + edge-aware smoothness
    (+ optional feature-metric term on features the caller passes)."""

    def __init__(self, alpha: float = 0.85, smoothness: float = 1e-3, automask: bool = True,
                 feature_metric: float = 0.0, weights: Optional[Sequence[float]] = None):
        self.alpha, self.smoothness, self.automask = alpha, smoothness, automask
        self.feature_metric, self.weights = feature_metric, weights

    def __call__(self, depths: Sequence[torch.Tensor], batch: Dict[str, torch.Tensor],
                 features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        images, K, T = batch["images"], batch["K"], batch["T_world_cam"]
        w = self.weights if self.weights is not None else [1.0] * len(depths)
        photo = 0.0
        smooth = 0.0
        for i, (wi, d) in enumerate(zip(w, depths)):
            d = d.float()
            photo = photo + wi * photometric_loss(images, d, K, T, self.alpha, self.automask).loss
            smooth = smooth + wi * edge_aware_smoothness(d, images[:, 0]) / (2 ** i)
        total = photo + self.smoothness * smooth
        out = {"photometric": photo.detach(), "smoothness": smooth.detach()}
        if self.feature_metric > 0 and features is not None:
            fm = feature_metric_loss(features[0], features[1], depths[0].float(), K, T, tuple(images.shape[-2:]))
            total = total + self.feature_metric * fm
            out["feature_metric"] = fm.detach()
        out["loss"] = total
        return out
