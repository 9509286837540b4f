"""The fast inference paths of the shared warping and 3-D convolution helpers give the plain computation's values:
warping.warp_correlation (PatchmatchNet, DVMVS) and mvs_common.conv3d_fast / conv_bn_relu_3d (MVSNet, PatchmatchNet).
"""
import pytest
import torch
import torch.nn as nn

from mvs_depth_ros.models.mvs_common import ConvBnReLU3D, conv3d_fast, conv_bn_relu_3d
from mvs_depth_ros.models.warping import group_correlation, sample_source, stack_views, warp_correlation


def _inputs(n=2, c=8, d=5, h=6, w=7, hs=5, ws=9):
    g = torch.Generator().manual_seed(0)
    src = [torch.randn(1, c, hs, ws, generator=g) for _ in range(n)]
    ref = torch.randn(1, c, h, w, generator=g)
    grids = torch.rand(n, d, h, w, 2, generator=g) * 2.4 - 1.2          # some samples outside the map
    return src, ref, grids


def _plain(src, ref, grids, groups):
    n, d, h, w = grids.shape[:4]
    warped = sample_source(torch.cat(src), grids.reshape(n, d * h, w, 2), d, h, w)
    return group_correlation(warped, ref.expand(n, -1, -1, -1), groups)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("planes_per_call", [1, 2, 8])
def test_warp_correlation_inference_path_equals_the_plain_computation(groups, planes_per_call):
    src, ref, grids = _inputs()
    expected = _plain(src, ref, grids, groups)
    with torch.inference_mode():
        fast = warp_correlation(stack_views(src), ref, grids, groups, planes_per_call)
    assert fast.shape == (2, groups, 5, 6, 7)
    # the channel sum's order can depend on the chunk's shape: float rounding
    torch.testing.assert_close(fast, expected, rtol=1e-6, atol=1e-6)
    # the reference repeated per view (a batch of keyframes) gives the same as broadcasting it
    with torch.inference_mode():
        repeated = warp_correlation(stack_views(src), ref.repeat(2, 1, 1, 1), grids, groups, planes_per_call)
    assert torch.equal(repeated, fast)


def test_warp_correlation_grad_path_is_differentiable_and_equal():
    src, ref, grids = _inputs()
    ref.requires_grad_(True)
    out = warp_correlation(stack_views(src), ref, grids, 1, 2)
    assert out.requires_grad
    with torch.inference_mode():
        fast = warp_correlation(stack_views(src), ref, grids, 1, 2)
    assert torch.equal(out.detach(), fast)
    out.sum().backward()
    assert ref.grad is not None and ref.grad.abs().sum() > 0


def test_conv3d_fast_matches_the_module():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 6, 7, generator=g)
    block = ConvBnReLU3D(4, 16, kernel_size=1, stride=1, pad=0).eval()
    with torch.no_grad():
        for p in (block.bn.running_mean, block.bn.weight, block.bn.bias):
            p.copy_(torch.randn(p.shape, generator=g))
        block.bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
    head = nn.Conv3d(16, 1, kernel_size=1)
    big = ConvBnReLU3D(4, 8).eval()                      # 3x3x3: the oneDNN path
    with torch.inference_mode():
        torch.testing.assert_close(conv_bn_relu_3d(block, x), block(x), rtol=1e-5, atol=1e-5)
        y = block(x)
        torch.testing.assert_close(conv3d_fast(head, y), head(y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv_bn_relu_3d(big, x), big(x), rtol=1e-5, atol=1e-5)
