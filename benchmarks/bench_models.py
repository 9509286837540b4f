#!/usr/bin/env python3
"""Accuracy, speed and peak memory of every estimator on the HoloLens sample (the README's model table).

Each model runs ``mvs-depth run`` in its own process (so peak memory is that model's alone) over the
official keyframe index at 320x256 with 2 CPU threads, and the figures come from its ``metrics.json``:

    .venv/bin/python benchmarks/bench_models.py                       # every model with weights available
    .venv/bin/python benchmarks/bench_models.py --models planesweep itermvs_blendedmvs --limit 30

``--limit N`` uses the first N keyframe lines (timing only; accuracy needs all 146). Peak memory is the
process's peak resident set size (model, data and Python together).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mvs_depth_ros.data.paths import shared_path  # noqa: E402

# name -> (registry model, checkpoint path relative to the shared folder or None, extra CLI args)
CONFIGS = {
    "planesweep": ("planesweep", None, []),
    "itermvs_blendedmvs": ("itermvs", "weights/itermvs/blendedmvs/model_000015.ckpt", []),
    "itermvs_dtu": ("itermvs", "weights/itermvs/dtu/model_000015.ckpt", []),
    "patchmatchnet": ("patchmatchnet", "weights/patchmatchnet/params_000007.ckpt", []),
}


def run_one(name: str, index: Path, scene: Path, limit: int | None, threads: int, extra: list) -> dict:
    model, ckpt_rel, args = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        idx = index
        if limit:
            idx = Path(tmp) / "index.txt"
            idx.write_text("".join(index.read_text().splitlines(keepends=True)[:limit]))
        cmd = [sys.executable, "-m", "mvs_depth_ros.cli", "run", "--scene", str(scene), "--keyframes", str(idx),
               "--model", model, "--width", "320", "--height", "256", "--threads", str(threads),
               "--device", "cpu", "--pictures", "0", "--out", str(Path(tmp) / "out"), *args, *extra]
        if ckpt_rel:
            ckpt = shared_path(*ckpt_rel.split("/"))
            if ckpt is None:
                return {"name": name, "skipped": f"checkpoint {ckpt_rel} not found"}
            cmd += ["--checkpoint", str(ckpt)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            return {"name": name, "error": proc.stdout[-2000:]}
        summary = json.loads((Path(tmp) / "out" / "metrics.json").read_text())["summary"]
    return {"name": name, "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--limit", type=int, default=None, help="first N keyframes only (timing)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nmeas", type=int, default=2, choices=[1, 2, 3])
    a = p.parse_args()
    scene = shared_path("data", "hololens-000")
    if scene is None:
        print("shared HoloLens data not found (MVS_DEPTH_SHARED or ../shared): nothing to measure")
        return 0
    index = scene / "indices" / f"keyframe+hololens-dataset+000+nmeas+{a.nmeas}"
    print(f"HoloLens sample, {index.name}{' (first %d lines)' % a.limit if a.limit else ''}, 320x256, "
          f"{a.threads} threads, CPU")
    header = f"{'model':<20} {'abs_rel':>8} {'a1':>7} {'cov@thr':>8} {'rel@thr':>8} {'ms/kf':>7} {'peak MB':>8}"
    print(header)
    for name in a.models:
        r = run_one(name, index, scene, a.limit, a.threads, [])
        if "skipped" in r or "error" in r:
            print(f"{name:<20} {r.get('skipped') or 'FAILED: ' + r['error'][-400:]}")
            continue
        s = r["summary"]
        d, f = s.get("dense", {}), s.get("filtered", {})
        peak_txt = f"{s['timing']['peak_rss_mb']:8.0f}"
        print(f"{name:<20} {d.get('abs_rel', float('nan')):8.4f} {d.get('a1', float('nan')):7.4f} "
              f"{f.get('coverage', float('nan')):8.3f} {f.get('abs_rel', float('nan')):8.4f} "
              f"{s['timing']['ms_per_keyframe_median']:7.0f} {peak_txt}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
