"""Compiled (numba) CPU kernels of the plane sweep: the semi-global aggregation and the ZNCC cost volume.

* :func:`scan_rows`: the same recurrence and the same float32 operations, in the same order, as the torch
  reference :func:`mvs_depth_ros.models.planesweep.sgm_scan_rows` (which stays the implementation on other
  devices and where numba is missing), but one compiled loop over rows, planes and pixels instead of ~10 small
  torch ops per row: the per-op overhead was the larger part of the aggregation's time on CPU.
* :func:`view_cost`: plane-sweep warp + windowed ZNCC of the measurement views fused plane by plane (the torch
  path materialises a dozen full ``(D, h, w)`` temporaries per view), planes split across threads; the values
  equal the torch path's to ~1e-6 (torch's vectorised sqrt is not correctly rounded, so not bit for bit).

The machine code is cached on disk (``cache=True``: in ``__pycache__`` next to this file, or numba's cache
directory where the package is not writable), so only the first call on a machine pays the compilation
(a few seconds; loading from the cache ~0.1 s); :func:`warm_up`, called when the estimator is built, triggers it.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

try:
    import numba
except ImportError:                                  # pragma: no cover - numba is a dependency (setup.py)
    numba = None

#: True when the compiled kernel can be used
AVAILABLE = numba is not None


def _scan_rows_kernel(cost, pen, shifts, p1, k0, k1, out_dn, out_up):  # pragma: no cover - compiled by numba
    """Add the SGM path costs of row scans to ``out_dn`` (downward passes) and ``out_up`` (upward).

    cost: ``(D, S, N)`` float32. pen: ``(2P, S, N)`` float32, the large-jump penalty of pass ``k`` for entering
    row ``r`` (``k < P``: downwards from row ``r - 1``, shift ``shifts[k]``; ``k >= P``: upwards from ``r + 1``,
    shift ``shifts[k - P]``). Pixel ``n`` follows pixel ``n - shift`` of the previous row; a path entering from
    outside the row starts fresh. Runs passes ``k0..k1-1``, added in the order of ``k`` (as the torch reference
    sums): downward and upward passes write different arrays, so two threads can run them.
    """
    D, S, N = cost.shape
    P = shifts.shape[0]
    inf = np.float32(np.inf)
    p1f = np.float32(p1)
    # previous and current row of a pass, with an inf plane on each side (the +-1 plane transitions)
    prev = np.empty((D + 2, N), np.float32)
    cur = np.empty((D + 2, N), np.float32)
    m = np.empty(N, np.float32)
    for k in range(k0, k1):
        sh = shifts[k % P]
        down = k < P
        out = out_dn if down else out_up
        # pixels lo..hi-1 follow pixel n - sh of the previous row (sh in -1, 0, 1; offsets written as selects of
        # constants so that the compiler knows they are non-negative and vectorises without index checks)
        lo = 1 if sh > 0 else 0
        qo = 1 if sh < 0 else 0
        L = N - lo - qo
        hi = lo + L
        for n in range(N):
            prev[0, n] = inf
            prev[D + 1, n] = inf
            cur[0, n] = inf
            cur[D + 1, n] = inf
        for step in range(S):
            r = step if down else S - 1 - step
            if step == 0:
                for d in range(D):
                    c = cost[d, r]
                    cn = cur[d + 1]
                    for n in range(N):
                        cn[n] = c[n]
            else:
                for n in range(N):
                    m[n] = prev[1, n]
                for d in range(2, D + 1):
                    pv = prev[d]
                    for n in range(N):
                        v = pv[n]
                        w = m[n]
                        m[n] = v if v < w else w
                pr = pen[k, r]
                for d in range(1, D + 1):
                    c = cost[d - 1, r]
                    cn = cur[d]
                    for n in range(lo):
                        cn[n] = c[n]
                    for n in range(hi, N):
                        cn[n] = c[n]
                    pa = prev[d - 1]
                    pb = prev[d + 1]
                    pc = prev[d]
                    for i in range(L):
                        q = i + qo
                        n = i + lo
                        a = pa[q]
                        b = pb[q]
                        best = (a if a < b else b) + p1f
                        v = pc[q]
                        best = v if v < best else best
                        mi = m[q]
                        v = mi + pr[n]
                        best = v if v < best else best
                        cn[n] = (best - mi) + c[n]
            for d in range(D):
                o = out[d, r]
                cn = cur[d + 1]
                for n in range(N):
                    o[n] += cn[n]
            prev, cur = cur, prev


if AVAILABLE:
    _scan_rows_kernel = numba.njit(cache=True, nogil=True, fastmath=False)(_scan_rows_kernel)


def _average_kernel(total, count, neutral, d0, d1):  # pragma: no cover - compiled by numba
    """Planes ``d0..d1-1``: ``total / count`` where ``count > 0``, else ``neutral`` (in place in ``total``)."""
    nf = np.float32(neutral)
    one = np.float32(1.0)
    for d in range(d0, d1):
        t = total[d].ravel()
        c = count[d].ravel()
        for i in range(t.shape[0]):
            n = c[i]
            t[i] = t[i] / (n if n > one else one) if n > 0 else nf


if AVAILABLE:
    _average_kernel = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")(_average_kernel)


def _fma32(x, y, z):  # pragma: no cover - compiled by numba
    """float32 ``x * y + z`` rounded once (as torch's addcmul and grid_sample kernels compute it with FMA
    instructions): the float64 product of two float32 is exact."""
    return np.float32(np.float64(x) * np.float64(y) + np.float64(z))


if AVAILABLE:
    _fma32 = numba.njit(cache=True, nogil=True, inline="always")(_fma32)


def _zncc_view_kernel(ref, ref_mu, ref_sigma, src, a, b, depths, d0, d1, window, eps, total, count):  # pragma: no cover
    """Add one measurement view's ZNCC cost of planes ``d0..d1-1`` to ``total`` (where the view sees the pixel)
    and its visibility to ``count``: :func:`~mvs_depth_ros.models.planesweep.plane_sweep_grid`,
    ``warp_planes`` (bilinear, border padding, ``align_corners=True``) and ``zncc_cost`` fused, one plane at a
    time, with the same float32 operations (multiply-adds rounded once where torch's kernels use FMA; box sums
    in float64 as OpenCV's box filter, borders reflected).

    ref, ref_mu, ref_sigma, src: ``(h, w)`` float32; a: ``(h, w, 3)`` float32 (``pix @ M.T``); b: ``(3,)``;
    depths: ``(D,)`` float32; total, count: ``(D, h, w)`` float32.
    """
    h, w = ref.shape
    r = window // 2
    f32 = np.float32
    one = f32(1.0)
    zero = f32(0.0)
    half = f32(0.5)
    zmin = f32(1e-6)
    two = f32(2.0)
    sx = f32((w - 1) / 2.0)
    sy = f32((h - 1) / 2.0)
    wmax = f32(w - 1)
    hmax = f32(h - 1)
    epsf = f32(eps)
    scale = 1.0 / (window * window)
    # the three quantities (warped, warped^2, warped * ref), padded by r with reflected borders (REFLECT_101)
    pad = np.empty((3, h + 2 * r, w + 2 * r), np.float32)
    rows = np.empty((3, h + 2 * r, w), np.float64)
    sums = np.empty((3, w), np.float64)
    valid = np.empty((h, w), np.bool_)
    b0, b1, b2 = b[0], b[1], b[2]
    srcf = src.ravel()
    wu = np.uint64(w)
    wu1 = np.uint64(w - 1)
    hu1 = np.uint64(h - 1)
    ru = np.uint64(r)
    for d in range(d0, d1):
        dep = depths[d]
        for y in range(h):
            for x in range(w):
                p0 = _fma32(dep, a[y, x, 0], b0)
                p1 = _fma32(dep, a[y, x, 1], b1)
                p2 = _fma32(dep, a[y, x, 2], b2)
                z = p2 if p2 > zmin else zmin
                gx = p0 / z
                gy = p1 / z
                gx = min(max(gx, -two), two)
                gy = min(max(gy, -two), two)
                valid[y, x] = (p2 > zmin) & (max(abs(gx), abs(gy)) <= one)
                ix = (gx + one) * sx
                iy = (gy + one) * sy
                ix = min(max(ix, zero), wmax)
                iy = min(max(iy, zero), hmax)
                fx = np.floor(ix)
                fy = np.floor(iy)
                tx = ix - fx
                ty = iy - fy
                # unsigned indices (non-negative here): no negative-index wraparound, the loop vectorises
                x0 = np.uint64(fx)
                y0 = np.uint64(fy)
                x1 = x0 + (x0 < wu1)
                y1 = y0 + (y0 < hu1)
                e = one - tx
                sn = one - ty
                v = srcf[y0 * wu + x0] * (sn * e)
                v = _fma32(srcf[y0 * wu + x1], sn * tx, v)
                v = _fma32(srcf[y1 * wu + x0], ty * e, v)
                v = _fma32(srcf[y1 * wu + x1], ty * tx, v)
                yr = np.uint64(y) + ru
                xr = np.uint64(x) + ru
                pad[0, yr, xr] = v
                pad[1, yr, xr] = v * v
                pad[2, yr, xr] = v * ref[y, x]
        for c in range(3):
            for y in range(r, h + r):
                for j in range(r):
                    pad[c, y, r - 1 - j] = pad[c, y, r + 1 + j]
                    pad[c, y, w + r + j] = pad[c, y, w + r - 2 - j]
            for j in range(r):
                pad[c, r - 1 - j] = pad[c, r + 1 + j]
                pad[c, h + r + j] = pad[c, h + r - 2 - j]
            # horizontal then vertical window sums (float64: exact for these float32 inputs), loops over x
            # innermost so that they vectorise
            for y in range(h + 2 * r):
                pc = pad[c, y]
                rc = rows[c, y]
                for x in range(w):
                    rc[x] = pc[x]
                for j in range(1, window):
                    for x in range(w):
                        rc[x] += pc[x + j]
        tot = total[d]
        cnt = count[d]
        for y in range(h):
            for c in range(3):
                sc = sums[c]
                rc = rows[c, y]
                for x in range(w):
                    sc[x] = rc[x]
                for i in range(1, window):
                    rc = rows[c, y + i]
                    for x in range(w):
                        sc[x] += rc[x]
            for x in range(w):
                s0 = sums[0, x]
                s1 = sums[1, x]
                s2 = sums[2, x]
                mu = f32(s0 * scale)
                var = f32(s1 * scale) - mu * mu
                var = var if var > zero else zero
                cov = f32(s2 * scale) - mu * ref_mu[y, x]
                zn = cov / (ref_sigma[y, x] * np.sqrt(var) + epsf)
                zn = min(max(zn, -one), one)
                cst = (one - zn) * half
                vf = one if valid[y, x] else zero
                tot[y, x] += cst * vf
                cnt[y, x] += vf


if AVAILABLE:
    _zncc_view_kernel = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")(_zncc_view_kernel)


def _run(jobs, threads: int) -> None:
    """Run the callables ``jobs`` on up to ``threads`` threads (the kernels release the GIL)."""
    global _pool, _pool_pid
    if threads <= 1 or len(jobs) <= 1:
        for j in jobs:
            j()
        return
    # a new pool after a fork (the parent's worker threads do not exist in the child)
    if _pool is None or _pool._max_workers < threads or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mvs_numba")
        _pool_pid = os.getpid()
    for f in [_pool.submit(j) for j in jobs]:
        f.result()


_pool: Optional[ThreadPoolExecutor] = None
_pool_pid = 0


def scan_rows(cost: np.ndarray, pen: np.ndarray, shifts: Sequence[int], p1: float, threads: int = 1) -> np.ndarray:
    """Sum of the SGM path costs of the downward and upward row scans of ``cost (D, S, N)`` (float32), as
    :func:`mvs_depth_ros.models.planesweep.sgm_scan_rows`; ``pen``: ``(2P, S, N)``, see the kernel. With
    ``threads >= 2`` the downward and the upward passes run on two threads (same result)."""
    cost = np.ascontiguousarray(cost, dtype=np.float32)
    pen = np.ascontiguousarray(pen, dtype=np.float32)
    sh = np.asarray(shifts, np.int64)
    if not np.all(np.abs(sh) <= 1):
        raise ValueError(f"shifts must be -1, 0 or 1, got {shifts}")
    P = len(sh)
    out_dn = np.zeros_like(cost)
    out_up = np.zeros_like(cost)
    _run([lambda: _scan_rows_kernel(cost, pen, sh, float(p1), 0, P, out_dn, out_up),
          lambda: _scan_rows_kernel(cost, pen, sh, float(p1), P, 2 * P, out_dn, out_up)], threads)
    out_dn += out_up
    return out_dn


def view_cost(ref: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, srcs: Sequence[np.ndarray],
              affines: Sequence[Tuple[np.ndarray, np.ndarray]], depths: np.ndarray, window: int, eps: float = 1e-4,
              threads: int = 1, neutral: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Sum over the views of the ZNCC cost where the view sees the (plane, pixel), and the view count, both
    ``(D, h, w)`` float32 (the kernel's docstring has the arguments; ``affines``: ``(a, b)`` per view). With
    ``neutral``, the first is the average instead (``neutral`` where no view sees the pixel). The planes are
    split across ``threads`` threads; every plane adds the views in order (same result)."""
    f = lambda x: np.ascontiguousarray(x, dtype=np.float32)
    ref, ref_mu, ref_sigma, depths = f(ref), f(ref_mu), f(ref_sigma), f(depths)
    srcs = [f(x) for x in srcs]
    affines = [(f(a), f(b)) for a, b in affines]
    D = depths.shape[0]
    total = np.zeros((D,) + ref.shape, np.float32)
    count = np.zeros((D,) + ref.shape, np.float32)
    n = max(1, min(threads, D))
    bounds = [D * i // n for i in range(n + 1)]

    def job(d0: int, d1: int):
        def run():
            for src, (a, b) in zip(srcs, affines):
                _zncc_view_kernel(ref, ref_mu, ref_sigma, src, a, b, depths, d0, d1, window, float(eps), total, count)
            if neutral is not None:
                _average_kernel(total, count, float(neutral), d0, d1)
        return run

    _run([job(bounds[i], bounds[i + 1]) for i in range(n)], n)
    return total, count


_warm: Optional[float] = None


def warm_up() -> float:
    """Compile (or load from the disk cache) the kernels on tiny inputs; returns the seconds it took (once)."""
    global _warm
    if _warm is None:
        t0 = time.perf_counter()
        cost = np.zeros((3, 2, 2), np.float32)
        scan_rows(cost, np.zeros((2, 2, 2), np.float32), (0,), 0.1)
        img = np.zeros((2, 2), np.float32)
        view_cost(img, img, img, [img], [(np.zeros((2, 2, 3), np.float32), np.ones(3, np.float32))],
                  np.ones(1, np.float32), 1, neutral=0.5)
        _warm = time.perf_counter() - t0
        if _warm > 1.0:
            log.info("compiled the plane sweep kernels in %.1f s (cached on disk for the next runs)", _warm)
    return _warm

