#!/usr/bin/env python3
"""Accuracy, speed and peak memory of every estimator on the HoloLens sample (the README's model table).

Each model runs ``mvs-depth run`` in its own process (so peak memory is that model's alone) over the
official keyframe index at 320x256 with 2 CPU threads, and the figures come from its ``metrics.json``:

    .venv/bin/python benchmarks/bench_models.py                       # every model with weights available
    .venv/bin/python benchmarks/bench_models.py --models planesweep itermvs_blendedmvs --limit 30

``--limit N`` uses the first N keyframe lines (timing only; accuracy needs all 146). Peak memory is the
process's peak resident set size (model, data and Python together).

DeepVideoMVS (pair/fusion), MVSNet and MVDepthNet have no published weights in the shared folder. Their rows run
with the conformance fixtures' deterministic generated weights (``shared/fixtures/<model>/weight_rule.py``, written
in the official checkpoint format to a temporary folder and loaded like a published one): the compute, and so
ms/keyframe and peak memory, is the real network's; the accuracy columns are meaningless and printed as ``-``.
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
sys.path.insert(0, str(REPO / "benchmarks"))
from mvs_depth_ros.data.paths import shared_path  # noqa: E402

# name -> (registry model, checkpoint path relative to the shared folder or None, extra CLI args)
CONFIGS = {
    "planesweep": ("planesweep", None, []),
    "itermvs_blendedmvs": ("itermvs", "weights/itermvs/blendedmvs/model_000015.ckpt", []),
    "itermvs_dtu": ("itermvs", "weights/itermvs/dtu/model_000015.ckpt", []),
    "patchmatchnet": ("patchmatchnet", "weights/patchmatchnet/params_000007.ckpt", []),
    # generated weights (timing and memory only): checkpoint written by generated_checkpoint()
    "dvmvs_pairnet": ("dvmvs_pairnet", "generated:dvmvs", []),
    "dvmvs_fusionnet": ("dvmvs_fusionnet", "generated:dvmvs", []),
    "mvsnet_192": ("mvsnet", "generated:mvsnet", ["--model-option", "n_planes=192"]),
    "mvsnet_64": ("mvsnet", "generated:mvsnet", ["--model-option", "n_planes=64"]),
    "mvdepthnet": ("mvdepthnet", "generated:mvdepthnet", []),
}


def _weight_rule(fixture: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{fixture.name}_weight_rule", fixture / "weight_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_checkpoint(model: str, kind: str, tmp: Path):
    """The fixture's generated weights in the official checkpoint format of ``model`` (None without the fixture)."""
    import numpy as np
    import torch
    fixture = shared_path("fixtures", kind)
    if fixture is None:
        return None
    rule = _weight_rule(fixture)
    manifest = json.loads((fixture / "state_dict_manifest.json").read_text())
    tensors = lambda sd: {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}  # noqa: E731
    if kind == "dvmvs":                     # official folder of module files
        net = "fusionnet" if model == "dvmvs_fusionnet" else "pairnet"
        folder = tmp / net
        folder.mkdir()
        for module_file in manifest[net]:
            torch.save(tensors(rule.state_dict(net, module_file)), folder / module_file)
        return folder
    if kind == "mvsnet":                    # nn.DataParallel checkpoint as the official train.py saves it
        sd = tensors(rule.state_dict(manifest["variants"]["refine_false"]["entries"]))
        torch.save({"epoch": 14, "model": {"module." + k: v for k, v in sd.items()}}, tmp / "mvsnet.ckpt")
        return tmp / "mvsnet.ckpt"
    if kind == "mvdepthnet":                # the released .pth.tar layout
        torch.save({"state_dict": tensors(rule.state_dict(manifest["entries"]))}, tmp / "mvdepthnet.pth.tar")
        return tmp / "mvdepthnet.pth.tar"
    raise ValueError(kind)


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
        if ckpt_rel and ckpt_rel.startswith("generated:"):
            ckpt = generated_checkpoint(model, ckpt_rel.split(":", 1)[1], Path(tmp))
            if ckpt is None:
                return {"name": name, "skipped": f"fixture {ckpt_rel} not found"}
            cmd += ["--checkpoint", str(ckpt)]
        elif ckpt_rel:
            ckpt = shared_path(*ckpt_rel.split("/"))
            if ckpt is None:
                return {"name": name, "skipped": f"checkpoint {ckpt_rel} not found"}
            cmd += ["--checkpoint", str(ckpt)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            return {"name": name, "error": proc.stdout[-2000:]}
        summary = json.loads((Path(tmp) / "out" / "metrics.json").read_text())["summary"]
    return {"name": name, "summary": summary, "generated": bool(ckpt_rel and ckpt_rel.startswith("generated:"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--limit", type=int, default=None, help="first N keyframes only (timing)")
    p.add_argument("--generated-limit", type=int, default=30,
                   help="keyframes timed for the generated-weights rows (their accuracy is meaningless)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nmeas", type=int, default=2, choices=[1, 2, 3])
    a = p.parse_args()
    scene = shared_path("data", "hololens-000")
    if scene is None:
        print("shared HoloLens data not found (MVS_DEPTH_SHARED or ../shared): nothing to measure")
        return 0
    index = scene / "indices" / f"keyframe+hololens-dataset+000+nmeas+{a.nmeas}"
    from bench_speed_vs_base import machine_line
    print(machine_line(a.threads))
    print(f"HoloLens sample, {index.name}{' (first %d lines)' % a.limit if a.limit else ''}, 320x256, "
          f"{a.threads} threads, CPU")
    header = f"{'model':<20} {'abs_rel':>8} {'a1':>7} {'cov@thr':>8} {'rel@thr':>8} {'ms/kf':>7} {'peak MB':>8}"
    print(header)
    for name in a.models:
        generated = CONFIGS[name][1] is not None and CONFIGS[name][1].startswith("generated:")
        r = run_one(name, index, scene, a.limit or (a.generated_limit if generated else None), a.threads, [])
        if "skipped" in r or "error" in r:
            print(f"{name:<20} {r.get('skipped') or 'FAILED: ' + r['error'][-400:]}")
            continue
        s = r["summary"]
        d, f = s.get("dense", {}), s.get("filtered", {})
        peak_txt = f"{s['timing']['peak_rss_mb']:8.0f}"
        if r["generated"]:
            acc = f"{'-':>8} {'-':>7} {'-':>8} {'-':>8}"
        else:
            acc = (f"{d.get('abs_rel', float('nan')):8.4f} {d.get('a1', float('nan')):7.4f} "
                   f"{f.get('coverage', float('nan')):8.3f} {f.get('abs_rel', float('nan')):8.4f}")
        print(f"{name:<20} {acc} {s['timing']['ms_per_keyframe_median']:7.0f} {peak_txt}"
              f"{'  (generated weights: timing/memory only)' if r['generated'] else ''}", flush=True)
    print(machine_line(a.threads).replace("machine:", "end:"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
