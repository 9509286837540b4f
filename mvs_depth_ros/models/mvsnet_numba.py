"""Compiled (numba) CPU kernel of MVSNet's variance cost volume.

:meth:`mvs_depth_ros.models.mvsnet.MVSNet.variance_volume` in torch warps every source feature map onto every
plane with one ``grid_sample`` (a ``(C, D, h, w)`` volume per source, the channels of a sample 5 kB apart) and
then makes four more passes over the volumes. This kernel samples all channels of a pixel at once from
channels-last features and accumulates the variance in the same pass, plane by plane, planes split across
threads; it writes the channels-last ``(D, h, w, C)`` volume the oneDNN 3-D U-Net wants. Same float32 operations
in the same order as the torch path (bilinear weights and the FMA chain of torch's CPU ``grid_sample``, zeros
padding, ``align_corners=True``; the one-pass variance of the official code), so the values are equal
(the conformance test compares them bit for bit on this machine).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from .planesweep_numba import AVAILABLE, _fma32, _run, numba

log = logging.getLogger(__name__)


def _variance_kernel(feats, grids, d0, d1, out):  # pragma: no cover - compiled by numba
    """Planes ``d0..d1-1`` of the variance volume.

    feats: ``(V, h, w, C)`` float32, reference first; grids: ``(V-1, D, h, w, 2)`` float32 ``grid_sample``
    coordinates (``align_corners=True``) of the sources; out: ``(D, h, w, C)`` float32.
    """
    V, h, w, C = feats.shape
    f32 = np.float32
    one = f32(1.0)
    zero = f32(0.0)
    sx = f32((w - 1) / 2.0)
    sy = f32((h - 1) / 2.0)
    fw = f32(w)
    fh = f32(h)
    nv = f32(V)
    acc = np.empty(C, np.float32)
    acc2 = np.empty(C, np.float32)
    val = np.empty(C, np.float32)
    for d in range(d0, d1):
        for y in range(h):
            for x in range(w):
                ref = feats[0, y, x]
                for s in range(V - 1):
                    gx = grids[s, d, y, x, 0]
                    gy = grids[s, d, y, x, 1]
                    ix = (gx + one) * sx
                    iy = (gy + one) * sy
                    fx = np.floor(ix)
                    fy = np.floor(iy)
                    tx = ix - fx
                    ty = iy - fy
                    e = one - tx
                    sn = one - ty
                    nw = sn * e
                    ne = sn * tx
                    sw = ty * e
                    se = ty * tx
                    # corners inside the image (out-of-range corners read 0, as torch's zeros padding; the
                    # comparisons are false for NaN coordinates, which then give NaN through the weights)
                    inx0 = (fx > -one) & (fx < fw)
                    inx1 = (fx > -one - one) & (fx < fw - one)
                    iny0 = (fy > -one) & (fy < fh)
                    iny1 = (fy > -one - one) & (fy < fh - one)
                    x0 = int(fx) if inx0 else 0
                    x1 = int(fx) + 1 if inx1 else 0
                    y0 = int(fy) if iny0 else 0
                    y1 = int(fy) + 1 if iny1 else 0
                    src = feats[s + 1]
                    for c in range(C):
                        val[c] = (src[y0, x0, c] if (inx0 and iny0) else zero) * nw
                    if inx1 and iny0:
                        for c in range(C):
                            val[c] = _fma32(src[y0, x1, c], ne, val[c])
                    else:
                        for c in range(C):
                            val[c] = _fma32(zero, ne, val[c])
                    if inx0 and iny1:
                        for c in range(C):
                            val[c] = _fma32(src[y1, x0, c], sw, val[c])
                    else:
                        for c in range(C):
                            val[c] = _fma32(zero, sw, val[c])
                    if inx1 and iny1:
                        for c in range(C):
                            val[c] = _fma32(src[y1, x1, c], se, val[c])
                    else:
                        for c in range(C):
                            val[c] = _fma32(zero, se, val[c])
                    if s == 0:
                        for c in range(C):
                            v = val[c]
                            r = ref[c]
                            acc[c] = v + r
                            acc2[c] = v * v + r * r
                    else:
                        for c in range(C):
                            v = val[c]
                            acc[c] += v
                            acc2[c] += v * v
                o = out[d, y, x]
                for c in range(C):
                    m = acc[c] / nv
                    o[c] = acc2[c] / nv - m * m


if AVAILABLE:
    _variance_kernel = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")(_variance_kernel)


def variance_volume(feats: np.ndarray, grids: np.ndarray, threads: int = 1,
                    out: Optional[np.ndarray] = None) -> np.ndarray:
    """``(D, h, w, C)`` variance volume from ``feats (V, h, w, C)`` (channels-last, reference first) and
    ``grids (V-1, D, h, w, 2)`` (``align_corners=True``), planes split across ``threads`` threads."""
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    grids = np.ascontiguousarray(grids, dtype=np.float32)
    V, h, w, C = feats.shape
    D = grids.shape[1]
    if out is None:
        out = np.empty((D, h, w, C), np.float32)
    n = max(1, min(threads, D))
    bounds = [D * i // n for i in range(n + 1)]
    _run([(lambda a, b: (lambda: _variance_kernel(feats, grids, a, b, out)))(bounds[i], bounds[i + 1])
          for i in range(n)], n)
    return out


_warm: Optional[float] = None


def warm_up() -> float:
    """Compile (or load from numba's disk cache) the kernel on a tiny input; returns the seconds it took (once)."""
    global _warm
    if _warm is None:
        t0 = time.perf_counter()
        variance_volume(np.zeros((2, 2, 2, 1), np.float32), np.zeros((1, 1, 2, 2, 2), np.float32))
        _warm = time.perf_counter() - t0
        if _warm > 1.0:
            log.info("compiled the MVSNet variance kernel in %.1f s (cached on disk for the next runs)", _warm)
    return _warm
