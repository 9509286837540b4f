"""Loading the official DeepVideoMVS weight folders.

The published weights are one file per module, named by their load order::

    pairnet/   0_feature_extractor 1_feature_pyramid 2_encoder 3_decoder
    fusionnet/ 0_feature_extractor 1_feature_pyramid 2_encoder 3_lstm_fusion 4_decoder

Each file is a plain state dict (``torch.save(module.state_dict())``). The only key difference across
torchvision versions is the FPN: the 2021 files name its convs ``fpn.inner_blocks.N.weight``, torchvision
>= 0.13 (and our module tree) ``fpn.inner_blocks.N.0.weight`` (same for ``layer_blocks``); that rename is
the one generic fix applied here.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpoints import CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_strict

PAIRNET_FILES: Tuple[Tuple[str, str], ...] = (
    ("0_feature_extractor", "feature_extractor"), ("1_feature_pyramid", "feature_shrinker"),
    ("2_encoder", "cost_volume_encoder"), ("3_decoder", "cost_volume_decoder"))
FUSIONNET_FILES: Tuple[Tuple[str, str], ...] = (
    ("0_feature_extractor", "feature_extractor"), ("1_feature_pyramid", "feature_shrinker"),
    ("2_encoder", "cost_volume_encoder"), ("3_lstm_fusion", "lstm_fusion"), ("4_decoder", "cost_volume_decoder"))

_LEGACY_FPN = re.compile(r"^(fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def upgrade_legacy_fpn_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``fpn.inner_blocks.N.weight`` -> ``fpn.inner_blocks.N.0.weight`` (and layer_blocks, bias); other keys kept."""
    return {_LEGACY_FPN.sub(r"\1.0.\2", k): v for k, v in state_dict.items()}


def find_module_file(folder: str, stem: str) -> Optional[str]:
    """The file for one module: ``stem`` exactly, or the single file starting with ``stem`` (``.pt``,
    ``.pth``, ``.safetensors`` or training-run suffixes); None when there is none."""
    exact = os.path.join(folder, stem)
    if os.path.isfile(exact):
        return exact
    matches = sorted(f for f in os.listdir(folder) if f.startswith(stem) and os.path.isfile(os.path.join(folder, f)))
    if len(matches) > 1:
        raise CheckpointError(f"{folder}: several candidate files for module {stem!r}: {matches}")
    return os.path.join(folder, matches[0]) if matches else None


def load_module_state(module: nn.Module, path: str, what: str) -> None:
    """Strictly load one official module file into ``module`` (legacy FPN names accepted)."""
    sd = upgrade_legacy_fpn_keys(extract_state_dict(load_checkpoint(path)))
    load_state_dict_strict(module, sd, what=f"{what} ({path})")


def load_weight_folder(net: nn.Module, folder: str, files: Sequence[Tuple[str, str]]) -> None:
    """Load every official module file of ``folder`` into the matching submodule of ``net``.

    All files are located before anything is loaded, so a wrong or incomplete folder is reported at once.
    """
    folder = os.fspath(folder)
    expected = ", ".join(stem for stem, _ in files)
    if not os.path.isdir(folder):
        raise CheckpointError(f"DeepVideoMVS checkpoint must be a folder holding the module files {expected}; "
                              f"got {folder!r}")
    paths = {stem: find_module_file(folder, stem) for stem, _ in files}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        hint = ""
        for name, layout in (("pairnet", PAIRNET_FILES), ("fusionnet", FUSIONNET_FILES)):
            if layout != tuple(files) and all(find_module_file(folder, stem) for stem, _ in layout):
                hint = f"; this folder holds the {name} weights"
        raise CheckpointError(f"{folder}: missing DeepVideoMVS module file(s) {', '.join(missing)} "
                              f"(expected {expected}; found {sorted(os.listdir(folder))}){hint}")
    for stem, attr in files:
        load_module_state(getattr(net, attr), paths[stem], what=f"DVMVS {attr}")
