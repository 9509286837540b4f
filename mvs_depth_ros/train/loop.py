"""The training loop behind ``mvs-depth train`` and ``mvs-depth finetune``.

* AdamW over all parameters; optional two-stage schedule: the feature extractor frozen (no gradient,
  batch-norm statistics kept) for the first ``freeze_features_steps`` steps, then trained with the rest;
  constant or cosine learning rate (a pure function of the step, so resuming needs no scheduler state).
* fusionnet (recurrent): trained on subsequences of ``sequence_length`` consecutive keyframes
  (``data.keyframe_sequences``), loss summed over the steps; DeepVideoMVS' gradual unfreezing is
  ``lstm_decoder_steps`` (only the ConvLSTM cell and the decoder trained), then ``freeze_features_steps``
  (everything but the feature extractor), then everything. The ``frozen`` log column is 2, 1, 0 for these.
* Losses: ``supervised`` (multi-scale L1 against ground truth), ``self-supervised`` (photometric +
  smoothness, optional feature-metric term) or ``both``.
* Deterministic for a given ``seed`` (sample order, PatchmatchNet's random initialisation, torch's RNG)
  and resumable bit for bit from ``train_state.pt``.
* CPU or CUDA; mixed precision (``amp``) only on CUDA (autocast float16 + GradScaler); requesting it on
  the CPU logs a line and trains in float32.
* Progress bar (tqdm), one CSV row per step (``train_log.csv``), TensorBoard scalars when
  ``tensorboard`` is set and installed. Checkpoints in the official format (see ``checkpointing``).
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..models.base import resolve_device
from .adapters import ModelAdapter, create_adapter
from .checkpointing import (STATE_FILE, load_train_state, official_name, restore_train_state, save_official,
                            save_train_state)
from .data import SampleOrder, SequenceSample, TrainingSample, collate, keyframe_sequences
from .losses import SelfSupervisedLoss, SupervisedLoss, photometric_loss

log = logging.getLogger(__name__)

LOSSES = ("supervised", "self-supervised", "both")
LOG_FIELDS = ("step", "epoch", "lr", "frozen", "loss", "l1", "photometric", "smoothness", "feature_metric",
              "seconds")


@dataclass
class TrainConfig:
    model: str = "itermvs"
    init_checkpoint: Optional[str] = None      # official weights to start from (None: random init)
    out_dir: str = "runs/train"
    loss: str = "supervised"
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"              # constant | cosine
    freeze_features_steps: int = 0             # stage 1 length (0: no frozen stage)
    lstm_decoder_steps: int = 0                # fusionnet: only ConvLSTM + decoder trained for the first N steps
    sequence_length: int = 4                   # fusionnet: keyframes per training subsequence (official: 8)
    sequence_stride: int = 1                   # fusionnet: a subsequence starts every N keyframes
    hidden_depth: str = "predicted"            # fusionnet: hidden-state warp depth, predicted | ground_truth
    grad_clip: float = 1.0                     # max global gradient norm (0: off)
    min_depth: float = 0.25
    max_depth: float = 20.0
    inverse_l1: Optional[bool] = None          # None: the model's convention (inverse depth except PatchmatchNet)
    smoothness: float = 1e-3
    feature_metric: float = 0.0
    automask: bool = True
    photometric_scales: int = 2                # self-supervised: the finest N depth outputs
    bn_train: bool = True                      # False: batch-norm layers keep their running statistics
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    save_every: int = 0                        # also checkpoint every N steps (0: only at the end)
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.sequence_length < 1 or self.sequence_stride < 1:
            raise ValueError("sequence_length and sequence_stride must be >= 1")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Trainer:
    """One training run over a fixed list of samples. A recurrent model (fusionnet) trains on
    :class:`SequenceSample` items; keyframe samples given to it are cut with ``keyframe_sequences``."""

    def __init__(self, config: TrainConfig, samples: Sequence[TrainingSample | SequenceSample]):
        self.config = c = config
        torch.manual_seed(c.seed)
        self.device = resolve_device(c.device)
        options = {"hidden_depth": c.hidden_depth} if c.model == "dvmvs_fusionnet" else {}
        self.adapter: ModelAdapter = create_adapter(c.model, self.device, c.min_depth, c.max_depth, seed=c.seed,
                                                    **options)
        if c.init_checkpoint:
            self.adapter.load_weights(c.init_checkpoint)
        if c.lstm_decoder_steps and not self.adapter.recurrent_modules():
            raise ValueError(f"lstm_decoder_steps: {c.model} has no ConvLSTM (fusionnet only)")
        if self.adapter.recurrent and samples and not isinstance(samples[0], SequenceSample):
            n = len(samples)
            samples = keyframe_sequences(samples, c.sequence_length, c.sequence_stride)
            if not samples:
                raise ValueError(f"{c.model}: no run of {c.sequence_length} consecutive keyframes in {n} keyframe "
                                 f"samples (lower sequence_length or give more frames)")
        if not self.adapter.recurrent and any(isinstance(s, SequenceSample) for s in samples):
            raise TypeError(f"{c.model} trains on single keyframes, not sequences")
        ref = samples[0].reference if samples else None
        if ref is not None:
            self.adapter.check_size(ref.width, ref.height)
        self.samples = list(samples)
        self.order = SampleOrder(len(self.samples), c.batch_size, c.seed)
        self.use_amp = bool(c.amp and self.device.type == "cuda")
        if c.amp and not self.use_amp:
            log.info("AMP requested on %s: mixed precision is CUDA-only, training in float32", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.optimizer = torch.optim.AdamW(self.adapter.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        inverse = c.inverse_l1 if c.inverse_l1 is not None else c.model != "patchmatchnet"
        lo, hi = self.adapter.fixed_range or (c.min_depth, c.max_depth)
        self.supervised = SupervisedLoss(lo, hi, inverse=inverse)
        self.self_supervised = SelfSupervisedLoss(smoothness=c.smoothness, automask=c.automask,
                                                  feature_metric=c.feature_metric)
        self.generators = {"patchmatch_init": self.adapter.generator} if hasattr(self.adapter, "generator") else {}
        self.out_dir = Path(c.out_dir)
        self.step = 0
        self.skipped = 0

    # ------------------------------------------------------------------------------------------ lr
    def lr_at(self, step: int) -> float:
        c = self.config
        if c.lr_schedule == "cosine":
            return c.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, c.steps) / c.steps))
        return c.lr

    # --------------------------------------------------------------------------------------- resume
    def resume(self) -> int:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} in {self.out_dir}")
        state = load_train_state(path)
        saved = TrainConfig.from_dict(state.get("config", {}))
        for key in ("model", "loss", "batch_size", "seed"):
            if getattr(saved, key) != getattr(self.config, key):
                log.warning("resuming with %s=%r, the saved run used %r", key, getattr(self.config, key),
                            getattr(saved, key))
        self.step = restore_train_state(state, adapter=self.adapter, optimizer=self.optimizer, scaler=self.scaler,
                                        generators=self.generators)
        self._truncate_log(self.step)
        log.info("resumed %s at step %d", self.out_dir, self.step)
        return self.step

    def _truncate_log(self, step: int) -> None:
        path = self.out_dir / "train_log.csv"
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    # ----------------------------------------------------------------------------------------- step
    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            steps = self.adapter.forward_steps(batch)
        terms: Dict[str, torch.Tensor] = {}
        for step_batch, out in steps:                       # recurrent models: every term summed over the steps
            for k, v in self._terms(step_batch, out).items():
                terms[k] = terms[k] + v if k in terms else v
        return terms

    def _terms(self, batch: Dict[str, Any], out) -> Dict[str, torch.Tensor]:
        c = self.config
        depths = [d.float() for d in out.depths]
        terms: Dict[str, torch.Tensor] = {}
        total = 0.0
        if c.loss in ("supervised", "both"):
            sup = self.supervised(depths, batch)
            total = total + sup["loss"]
            terms["l1"] = sup["l1"]
        if c.loss in ("self-supervised", "both"):
            feats = None
            if out.features is not None:
                feats = (out.features[0].float(), out.features[1].float())
            ss = self.self_supervised(depths[:max(1, c.photometric_scales)], batch, feats)
            total = total + ss["loss"]
            terms.update({k: v for k, v in ss.items() if k != "loss"})
        terms["loss"] = total
        return terms

    def train_step(self, step: int) -> Dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        frozen = 2 if step < c.lstm_decoder_steps else int(step < c.freeze_features_steps)
        self.adapter.train(c.bn_train)
        if frozen == 2:
            self.adapter.set_only_recurrent_trained()
        else:
            self.adapter.set_features_frozen(bool(frozen))
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batch = self.adapter.collate([self.samples[i] for i in self.order.batch(step)], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.compute_loss(batch)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            self.skipped += 1
            log.warning("step %d: non-finite loss, update skipped (%d so far)", step, self.skipped)
        else:
            self.scaler.scale(loss).backward()
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in self.adapter.net.parameters() if p.grad is not None],
                                               c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        row: Dict[str, float] = {"step": step + 1, "epoch": self.order.epoch_of(step), "lr": lr,
                                 "frozen": frozen, "seconds": time.perf_counter() - t0}
        row.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
        return row

    # ------------------------------------------------------------------------------------------ run
    def save(self) -> Path:
        epoch = self.order.epoch_of(max(self.step - 1, 0))
        path = save_official(self.adapter, self.out_dir / official_name(self.adapter, self.step), self.optimizer,
                             epoch)
        save_train_state(self.out_dir / STATE_FILE, adapter=self.adapter, optimizer=self.optimizer,
                         scaler=self.scaler, step=self.step, config=asdict(self.config), generators=self.generators)
        return path

    def run(self, resume: bool = False) -> Dict[str, Any]:
        """Train up to ``config.steps``; returns ``{'history': rows, 'checkpoint': path, ...}``."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        log_path = self.out_dir / "train_log.csv"
        new_log = not log_path.is_file() or not resume
        fh = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.DictWriter(fh, LOG_FIELDS, extrasaction="ignore")
        if new_log:
            writer.writeheader()
        tb = None
        if c.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception as exc:  # tensorboard not installed
                log.warning("TensorBoard logging unavailable (%s); CSV log only", exc)
        bar = None
        if c.progress:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc=f"train {c.model}", unit="step", dynamic_ncols=True)
        history: List[Dict[str, float]] = []
        checkpoint = None
        try:
            while self.step < c.steps:
                row = self.train_step(self.step)
                self.step += 1
                history.append(row)
                writer.writerow(row)
                fh.flush()
                if tb is not None:
                    for k in ("loss", "l1", "photometric", "smoothness", "feature_metric", "lr"):
                        if k in row:
                            tb.add_scalar(f"train/{k}", row[k], self.step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", frozen=row["frozen"])
                if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                    self.save()
            checkpoint = self.save()
        finally:
            fh.close()
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        return {"history": history, "checkpoint": str(checkpoint), "skipped": self.skipped,
                "state": str(self.out_dir / STATE_FILE)}


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_estimator(estimator, samples: Sequence[TrainingSample], clip: Optional[Sequence[float]] = None,
                       min_gt: float = 0.5, progress: bool = False) -> Dict[str, Any]:
    """Run an estimator (built by ``create_model``, the inference path) on samples and report:

    * ``photometric``: mean over frames of the self-supervised objective (automasked SSIM + L1, min over
      the measurement frames) at the predicted depth;
    * ``reprojection``: mean over frames of the min-over-sources reprojection error over the pixels some
      measurement frame sees (no auto-masking);
    * depth metrics (``eval.metrics.aggregate``) when the references carry ground truth.

    A recurrent estimator (fusionnet) carries its state from one sample to the next within a segment of
    consecutive keyframes (``TrainingSample.segment``) and starts from ``initial_state()`` at each
    segment, as the pipeline does; give the samples in stream order.
    """
    from ..eval.metrics import aggregate, depth_metrics
    photo, reproj, rows, times = [], [], [], []
    it = samples
    if progress:
        from tqdm import tqdm
        it = tqdm(samples, desc=f"eval {estimator.name}", unit="kf", dynamic_ncols=True)
    state, segment = estimator.initial_state(), None
    for s in it:
        if not estimator.recurrent or s.segment != segment:
            state, segment = estimator.initial_state(), s.segment
        t0 = time.perf_counter()
        res = estimator.estimate(s.reference, s.measurements, state)
        state = res.state
        times.append((time.perf_counter() - t0) * 1e3)
        batch = collate([s])
        depth = torch.from_numpy(res.depth)[None, None]
        with torch.no_grad():
            r = photometric_loss(batch["images"], depth, batch["K"], batch["T_world_cam"], automask=True)
        photo.append(float(r.loss))
        seen = torch.isfinite(r.reprojection)
        reproj.append(float(r.reprojection[seen].mean()) if bool(seen.any()) else float("nan"))
        if s.reference.depth_gt is not None:
            rows.append(depth_metrics(res.depth, s.reference.depth_gt, min_gt=min_gt, clip=clip))
    out: Dict[str, Any] = {"frames": len(samples), "photometric": float(np.mean(photo)) if photo else float("nan"),
                           "reprojection": float(np.nanmean(reproj)) if reproj else float("nan"),
                           "median_ms": float(np.median(times)) if times else float("nan")}
    if rows:
        out["depth"] = aggregate(rows)
    return out
