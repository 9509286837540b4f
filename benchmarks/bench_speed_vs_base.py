#!/usr/bin/env python3
"""Old code against new code, side by side in one run: ms/keyframe of every estimator, and its outputs compared.

Each side (the base commit's code and this working tree's) runs every estimator in its own long-lived worker
process; the two workers of an estimator take turns on chunks of keyframes (who goes first alternates from
chunk to chunk), so a load change on a shared machine hits both sides alike. Both sides see the same keyframes
in the same order through ``VideoPipeline.process_keyframe`` (the path of ``mvs-depth run --keyframes``, feature
caches included): the HoloLens sample at 320x256 with the official ``nmeas+2`` index, depth range 0.25-20 m,
CPU, ``--threads`` torch threads. The timed span is one ``process_keyframe`` call (resizing the new frames,
the estimator, no temporal fusion). Before timing, each worker runs ``--warmup`` keyframes on copies of the
frames (fresh uids: no cache hits later); the new side's first call includes any compilation and is reported
as ``first call`` (the compiled code is cached on disk by torch, so a second run starts faster).

    .venv/bin/python benchmarks/bench_speed_vs_base.py                           # base = c5cefa3 (git archive)
    .venv/bin/python benchmarks/bench_speed_vs_base.py --base /path/to/old/checkout --models itermvs_blendedmvs

Output: the machine (CPU model, cores, torch, threads, load average), then per estimator the median ms/keyframe
of old and new, ``new/old`` (ratio of the medians) and the median of the per-keyframe ratios, the new side's
first-call time, and the outputs: abs_rel of both sides over the timed keyframes (real weights only) and the
largest depth difference between them. Models without published weights run with the conformance fixtures'
generated weights (``bench_models.generated_checkpoint``) on the first ``--slow-limit`` keyframes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "@@BENCH@@"

# name -> (registry model, checkpoint: shared-relative path, "generated:<fixture>" or None, options, slow)
MODELS = {
    "itermvs_blendedmvs": ("itermvs", "weights/itermvs/blendedmvs/model_000015.ckpt", {}, False),
    "patchmatchnet": ("patchmatchnet", "weights/patchmatchnet/params_000007.ckpt", {}, False),
    "dvmvs_pairnet": ("dvmvs_pairnet", "generated:dvmvs", {}, True),
    "dvmvs_fusionnet": ("dvmvs_fusionnet", "generated:dvmvs", {}, True),
    "mvsnet_64": ("mvsnet", "generated:mvsnet", {"n_planes": 64}, True),
    "mvdepthnet": ("mvdepthnet", "generated:mvdepthnet", {}, True),
    "planesweep": ("planesweep", None, {}, False),
    "itermvs_dtu": ("itermvs", "weights/itermvs/dtu/model_000015.ckpt", {}, False),
}
#: the new side's options beyond the model's: compile where it was measured to pay off per keyframe (opt-in in the
#: package since the first call costs about a minute; see models/compiled.py). PatchmatchNet compiled measured 1.00
#: against 0.71 eager on 2026-12-08 (README), so it runs eagerly; ``--new-options`` overrides this
NEW_SIDE_OPTIONS = {"itermvs": {"compile": True}}
DEFAULT_MODELS = ["itermvs_blendedmvs", "patchmatchnet", "dvmvs_pairnet", "dvmvs_fusionnet", "mvsnet_64",
                  "mvdepthnet", "planesweep"]


# --------------------------------------------------------------------------------------------------- worker
def _say(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(a) -> int:
    """One side: import the package from ``a.root`` (not the venv's editable install), then serve commands."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or "").lower()
                        and "editable" not in type(f).__name__.lower() and "editable" not in repr(f).lower()]
    sys.path.insert(0, str(a.root))
    import dataclasses

    import numpy as np
    import torch

    import mvs_depth_ros
    if not str(Path(mvs_depth_ros.__file__).resolve()).startswith(str(Path(a.root).resolve())):
        raise SystemExit(f"worker imported {mvs_depth_ros.__file__}, not the code under {a.root}")
    from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
    from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index
    from mvs_depth_ros.eval.metrics import depth_metrics
    from mvs_depth_ros.models.registry import create_model

    torch.set_num_threads(a.threads)
    scene = load_scene(a.scene)
    index = read_keyframe_index(a.index)[:a.limit] if a.limit else read_keyframe_index(a.index)
    names = sorted({Path(n).stem for ref, meas in index for n in (ref, *meas)})
    frames = {n: scene.frame(scene.index_of(n)) for n in names}
    options = json.loads(a.options)
    kwargs = dict(device="cpu", min_depth=0.25, max_depth=20.0, **options)
    if a.checkpoint:
        kwargs["checkpoint"] = a.checkpoint
    est = create_model(a.model, **kwargs)
    config = PipelineConfig(width=320, height=256, n_measurement_frames=2)

    # warm-up on copies (fresh uids, own pipeline and recurrent state): nothing of it is reused later
    warm = VideoPipeline(est, config)
    first_ms = []
    for ref, meas in index[:a.warmup]:
        copies = [dataclasses.replace(frames[Path(n).stem], uid=-1 - len(first_ms) * 16 - i)
                  for i, n in enumerate((ref, *meas))]
        t = time.perf_counter()
        warm.process_keyframe(copies[0], copies[1:])
        first_ms.append((time.perf_counter() - t) * 1e3)
    pipe = VideoPipeline(est, config)
    _say({"ready": True, "first_ms": first_ms, "file": mvs_depth_ros.__file__, "describe": est.describe()})

    depths, metrics = [], []
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            times = []
            for ref, meas in index[int(cmd[1]):int(cmd[2])]:
                t = time.perf_counter()
                step = pipe.process_keyframe(frames[Path(ref).stem], [frames[Path(m).stem] for m in meas])
                times.append((time.perf_counter() - t) * 1e3)
                depths.append(step.result.depth.astype(np.float32))
                metrics.append(depth_metrics(step.result.depth, step.frame.depth_gt, min_gt=0.5, clip=(0.25, 20.0)))
            _say({"times": times})
        elif cmd[0] == "end":
            np.save(cmd[1], np.stack(depths))
            rel = [m["abs_rel"] for m in metrics if m is not None and np.isfinite(m.get("abs_rel", np.nan))]
            a1 = [m["a1"] for m in metrics if m is not None and np.isfinite(m.get("a1", np.nan))]
            _say({"abs_rel": float(np.mean(rel)) if rel else None, "a1": float(np.mean(a1)) if a1 else None,
                  "frames": len(rel)})
            return 0
    return 1


# --------------------------------------------------------------------------------------------------- parent
class Side:
    def __init__(self, label: str, root: Path, a, name: str, model: str, ckpt: str | None, options: dict,
                 limit: int | None):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--model", model,
               "--options", json.dumps(options), "--threads", str(a.threads), "--scene", str(a.scene_dir),
               "--index", str(a.index_file), "--warmup", str(a.warmup)]
        if ckpt:
            cmd += ["--checkpoint", ckpt]
        if limit:
            cmd += ["--limit", str(limit)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", OMP_NUM_THREADS=str(a.threads))
        env.pop("PYTHONPATH", None)
        self.label = label
        self.log = open(Path(a.tmp) / f"{name}_{label}.log", "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=str(root))
        self.times: list = []

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"{self.label} worker ended (exit {self.proc.wait()}); see {self.log.name}")

    def send(self, text: str) -> dict:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()


def machine_line(threads: int) -> str:
    import torch
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"machine: {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {threads} torch threads, "
            f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} (1 min) at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--base", default=None, help="checkout of the old code (default: git archive of --base-commit)")
    p.add_argument("--base-commit", default="c5cefa3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=5, help="keyframes per turn")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--frames", type=int, default=0, help="keyframes for the real-weight rows (0 = all 146)")
    p.add_argument("--slow-limit", type=int, default=30, help="keyframes for the generated-weights rows")
    p.add_argument("--new-options", default="{}", help="JSON estimator options for the new side only")
    p.add_argument("--json", default=None, help="also write the figures (and the machine line) to this JSON file")
    a = p.parse_args()
    if a.worker:
        return worker(a)

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import numpy as np

    from bench_models import generated_checkpoint
    from mvs_depth_ros.data.paths import shared_path
    shared = shared_path()
    if shared is None or not (shared / "data" / "hololens-000").is_dir():
        print("shared HoloLens data not found (MVS_DEPTH_SHARED or ../shared): nothing to measure")
        return 0
    a.scene_dir = shared / "data" / "hololens-000"
    a.index_file = a.scene_dir / "indices" / "keyframe+hololens-dataset+000+nmeas+2"
    with tempfile.TemporaryDirectory() as tmp:
        a.tmp = tmp
        base = Path(a.base) if a.base else Path(tmp) / "base"
        if not a.base:
            base.mkdir()
            subprocess.run(f"git -C {REPO} archive {a.base_commit} | tar -x -C {base}", shell=True, check=True)
        base_rev = a.base_commit if not a.base else subprocess.run(
            ["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        new_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        print(machine_line(a.threads))
        print(f"old: {base_rev} ({base}); new: {new_rev}{' + uncommitted changes' if dirty else ''} ({REPO}); "
              f"new-side options {a.new_options}")
        print(f"HoloLens sample, {a.index_file.name}, 320x256, CPU, chunks of {a.chunk} keyframes alternating, "
              f"{a.warmup} warm-up keyframes per side", flush=True)
        hdr = (f"{'estimator':<20} {'kf':>4} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'paired':>7} "
               f"{'1st call s':>10} {'abs_rel old/new':>17} {'max|dd| m':>10} {'>1mm %':>7}")
        print(hdr, flush=True)
        results = {}
        for name in a.models:
            model, ck_rel, options, slow = MODELS[name]
            limit = a.slow_limit if slow else (a.frames or None)
            ckpt = None
            if ck_rel and ck_rel.startswith("generated:"):
                gen_dir = Path(tmp) / f"ckpt_{name}"
                gen_dir.mkdir()
                c = generated_checkpoint(model, ck_rel.split(":", 1)[1], gen_dir)
                if c is None:
                    print(f"{name:<20} skipped: fixture {ck_rel} not found")
                    continue
                ckpt = str(c)
            elif ck_rel:
                c = shared.joinpath(*ck_rel.split("/"))
                if not c.exists():
                    print(f"{name:<20} skipped: {ck_rel} not found")
                    continue
                ckpt = str(c)
            sides = {}
            try:
                new_opts = {**options, **NEW_SIDE_OPTIONS.get(model, {}), **json.loads(a.new_options)}
                for label, root, opts in (("old", base, options), ("new", REPO, new_opts)):
                    sides[label] = Side(label, root, a, name, model, ckpt, opts, limit)
                    sides[label].ready = sides[label].read()      # warm-ups run one after the other
                n = min(limit or 10 ** 6, sum(1 for line in a.index_file.read_text().splitlines() if line.strip()))
                for k, i0 in enumerate(range(0, n, a.chunk)):
                    order = ("old", "new") if k % 2 == 0 else ("new", "old")
                    for label in order:
                        sides[label].times += sides[label].send(f"run {i0} {min(n, i0 + a.chunk)}")["times"]
                summ = {label: s.send(f"end {Path(tmp) / (name + '_' + label + '.npy')}") for label, s in sides.items()}
            except Exception as e:  # noqa: BLE001 - a failing row must not hide the others
                print(f"{name:<20} FAILED: {e}", flush=True)
                continue
            finally:
                for s in sides.values():
                    try:
                        s.proc.stdin.close()
                    except Exception:  # noqa: BLE001
                        pass
                    s.proc.wait()
            told, tnew = sides["old"].times, sides["new"].times
            d_old = np.load(Path(tmp) / f"{name}_old.npy")
            d_new = np.load(Path(tmp) / f"{name}_new.npy")
            both = np.isfinite(d_old) & np.isfinite(d_new)
            diff = np.abs(d_old - d_new)[both]
            nan_mismatch = int((np.isfinite(d_old) != np.isfinite(d_new)).sum())
            mo, mn = statistics.median(told), statistics.median(tnew)
            paired = statistics.median([n_ / o_ for o_, n_ in zip(told, tnew)])
            first = sides["new"].ready["first_ms"][0] / 1e3 if sides["new"].ready["first_ms"] else float("nan")
            acc = "-" if ck_rel and ck_rel.startswith("generated:") else \
                f"{summ['old']['abs_rel']:.4f}/{summ['new']['abs_rel']:.4f}"
            print(f"{name:<20} {len(told):>4} {mo:8.0f} {mn:8.0f} {mn / mo:8.2f} {paired:7.2f} {first:10.1f} "
                  f"{acc:>17} {diff.max() if diff.size else 0.0:10.2e} {100 * (diff > 1e-3).mean():7.3f}"
                  f"{'  NaN mismatch %d px' % nan_mismatch if nan_mismatch else ''}", flush=True)
            results[name] = {"keyframes": len(told), "old_ms": mo, "new_ms": mn, "ratio": mn / mo,
                             "paired_ratio": paired, "first_call_s": first, "old": summ["old"], "new": summ["new"],
                             "max_abs_diff": float(diff.max()) if diff.size else 0.0}
        print(machine_line(a.threads).replace("machine:", "end:"), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"machine": machine_line(a.threads), "old": base_rev, "new": new_rev,
                                                "dirty": bool(dirty), "threads": a.threads, "results": results},
                                               indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
