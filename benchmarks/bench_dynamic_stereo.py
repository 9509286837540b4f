#!/usr/bin/env python3
"""DynamicStereo speed on this machine: wall ms per frame for one window at several (window, size, iters)
settings, and the streaming estimator (which runs a whole window for every new frame).

Weights do not change the cost, so the network is randomly initialised (no checkpoint needed). Inputs are
a synthetic rectified stereo video (``render_stereo_sequence``). Reference: the official model takes
~34-35 s for a 5-frame window at 360x240 (padded 384x256) with 20 iterations on 2 cores, ~6900 ms/frame
(``shared/fixtures/dynamic_stereo/README.md``). Timings on shared CPUs vary by +-15 % and more under load:
compare within one run and quote medians.

    .venv/bin/python benchmarks/bench_dynamic_stereo.py [--threads 2] [--repeats 2]
        [--settings 5x360x240x20 5x360x240x10 3x360x240x10 3x256x128x10] [--stream-frames 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import List, Tuple

import numpy as np
import torch

from mvs_depth_ros.core.stereo import StereoPipeline
from mvs_depth_ros.data.synthetic import render_stereo_sequence
from mvs_depth_ros.models.stereo.dynamic_stereo import (DynamicStereoConfig, DynamicStereoEstimator, pad_amounts,
                                                       run_window)
from mvs_depth_ros.models.stereo.dynamic_stereo_net import DynamicStereo


def parse_setting(text: str) -> Tuple[int, int, int, int]:
    """``WINDOWxWIDTHxHEIGHTxITERS`` -> ints."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected WINDOWxWIDTHxHEIGHTxITERS, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def video_tensor(frames) -> torch.Tensor:
    """``(T, 2, 3, H, W)`` float32 0..255."""
    return torch.from_numpy(np.stack([np.stack([f.left.transpose(2, 0, 1), f.right.transpose(2, 0, 1)])
                                      for f in frames])).float()


def time_window(net: DynamicStereo, video: torch.Tensor, iters: int, repeats: int) -> List[float]:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_window(net, video, iters)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", type=parse_setting, nargs="+",
                    default=[parse_setting(s) for s in ("5x360x240x20", "5x360x240x10", "3x360x240x10",
                                                        "3x256x128x10")])
    ap.add_argument("--stream-frames", type=int, default=3,
                    help="frames through the streaming estimator at the last setting (0 to skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = DynamicStereo().eval()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'window':>6} {'size':>9} {'padded':>9} {'iters':>5} {'s/window':>9} {'ms/frame':>9}")
    for window, width, height, iters in args.settings:
        frames = render_stereo_sequence(n_frames=window, width=width, height=height, seed=0)
        l, r, t, b = pad_amounts(height, width, min_width=256)
        times = time_window(net, video_tensor(frames), iters, args.repeats)
        med = statistics.median(times)
        print(f"{window:>6} {width:>4}x{height:<4} {width + l + r:>4}x{height + t + b:<4} {iters:>5} "
              f"{med:>9.2f} {1000 * med / window:>9.0f}")
    if args.stream_frames:
        window, width, height, iters = args.settings[-1]
        est = DynamicStereoEstimator(net, DynamicStereoConfig(window=window, iters=iters), device="cpu")
        pipe = StereoPipeline(est)
        frames = render_stereo_sequence(n_frames=window + args.stream_frames, width=width, height=height, seed=1)
        ms = [pipe.process(f).info["ms"] for f in frames][window:]  # once the window is full
        print(f"streaming estimator (window {window}, {width}x{height}, iters {iters}): "
              f"median {statistics.median(ms):.0f} ms per new frame (one full window per frame)")


if __name__ == "__main__":
    main()
