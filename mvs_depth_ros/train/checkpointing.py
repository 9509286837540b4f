"""Saving trained weights in the official formats the loaders read, and resumable training state.

* IterMVS / PatchmatchNet: one file ``{'model': {'module.' + name: tensor}, 'optimizer': state, 'epoch': n}``
  (the published layout, ``nn.DataParallel`` prefix included), readable by
  ``load_checkpoint`` (``weights_only=True``) and ``create_model(name, checkpoint=path)``.
* DeepVideoMVS: a folder with one plain state-dict file per module, named by load order
  (pairnet ``0_feature_extractor``, ``1_feature_pyramid``, ``2_encoder``, ``3_decoder``; fusionnet
  ``0_feature_extractor``, ``1_feature_pyramid``, ``2_encoder``, ``3_lstm_fusion``, ``4_decoder``),
  readable by ``create_model('dvmvs_pairnet' | 'dvmvs_fusionnet', checkpoint=folder)``.
* ``train_state.pt``: everything needed to continue a run bit for bit (network and optimizer state,
  AMP scaler, step, RNG states, the run's configuration), only tensors and plain containers so it also
  loads with ``weights_only=True``.

Every write goes to a temporary name first and is renamed into place, so an interrupted save never
leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from ..models.checkpoints import load_checkpoint

STATE_FILE = "train_state.pt"


def _atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_official(adapter, path: os.PathLike | str, optimizer: Optional[torch.optim.Optimizer] = None,
                  epoch: int = 0) -> Path:
    """Write the adapter's network in its official checkpoint format; returns the path written."""
    path = Path(path)
    net = adapter.net
    if adapter.checkpoint_kind == "folder":
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for stem, attr in net.module_files:
            torch.save(_cpu(getattr(net, attr).state_dict()), tmp / stem)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path
    obj = {"model": {"module." + k: v for k, v in _cpu(net.state_dict()).items()},
           "optimizer": optimizer.state_dict() if optimizer is not None else {},
           "epoch": int(epoch)}
    _atomic_save(obj, path)
    return path


def official_name(adapter, step: int) -> str:
    """File / folder name of a saved checkpoint (``model_000123.ckpt`` as the official scripts name them)."""
    return f"{adapter.name}_{step:06d}" if adapter.checkpoint_kind == "folder" else f"model_{step:06d}.ckpt"


def save_train_state(path: os.PathLike | str, *, adapter, optimizer: torch.optim.Optimizer, scaler, step: int,
                     config: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> Path:
    """Resumable state: network, optimizer, AMP scaler, step, torch/CUDA/generator RNG states, config."""
    state = {
        "step": int(step),
        "model": _cpu(adapter.net.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "config": dict(config),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    _atomic_save(state, Path(path))
    return Path(path)


def load_train_state(path: os.PathLike | str) -> Dict[str, Any]:
    """Read a ``train_state.pt`` safely (``weights_only``)."""
    state = load_checkpoint(os.fspath(path))
    if not isinstance(state, Mapping) or "step" not in state or "model" not in state:
        raise ValueError(f"{path}: not a training state written by mvs-depth train")
    return dict(state)


def restore_train_state(state: Mapping[str, Any], *, adapter, optimizer, scaler,
                        generators: Mapping[str, torch.Generator]) -> int:
    """Load a state from :func:`load_train_state` into the run's objects; returns the step to continue at."""
    from ..models.checkpoints import load_state_dict_strict
    load_state_dict_strict(adapter.net, state["model"], what=f"{adapter.name} (train state)")
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_torch"])
    if torch.cuda.is_available() and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    for k, g in generators.items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])
    return int(state["step"])
