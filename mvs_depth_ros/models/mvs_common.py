"""Blocks and glue shared by the learned MVS models (PatchmatchNet, IterMVS, ...).

* convolution blocks whose parameter names (``conv``, ``bn``) match the official checkpoints, and their fast
  CPU inference path for 3-D convolutions (:func:`conv3d_fast`, :func:`conv_bn_relu_3d`: oneDNN, folded batch norm);
* official image normalisation and resizing, projection matrices built from :class:`Frame` poses;
* a bounded LRU cache for per-frame features keyed by ``Frame.uid``;
* checkpoint loading into a module (strict, with readable errors).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.frame import Frame
from .checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strict


# ----------------------------------------------------------------------------------------------- blocks
class ConvBnReLU(nn.Module):
    """``relu(bn(conv2d(x)))``, conv without bias. ``(B, Cin, H, W) -> (B, Cout, H/stride, W/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvBn(nn.Module):
    """``bn(conv2d(x))``, conv without bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvReLU(nn.Module):
    """``relu(conv2d(x))``, conv without bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                              dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class ConvBnReLU3D(nn.Module):
    """``relu(bn3d(conv3d(x)))``, conv without bias. ``(B, Cin, D, H, W) -> (B, Cout, D', H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def onednn_ok(conv: nn.Module, x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and torch.backends.mkldnn.is_available())


#: oneDNN convolutions with fused post-ops (the ops torch.compile's CPU backend uses) are in this torch build
ONEDNN_POINTWISE = (hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                    and hasattr(torch.ops.mkldnn, "_convolution_transpose_pointwise"))


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` made dense in its own memory format (channels-last volumes stay channels-last)."""
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def conv3d_fast(conv: nn.Conv3d, x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
    """``conv(x)`` (then ReLU if ``relu``); on CPU without autograd (and outside ``torch.compile``) PyTorch's dispatch
    is bypassed, since for small volumes and 1x1x1 kernels it picks its reference kernel (``slow_conv3d``): a 1x1x1
    convolution (stride 1, no groups) is one matrix product over the channels (PatchmatchNet's 1x1x1 nets: ~5x
    faster than ``slow_conv3d``, and than oneDNN's kernel, which was slower still), any other kernel goes to oneDNN
    (MVSNet's U-Net: 3-17x faster), in the input's memory format (channels-last volumes stay so) and with the ReLU
    as a oneDNN post-op; measured on a 2-vCPU AMD EPYC, torch 2.13. Values agree to ~3e-6 (float reassociation).
    ``weight``/``bias`` replace the conv's own."""
    if not onednn_ok(conv, x):
        out = conv(x)
        return F.relu(out, inplace=True) if relu else out
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    if weight.shape[2:] == (1, 1, 1) and conv.stride == (1, 1, 1) and conv.padding == (0, 0, 0) and conv.groups == 1:
        b, c = x.shape[:2]
        cout = weight.shape[0]
        flat = x.reshape(b, c, -1)
        w = weight.view(1, cout, c).expand(b, cout, c)
        if bias is None:
            out = torch.bmm(w, flat)
        else:
            out = torch.baddbmm(bias.view(1, cout, 1).expand(b, cout, flat.shape[2]), w, flat)
        out = out.view(b, cout, *x.shape[2:])
        return F.relu(out, inplace=True) if relu else out
    if relu and ONEDNN_POINTWISE:
        return torch.ops.mkldnn._convolution_pointwise(dense(x), weight, bias, list(conv.padding), list(conv.stride),
                                                       list(conv.dilation), conv.groups, "relu", [], "")
    out = torch.mkldnn_convolution(dense(x), weight, bias, list(conv.padding), list(conv.stride),
                                   list(conv.dilation), conv.groups)
    return F.relu(out, inplace=True) if relu else out


def _folded_bn(bn: nn.Module, weight: torch.Tensor, out_dim: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of a convolution followed by the eval-mode batch norm ``bn`` folded into it (output channels
    along ``out_dim`` of ``weight``), or None where it cannot be folded (training, no running stats or affine)."""
    if bn.training or bn.running_var is None or not bn.affine:
        return None
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    return weight * scale.view(shape), bn.bias - bn.running_mean * scale


def conv_bn_relu_3d(block: ConvBnReLU3D, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``; on the fast path of :func:`conv3d_fast` the (eval-mode) batch norm is folded into the
    convolution's weights and bias and the ReLU fused, saving two passes over the volume (same values to float
    rounding)."""
    folded = _folded_bn(block.bn, block.conv.weight, 0) if onednn_ok(block.conv, x) else None
    if folded is not None:
        return conv3d_fast(block.conv, x, *folded, relu=True)
    return F.relu(block.bn(conv3d_fast(block.conv, x)), inplace=True)


def deconv_bn_relu_3d(deconv: nn.ConvTranspose3d, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(deconv(x)))``; on CPU without autograd one oneDNN transposed convolution with the (eval-mode) batch
    norm folded into its weights and the ReLU fused (PyTorch's own CPU kernel for it is ``slow_conv_transpose3d``);
    the same values to float rounding."""
    folded = _folded_bn(bn, deconv.weight, 1) if (ONEDNN_POINTWISE and onednn_ok(deconv, x)
                                                  and deconv.bias is None) else None   # (in, out, k, k, k)
    if folded is None:
        return F.relu(bn(deconv(x)), inplace=True)
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        dense(x), folded[0], folded[1], list(deconv.padding), list(deconv.output_padding), list(deconv.stride),
        list(deconv.dilation), deconv.groups, "relu", [], "")


# ------------------------------------------------------------------------------------------ input glue
def normalize_and_resize(image: np.ndarray, size: Optional[Tuple[int, int]], mode: str) -> np.ndarray:
    """The official MVS loaders' image path, bit for bit: ``cv2.resize(INTER_LINEAR)`` of a *float*
    image (never rounded back to uint8) and the model's normalisation.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        size: ``(width, height)`` target, or None to keep the size.
        mode: ``"unit"``: ``x / 255`` (PatchmatchNet; the fixture shows the float image is resized
            *before* the division); ``"signed"``: ``2 * x / 255 - 1`` then resize (IterMVS).
    Returns:
        ``(h, w, 3)`` float32.
    """
    if mode not in ("unit", "signed"):
        raise ValueError(f"mode must be 'unit' or 'signed', got {mode!r}")
    x = np.asarray(image, dtype=np.float32)
    resize = size is not None and (x.shape[1], x.shape[0]) != (int(size[0]), int(size[1]))
    if mode == "signed":
        x = np.float32(2.0) * x / np.float32(255.0) - np.float32(1.0)
    if resize:
        x = cv2.resize(x, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
    if mode == "unit":
        x = x / np.float32(255.0)
    return x


def network_image(frame: Frame, mode: str) -> np.ndarray:
    """The normalised ``(H, W, 3)`` float32 network input of a frame at its own size.

    When the frame carries ``image_float`` (the un-rounded float32 output of the bilinear resize, 0-255)
    it is used instead of the uint8 ``image``: the official loaders
    never round the resized image, and textureless regions are sensitive to that half-grey-level.
    """
    src = frame.image_float
    if src is None:
        return normalize_and_resize(frame.image, None, mode)
    x = np.asarray(src, dtype=np.float32)
    if mode == "signed":
        return np.float32(2.0) * x / np.float32(255.0) - np.float32(1.0)
    return x / np.float32(255.0)


def image_tensor(image_hwc: np.ndarray, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """``(H, W, 3)`` float32 -> ``(1, 3, H, W)``.

    ``channels_last=True`` keeps the HWC memory (a permuted view), the layout the IterMVS loader hands
    to the network (a transposed numpy stack), so CPU convolutions take the same path as the official
    run; ``False`` gives a contiguous NCHW tensor (the PatchmatchNet fixture's layout).
    """
    t = torch.from_numpy(np.ascontiguousarray(image_hwc, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    if not channels_last:
        t = t.contiguous()
    return t.to(device)


def world_to_camera(T_world_cam: np.ndarray) -> np.ndarray:
    """``inv(T_world_cam)`` (float64) with an exact last row: the MVSNet ``cam.txt`` extrinsics."""
    E = np.linalg.inv(np.asarray(T_world_cam, dtype=np.float64))
    E[3] = (0.0, 0.0, 0.0, 1.0)
    return E


def projection_matrix(K: np.ndarray, T_world_cam: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``[[diag(s, s, 1) K @ E[:3, :4]], [0, 0, 0, 1]]`` as float32 (``E`` = world-to-camera).

    ``scale`` rescales the first two rows of ``K`` (pixel-corner convention), e.g. ``1/8`` for a
    feature map at 1/8 resolution. Computed in float64, then cast.
    """
    K_l = np.array(K, dtype=np.float64, copy=True)
    K_l[:2] *= scale
    P = world_to_camera(T_world_cam)
    P[:3, :4] = K_l @ P[:3, :4]
    return P.astype(np.float32)


def check_frames(reference: Frame, measurements: Sequence[Frame], multiple: int, model: str) -> None:
    """Readable errors for inputs a model cannot take (missing poses, sizes, no measurement frame)."""
    if not measurements:
        raise ValueError(f"{model}: needs at least one measurement frame")
    for f in (reference, *measurements):
        if not f.has_pose:
            raise ValueError(f"{model}: frame {f.name!r} has no valid camera-to-world pose")
        if (f.width, f.height) != (reference.width, reference.height):
            raise ValueError(f"{model}: frame {f.name!r} is {f.width}x{f.height}, reference is "
                             f"{reference.width}x{reference.height}; resize all frames to one working size")
    if reference.width % multiple or reference.height % multiple:
        raise ValueError(f"{model}: width and height must be multiples of {multiple}, got "
                         f"{reference.width}x{reference.height} (e.g. use 320x256 or 640x480)")


# --------------------------------------------------------------------------------------------- caching
class LRUCache:
    """A small bounded LRU map (per-frame features keyed by ``Frame.uid``). Never changes results:
    values must be pure functions of the key's frame."""

    def __init__(self, capacity: int = 16):
        self.capacity = max(0, int(capacity))
        self._data: "OrderedDict[Hashable, Any]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        value = compute()
        if self.capacity:
            self._data[key] = value
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# ------------------------------------------------------------------------------------------ checkpoints
def load_official_weights(module: nn.Module, checkpoint: str, what: str) -> None:
    """Load a published checkpoint (``{'model': state_dict}`` with an optional ``module.`` prefix) into
    ``module`` with ``strict=True``; mismatches raise :class:`CheckpointError` listing every key."""
    state = extract_state_dict(load_checkpoint(checkpoint))
    load_state_dict_strict(module, state, what=what)
