"""Where the optional shared data, weights and fixtures live.

Never bundled: ``MVS_DEPTH_SHARED`` names the folder; in a source checkout ``../shared`` beside the
repository is used when present. Everything that needs it must work (or skip clearly) without it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Optional[Path]:
    env = os.environ.get("MVS_DEPTH_SHARED")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    p = REPO_ROOT.parent / "shared"
    return p if p.is_dir() else None


def shared_path(*parts: str) -> Optional[Path]:
    """``shared_dir()/parts`` when it exists, else None."""
    root = shared_dir()
    if root is None:
        return None
    p = root.joinpath(*parts)
    return p if p.exists() else None
