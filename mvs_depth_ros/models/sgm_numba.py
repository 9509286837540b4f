"""Compiled (numba) CPU kernel of the plane sweep's semi-global aggregation.

The same recurrence and the same float32 operations, in the same order, as the torch reference
:func:`mvs_depth_ros.models.planesweep.sgm_scan_rows` (which stays the implementation on other devices and
where numba is missing), but one compiled loop over rows, planes and pixels instead of ~10 small torch ops
per row: the per-op overhead was the larger part of the sweep's time on CPU.

The machine code is cached on disk (``cache=True``: in ``__pycache__`` next to this file, or numba's cache
directory where the package is not writable), so only the first call on a machine pays the compilation
(~2-5 s); :func:`warm_up` triggers it.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

try:
    import numba
except ImportError:                                  # pragma: no cover - numba is a dependency (setup.py)
    numba = None

#: True when the compiled kernel can be used
AVAILABLE = numba is not None


def _scan_rows_kernel(cost, pen, shifts, p1, out_dn, out_up):  # pragma: no cover - compiled by numba
    """Add the SGM path costs of row scans to ``out_dn`` (downward passes) and ``out_up`` (upward).

    cost: ``(D, S, N)`` float32. pen: ``(2P, S, N)`` float32, the large-jump penalty of pass ``k`` for entering
    row ``r`` (``k < P``: downwards from row ``r - 1``, shift ``shifts[k]``; ``k >= P``: upwards from ``r + 1``,
    shift ``shifts[k - P]``). Pixel ``n`` follows pixel ``n - shift`` of the previous row; a path entering from
    outside the row starts fresh. Passes are added in the order ``k = 0, 1, ...`` (as the torch reference sums).
    """
    D, S, N = cost.shape
    P = shifts.shape[0]
    inf = np.float32(np.inf)
    p1f = np.float32(p1)
    # previous and current row of a pass, with an inf plane on each side (the +-1 plane transitions)
    prev = np.empty((D + 2, N), np.float32)
    cur = np.empty((D + 2, N), np.float32)
    m = np.empty(N, np.float32)
    for k in range(2 * P):
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


def scan_rows(cost: np.ndarray, pen: np.ndarray, shifts: Sequence[int], p1: float) -> np.ndarray:
    """Sum of the SGM path costs of the downward and upward row scans of ``cost (D, S, N)`` (float32), as
    :func:`mvs_depth_ros.models.planesweep.sgm_scan_rows`; ``pen``: ``(2P, S, N)``, see the kernel."""
    cost = np.ascontiguousarray(cost, dtype=np.float32)
    pen = np.ascontiguousarray(pen, dtype=np.float32)
    out_dn = np.zeros_like(cost)
    out_up = np.zeros_like(cost)
    _scan_rows_kernel(cost, pen, np.asarray(shifts, np.int64), float(p1), out_dn, out_up)
    out_dn += out_up
    return out_dn


_warm: Optional[float] = None


def warm_up() -> float:
    """Compile (or load from the disk cache) the kernel on a tiny input; returns the seconds it took (once)."""
    global _warm
    if _warm is None:
        t0 = time.perf_counter()
        cost = np.zeros((3, 2, 2), np.float32)
        scan_rows(cost, np.zeros((2, 2, 2), np.float32), (0,), 0.1)
        _warm = time.perf_counter() - t0
        if _warm > 1.0:
            log.info("compiled the SGM kernel in %.1f s (cached on disk for the next runs)", _warm)
    return _warm
