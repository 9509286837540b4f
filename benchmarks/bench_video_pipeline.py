"""Beyond the official protocol on the HoloLens sample: measurement-frame count, online keyframe selection,
confidence thresholds and the multi-view consistency filter, all scored on the same 146 reference frames.

    python benchmarks/bench_video_pipeline.py [--models itermvs-blendedmvs[,patchmatchnet,planesweep,...]]
        [--threads 1] [--online-nmeas 2,4] [--thresholds 0.3,0.7,0.9] [--filter-on a,b] [--frames N]
        [--no-index] [--no-fusion] [--fusion-window 14] [--fusion-prior auto|on|off] [--json PATH]

``--models`` takes the published-weight entries of ``bench_mvs_accuracy.MODELS`` and any ``bench_models.CONFIGS``
name (``planesweep``; ``dvmvs_pairnet``, ``dvmvs_fusionnet``, ``mvsnet_64``, ``mvdepthnet`` with the conformance
fixtures' generated weights: they run through every row, their accuracy means nothing).

Common to every row (the protocol of ``bench_mvs_accuracy.py`` / ``mvs-depth run``): frames of
``shared/data/hololens-000`` fed at 540x360 and stretched by ``VideoPipeline`` to 320x256, depth range
0.25-20 m, prediction clipped to the range, ground truth nearest-resized and valid where >= 0.5 m, metrics
of ``eval.metrics.depth_metrics`` per frame, averaged over frames (``aggregate``). Every row is evaluated on
the **same 146 reference frames**: those of the official ``nmeas+2`` index (the ``nmeas+1/2/3`` indices
share them; the script checks it). ``coverage`` is the fraction of the ground-truth pixels that keep a
depth; abs_rel / a1 are computed on the covered pixels only, so a filter that lowers abs_rel also lowers
coverage. "dense" = every predicted pixel; the "filtered" columns are what the row's filter keeps.

Rows (``<row>`` ids as printed):

* ``a`` official protocol: reference + measurement frames of the official ``nmeas+2`` index (the first
  reference has only 1), through ``VideoPipeline.process_keyframe``; the baseline of the official 0.0970
  (IterMVS-BlendedMVS). filtered = confidence >= the estimator's recommended threshold
  (``models.base.recommended_threshold``: 0.5 for both models, what ``mvs-depth run`` reports).
* ``b`` more measurement frames: the official ``nmeas+3`` index (same reference frames, 3 measurement
  frames from the same DeepVideoMVS heuristic). filtered as in ``a``.
* ``c<N>`` online keyframe selection: the frames offered one by one, in order, up to the last reference
  frame (199 of the 200), to ``VideoPipeline.process`` (what the ROS node does per image) with
  ``n_measurement_frames=N`` and the default ``KeyframeConfig`` (the ROS node's defaults: 30-keyframe
  buffer, new keyframe at pose distance 0.1, measurement frames by the 0.15 m optimal-baseline penalty);
  the depth maps of the keyframes it makes are scored on the 146 reference frames (the script reports
  how many of them it made a keyframe and how many measurement sets equal the official index's).
  ``c2`` is the online counterpart of ``a``; ``c4`` (or any N given) has no official index.
* ``c<N>+fc`` temporal fusion, causal (``core.fusion``; what ``mvs-depth run`` and the node do by default): the
  same pipeline run with ``FusionConfig(mode="causal")`` and the estimator's ``fusion_defaults`` (``c<N>`` is
  that run's estimator output, ``DepthResult.info["unfused_depth"]``: unless a prior is on, nothing is fed back
  to the estimator, so it equals a run without fusion); ``ms`` = median fusion milliseconds per keyframe (``StepResult.fusion_ms``),
  beside the estimator's in the ``c<N>`` row. Where the fusion feeds the estimator a depth prior
  (``--fusion-prior``, by default where ``fusion_defaults`` say so: the plane sweep) the estimator's output
  depends on the fusion, so ``c<N>`` comes from a second run without fusion (and ``ms`` of ``c<N>+fc`` includes
  the prior's re-projection). ``c<N>+fo``: offline fusion (``fuse_offline``: the keyframes
  before *and* after each one) of all the keyframes that ``c<N>``'s run made; ``ms`` = mean per keyframe.
  ``--no-fusion`` skips both; ``--no-index`` skips ``a``/``b`` (then the paired lines compare with ``c<N>``).
* ``d@T`` depth maps of ``a``, filtered = confidence >= T (dense columns repeat ``a``).
* ``e*`` depth maps of ``a``, multi-view consistency (``recon.consistency.filter_depth_maps``): a pixel is
  kept when its 3D point, projected into a neighbouring keyframe's (unfiltered) depth map and back, lands
  within P px with a depth within R % (relative), in at least V of the K neighbouring keyframes (nearest
  by DeepVideoMVS' pose distance among the 146 keyframes of ``a``):

  - ``e-geo``: consistency only (no confidence threshold), 1 px, 1 %, >= 2 of 4 neighbours (past and
    future keyframes: an offline filter);
  - ``e-conf+geo``: confidence >= recommended threshold, then the same check (the setting of
    ``bench_recon.py``);
  - ``e-conf+geo-causal``: as ``e-conf+geo`` with neighbours only among *earlier* keyframes (what an
    online node has when a keyframe arrives); the first keyframe has no earlier one and keeps nothing,
    the second has one, so it cannot reach 2 views;
  - ``e-conf+geo-loose``: confidence >= recommended, 2 px, 2 %, >= 1 of 4 neighbours (offline).

  ``--filter-on a,c4`` repeats the ``d``/``e`` rows on the depth maps of another inference row (here
  ``c4``; ids prefixed ``c4:``, dense columns repeat that row).

``ms`` = median estimator milliseconds per keyframe (``StepResult.compute_ms``) for the inference rows,
mean filter milliseconds per keyframe (neighbour selection + check) for the ``e`` rows; measured at
``--threads`` torch threads on a shared machine, indicative only. Below the table, a paired line per
inference row: on how many of the 146 frames its dense abs_rel is lower than (equal to) ``a``'s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from bench_models import CONFIGS, generated_checkpoint
from bench_mvs_accuracy import MODELS, hololens_root  # registry name, checkpoint, official figures
from mvs_depth_ros.core.frame import DepthResult, Frame
from mvs_depth_ros.core.fusion import FusionConfig, KeyframeDepth, fuse_offline
from mvs_depth_ros.core.pipeline import PipelineConfig, StepResult, VideoPipeline
from mvs_depth_ros.data.scenes import load_scene, read_keyframe_index
from mvs_depth_ros.eval.metrics import aggregate, depth_metrics, write_metrics_json
from mvs_depth_ros.models.base import recommended_threshold
from mvs_depth_ros.models.registry import create_model, parse_model_options
from mvs_depth_ros.recon.consistency import ConsistencyConfig, filter_depth_maps, select_neighbors

INDEX = "keyframe+hololens-dataset+000+nmeas+{}"
MIN_DEPTH, MAX_DEPTH, MIN_GT = 0.25, 20.0, 0.5

# id -> (config without min_confidence, use the recommended confidence threshold, causal neighbours)
CONSISTENCY = {
    "e-geo": (ConsistencyConfig(max_reproj_px=1.0, max_rel_depth=0.01, min_views=2, n_neighbors=4), False, False),
    "e-conf+geo": (ConsistencyConfig(max_reproj_px=1.0, max_rel_depth=0.01, min_views=2, n_neighbors=4), True, False),
    "e-conf+geo-causal": (ConsistencyConfig(max_reproj_px=1.0, max_rel_depth=0.01, min_views=2, n_neighbors=4),
                          True, True),
    "e-conf+geo-loose": (ConsistencyConfig(max_reproj_px=2.0, max_rel_depth=0.02, min_views=1, n_neighbors=4),
                         True, False),
}


@dataclass
class Run:
    """Depth maps of one inference variant on the reference frames, in index order."""

    results: List[DepthResult]
    frames: List[Frame]                 # reference frames at the working resolution (K, pose, GT)
    measurements: List[List[str]]
    ms: List[float]
    notes: List[str] = field(default_factory=list)
    fusion_ms: List[float] = field(default_factory=list)
    made: list = field(default_factory=list)     # online rows: every keyframe step with depth, in order

    @property
    def threshold(self) -> float:
        return recommended_threshold(self.results[0])


class Frames:
    """Full-resolution frames of the scene, each read once (same object, so the pipeline's prepared frames
    and the estimators' feature caches hit when a frame is used again)."""

    def __init__(self, scene):
        self.scene, self._cache = scene, {}

    def __getitem__(self, i: int) -> Frame:
        if i not in self._cache:
            self._cache[i] = self.scene.frame(i)
        return self._cache[i]

    def named(self, name: str) -> Frame:
        return self[self.scene.index_of(name)]


def _stem(name: str) -> str:
    return Path(name).stem


def run_index(est, frames: Frames, index, n_meas: int, width: int, height: int) -> Run:
    pipe = VideoPipeline(est, PipelineConfig(width=width, height=height, n_measurement_frames=n_meas,
                                             fusion=FusionConfig(mode="off")))
    run = Run([], [], [], [])
    for ref, meas in index:
        _record(run, pipe.process_keyframe(frames.named(ref), [frames.named(m) for m in meas]))
    return run


def run_online(est, frames: Frames, refs: Sequence[str], n_meas: int, width: int, height: int,
               indices: Dict[int, list], fusion: Optional[FusionConfig] = None) -> Dict[str, Run]:
    """Offer the frames in order until the last reference frame; keep the keyframes that are references.

    With ``fusion`` the pipeline fuses causally; returns ``{"": estimator output, "fc": causal fusion,
    "fo": offline fusion of all the keyframes made}`` (the estimator's output is the same with or without
    fusion: nothing is fed back to it), else ``{"": estimator output}``."""
    fusion = fusion if fusion is not None else FusionConfig(mode="off")
    pipe = VideoPipeline(est, PipelineConfig(width=width, height=height, n_measurement_frames=n_meas,
                                             fusion=fusion))
    wanted = set(refs)
    got: Dict[str, StepResult] = {}
    made: List[StepResult] = []
    last = max(frames.scene.index_of(r) for r in refs)
    for i in range(last + 1):
        step = pipe.process(frames[i])
        name = _stem(step.frame.name)
        if step.result is not None:
            made.append(step)
        if step.result is not None and name in wanted:
            got[name] = step
    missing = [r for r in refs if r not in got]
    if missing:
        raise SystemExit(f"online selection (n_meas={n_meas}) made no keyframe with depth for {len(missing)} "
                         f"reference frames ({missing[:5]} ...): the rows would not be comparable")
    run = Run([], [], [], [])
    for r in refs:
        _record(run, got[r])
    run.made = made
    run.notes.append(f"{len(got)}/{len(refs)} reference frames made keyframes ({pipe.counters.keyframes} "
                     f"keyframes from {pipe.counters.frames} frames)")
    off = indices.get(n_meas)
    if off is not None:
        same_set = sum(set(m) == {_stem(x) for x in om} for m, (_, om) in zip(run.measurements, off))
        same_order = sum(m == [_stem(x) for x in om] for m, (_, om) in zip(run.measurements, off))
        run.notes.append(f"measurement sets equal to the official nmeas+{n_meas} index: {same_set}/{len(refs)} "
                         f"(same order: {same_order})")
    else:
        run.notes.append(f"no official nmeas+{n_meas} index; mean measurement frames "
                         f"{np.mean([len(m) for m in run.measurements]):.2f}")
    if fusion.mode == "off":
        return {"": run}
    prior = pipe.fusion.config.prior and est.accepts_prior
    causal = Run(run.results, run.frames, run.measurements, [got[r].fusion_ms for r in refs],
                 [f"{pipe.counters.fused}/{pipe.counters.predictions} predictions fused"
                  + (" (the fused state fed back to the estimator as a depth prior)" if prior else "")],
                 fusion_ms=[got[r].fusion_ms for r in refs])
    if prior:
        # the estimator's output depends on the fusion state: its row (and the offline fusion, which has no
        # prior) come from a run without fusion
        raw = run_online(est, frames, refs, n_meas, width, height, indices, replace(fusion, mode="off"))[""]
        made = raw.made
        made_raw = [(s.result.depth, s.result.confidence) for s in made]
    else:
        raw = Run([replace(r, depth=r.info["unfused_depth"], confidence=r.info["unfused_confidence"], fused=False)
                   for r in run.results], run.frames, run.measurements,
                  [got[r].compute_ms - got[r].fusion_ms for r in refs], run.notes)
        made_raw = [(s.result.info["unfused_depth"], s.result.info["unfused_confidence"]) for s in made]
    t0 = time.perf_counter()
    off = fuse_offline([KeyframeDepth(d, c, s.result.K, s.frame.T_world_cam) for (d, c), s in zip(made_raw, made)],
                       replace(pipe.fusion.config, mode="offline"))
    off_ms = (time.perf_counter() - t0) * 1e3 / len(made)
    by_name = {_stem(s.frame.name): o for s, o in zip(made, off)}
    offline = Run([replace(r, depth=by_name[n].depth, confidence=by_name[n].confidence) for r, n in
                   zip(raw.results, refs)], run.frames, run.measurements, [off_ms] * len(refs),
                  [f"offline fusion over the {len(made)} keyframes made"])
    return {"": raw, "fc": causal, "fo": offline}


def _record(run: Run, step: StepResult) -> None:
    run.results.append(step.result)
    run.frames.append(step.frame)
    run.measurements.append([_stem(m.name) for m in step.measurements])
    run.ms.append(step.compute_ms)


def score(depths: Sequence[np.ndarray], frames: Sequence[Frame]) -> Tuple[dict, List[Optional[dict]]]:
    rows = [depth_metrics(d, f.depth_gt, min_gt=MIN_GT, clip=(MIN_DEPTH, MAX_DEPTH)) for d, f in zip(depths, frames)]
    return aggregate(rows), rows


def consistency_filter(run: Run, key: str) -> Tuple[List[np.ndarray], float]:
    base, use_conf, causal = CONSISTENCY[key]
    cfg = ConsistencyConfig(min_confidence=run.threshold if use_conf else 0.0, max_reproj_px=base.max_reproj_px,
                            max_rel_depth=base.max_rel_depth, min_views=base.min_views,
                            n_neighbors=base.n_neighbors)
    poses = [f.T_world_cam for f in run.frames]
    t0 = time.perf_counter()
    neighbors = select_neighbors(poses, cfg.n_neighbors, causal=causal)
    res = filter_depth_maps([r.depth for r in run.results], [f.K for f in run.frames], poses,
                            [r.confidence for r in run.results], cfg, neighbors=neighbors)
    ms = (time.perf_counter() - t0) * 1e3 / len(run.results)
    return res.depths, ms


def describe_consistency(key: str, thr: float) -> str:
    c, use_conf, causal = CONSISTENCY[key]
    conf = f"conf>={thr:g} + " if use_conf else ""
    return (f"{conf}{c.max_reproj_px:g}px/{100 * c.max_rel_depth:g}%/>={c.min_views} of {c.n_neighbors} "
            f"{'earlier' if causal else 'nearest'} kf")


def table(rows: List[dict]) -> str:
    iw, vw, fw = (max(len(r[k]) for r in rows) for k in ("id", "variant", "filter"))
    head = (f"{'row':<{iw}} {'variant':<{vw}} | {'abs_rel':>7} {'a1':>6} {'cov':>6} | {'filter':<{fw}} | "
            f"{'abs_rel':>7} {'a1':>6} {'cov':>6} | {'ms':>5}")
    lines = [f"{'':<{iw}} {'':<{vw}} | {'dense':^21} | {'':<{fw}} | {'filtered':^21} |", head, "-" * len(head)]
    for r in rows:
        d, f = r["dense"], r["filtered"]
        ms = f"{r['ms']:>5.0f}" if r.get("ms") is not None else f"{'-':>5}"
        lines.append(f"{r['id']:<{iw}} {r['variant']:<{vw}} | {d['abs_rel']:>7.4f} {d['a1']:>6.4f} "
                     f"{d['coverage']:>6.4f} | {r['filter']:<{fw}} | {f['abs_rel']:>7.4f} {f['a1']:>6.4f} "
                     f"{f['coverage']:>6.4f} | {ms}")
    return "\n".join(lines)


def make_estimator(key: str, shared: Path, device: str, tmp: Path, options: Optional[dict] = None):
    """(estimator, official abs_rel or None, official a1 or None) of a ``--models`` entry: the published
    weights of ``bench_mvs_accuracy.MODELS``, or a ``bench_models.CONFIGS`` name (planesweep; fixture-generated
    weights for the models without published ones here: they run, their accuracy means nothing); ``options``:
    further estimator options (``--model-option``)."""
    if key in MODELS:
        model, ck_parts, off_rel, off_a1 = MODELS[key]
        return (create_model(model, checkpoint=str(shared.joinpath(*ck_parts)), device=device, min_depth=MIN_DEPTH,
                             max_depth=MAX_DEPTH, **(options or {})), off_rel, off_a1)
    if key not in CONFIGS:
        raise SystemExit(f"unknown model {key!r}: one of {', '.join([*MODELS, *CONFIGS])}")
    model, ck, extra = CONFIGS[key]
    fixed = parse_model_options(extra[1::2])
    if ck and ck.startswith("generated:"):
        ck = generated_checkpoint(model, ck.split(":", 1)[1], tmp)
        if ck is None:
            raise SystemExit(f"{key}: its conformance fixture is not in the shared folder")
    elif ck:
        ck = shared / ck
    return (create_model(model, checkpoint=str(ck) if ck else None, device=device, min_depth=MIN_DEPTH,
                         max_depth=MAX_DEPTH, **{**fixed, **(options or {})}), None, None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="itermvs-blendedmvs", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--online-nmeas", default="2,4", help="measurement-frame counts of the online rows c<N>")
    ap.add_argument("--thresholds", default="0.3,0.7,0.9", help="extra confidence thresholds of the d rows")
    ap.add_argument("--filter-on", default="a", help="inference rows the d/e filters are applied to (a, b, c<N>)")
    ap.add_argument("--frames", type=int, default=0, help="first N reference frames only (0 = all 146; smoke test)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                    help="estimator option for every --models entry (as mvs-depth run), repeatable")
    ap.add_argument("--no-index", action="store_true", help="skip the official-index rows a and b")
    ap.add_argument("--no-fusion", action="store_true", help="skip the temporal fusion rows c<N>+fc / c<N>+fo")
    ap.add_argument("--fusion-window", type=int, default=FusionConfig.window)
    ap.add_argument("--fusion-prior", default="auto", choices=("auto", "on", "off"),
                    help="causal rows: the fused state fed back to the estimator as a depth prior (auto: where the "
                    "estimator's fusion_defaults say so)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    root = hololens_root(args.shared)
    if root is None:
        return 2
    shared = root.parents[1]                 # <shared>/data/hololens-000
    scene = load_scene(root)
    frames = Frames(scene)
    indices = {n: read_keyframe_index(root / "indices" / INDEX.format(n)) for n in (1, 2, 3)
               if (root / "indices" / INDEX.format(n)).is_file()}
    refs = [_stem(r) for r, _ in indices[2]]
    for n, idx in indices.items():
        if [_stem(r) for r, _ in idx] != refs:
            raise SystemExit(f"the nmeas+{n} index has other reference frames than nmeas+2: rows not comparable")
    if args.frames:
        refs = refs[:args.frames]
        indices = {n: idx[:args.frames] for n, idx in indices.items()}
    online = [int(x) for x in args.online_nmeas.split(",") if x.strip()]
    thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    filter_on = [x.strip() for x in args.filter_on.split(",") if x.strip()]
    print(f"HoloLens sample: {len(refs)} reference frames (official nmeas+2 index), {args.width}x{args.height}, "
          f"depth {MIN_DEPTH:g}-{MAX_DEPTH:g} m, GT >= {MIN_GT:g} m, {args.threads} thread(s), {args.device}",
          flush=True)

    fusion = None if args.no_fusion else FusionConfig(mode="causal", window=args.fusion_window,
                                                      prior={"on": True, "off": False}.get(args.fusion_prior))
    out = {}
    tmp = tempfile.TemporaryDirectory()
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        est, off_rel, off_a1 = make_estimator(key, shared, args.device, Path(tmp.name),
                                              parse_model_options(args.model_option))
        runs: Dict[str, Tuple[str, Run]] = {}
        t0 = time.perf_counter()
        if not args.no_index:
            runs["a"] = ("official index nmeas+2", run_index(est, frames, indices[2], 2, args.width, args.height))
            if 3 in indices:
                runs["b"] = ("official index nmeas+3", run_index(est, frames, indices[3], 3, args.width, args.height))
        for n in online:
            for suffix, run in run_online(est, frames, refs, n, args.width, args.height, indices, fusion).items():
                label = {"": "", "fc": " + causal fusion (ms: fusion only)",
                         "fo": " + offline fusion (ms: fusion only)"}[suffix]
                runs[f"c{n}" + (f"+{suffix}" if suffix else "")] = (f"online keyframes, {n} meas. frames{label}", run)
        print(f"{key}: {len(runs)} inference variants in {time.perf_counter() - t0:.0f} s", flush=True)

        rows, per_frame_dense = [], {}
        for rid, (variant, run) in runs.items():
            dense, dense_rows = score([r.depth for r in run.results], run.frames)
            filt, _ = score([r.filtered(run.threshold) for r in run.results], run.frames)
            per_frame_dense[rid] = dense_rows
            rows.append(dict(id=rid, variant=variant, dense=dense, filter=f"conf>={run.threshold:g}", filtered=filt,
                             ms=statistics.median(run.ms)))
        for base in filter_on:
            if base not in runs:
                continue
            variant, run = runs[base]
            dense = next(r["dense"] for r in rows if r["id"] == base)
            prefix = "" if base == "a" else f"{base}:"
            for t in thresholds:
                filt, _ = score([r.filtered(t) for r in run.results], run.frames)
                rows.append(dict(id=f"{prefix}d@{t:g}", variant=f"{variant} (= {base})", dense=dense,
                                 filter=f"conf>={t:g}", filtered=filt, ms=None))
            for ck in CONSISTENCY:
                depths, ms = consistency_filter(run, ck)
                filt, _ = score(depths, run.frames)
                rows.append(dict(id=f"{prefix}{ck}", variant=f"{variant} (= {base})", dense=dense,
                                 filter=describe_consistency(ck, run.threshold), filtered=filt, ms=ms))

        official = f"; official (nmeas+2 index): abs_rel {off_rel:.4f}, a1 {off_a1:.4f}" if off_rel else ""
        print(f"\n{key}: {est.describe()}{official}")
        print(table(rows))
        base = next(iter(runs))
        base_rows = per_frame_dense[base]
        for rid, (_, run) in runs.items():
            if rid == base:
                continue
            pairs = [(x["abs_rel"], y["abs_rel"]) for x, y in zip(per_frame_dense[rid], base_rows)
                     if x is not None and y is not None and np.isfinite(x["abs_rel"]) and np.isfinite(y["abs_rel"])]
            better, equal = sum(x < y for x, y in pairs), sum(x == y for x, y in pairs)
            diff = np.mean([x - y for x, y in pairs]) if pairs else float("nan")
            notes = "; ".join(run.notes)
            print(f"  {rid}: dense abs_rel lower than {base}'s on {better}/{len(pairs)} frames, equal on {equal} (mean "
                  f"per-frame difference {diff:+.4f}){'; ' + notes if notes else ''}")
        out[key] = {"official": {"abs_rel": off_rel, "a1": off_a1}, "rows": rows,
                    "measurements": {rid: run.measurements for rid, (_, run) in runs.items()}}
        sys.stdout.flush()

    if args.json:
        write_metrics_json(args.json, {"settings": vars(args), "models": out}, [])
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
