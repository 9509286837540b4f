"""Safe checkpoint loading with readable errors.

Only tensors and plain containers are accepted: ``torch.load(weights_only=True)`` or safetensors.
A pickle that would run code is refused with a clear message, never executed.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from typing import Dict, Iterable, Mapping, Optional

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching the network."""


def load_checkpoint(path: str) -> Mapping[str, object]:
    """Load a checkpoint file safely (``.safetensors`` or a torch file read with ``weights_only=True``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a declared dependency
            raise CheckpointError(f"{path}: safetensors is not installed") from exc
        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not a checkpoint: the file is empty")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    is_zip = magic == b"PK\x03\x04"          # torch's format since 1.6
    if not is_zip and magic[:1] != b"\x80":     # nor a (legacy torch) pickle of protocol >= 2
        raise CheckpointError(f"{path}: not a checkpoint (corrupt or not a checkpoint): neither a torch zip "
                              f"archive nor a pickle (starts with {magic!r})")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to its own error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"{path}: refused to load: unsafe pickle, the file contains objects other than tensors and plain "
                f"containers (loading it would execute arbitrary code). Only weights_only-safe torch files and "
                f".safetensors are accepted. Details: {detail}") from exc
        raise CheckpointError(f"{path}: refused to load: not a weights_only-safe torch checkpoint (a raw pickle, "
                              f"or corrupt): {detail}") from exc
    except Exception as exc:  # noqa: BLE001 - the legacy unpickler fails on arbitrary bytes in arbitrary ways
        first = (str(exc).splitlines() or [""])[0]
        kind = "truncated or corrupt" if is_zip or isinstance(exc, (EOFError, zipfile.BadZipFile)) or "EOF" in first \
            else "corrupt or not a checkpoint"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({kind}): "
                              f"{type(exc).__name__}: {first}") from exc


def extract_state_dict(obj: Mapping[str, object], keys: Iterable[str] = ("model", "state_dict"),
                       strip_prefix: Optional[str] = "module.") -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: ``obj[key]`` for the first present key, else ``obj``.

    Strips an ``nn.DataParallel`` ``module.`` prefix when every key carries it.
    """
    sd = obj
    for k in keys:
        if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
            sd = obj[k]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint does not contain a state dict of tensors "
                              f"(top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj)})")
    sd = dict(sd)
    if strip_prefix and sd and all(k.startswith(strip_prefix) for k in sd):
        sd = {k[len(strip_prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "") -> None:
    """``module.load_state_dict(strict=True)`` with one readable error listing every mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def fmt(items, limit=12):
            return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {fmt(shapes, 6)}")
        raise CheckpointError(f"checkpoint does not match {what or type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
