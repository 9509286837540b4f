"""Pictures for people: depth colour maps and side-by-side panels (input, prediction, GT, error, confidence)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from matplotlib import colormaps

_INVALID = np.array([40, 40, 40], np.uint8)


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo") -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 RGB; NaN/inf pixels are dark grey."""
    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    finite = np.isfinite(values)
    span = max(vmax - vmin, 1e-9)
    idx = np.zeros(values.shape, np.int64)
    idx[finite] = np.clip((values[finite] - vmin) / span * 255.0, 0, 255).astype(np.int64)
    out = lut[idx]
    out[~finite] = _INVALID
    return out


def colorize_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Depth coloured in inverse depth (near = red, far = blue), which spreads indoor ranges evenly."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / depth
    return colorize(inv, 1.0 / max_depth, 1.0 / min_depth, "turbo")


def label(img: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(img).copy()
    scale = max(0.35, img.shape[1] / 800.0)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def depth_panel(image: np.ndarray, depth: np.ndarray, gt: Optional[np.ndarray], confidence: Optional[np.ndarray],
                depth_range: Tuple[float, float], title: str = "", max_rel_error: float = 0.3) -> np.ndarray:
    """One row: input | predicted depth | GT depth | abs_rel error | confidence (RGB uint8)."""
    lo, hi = depth_range
    if gt is not None:
        finite_gt = gt[np.isfinite(gt) & (gt > 0)]
        if finite_gt.size:  # colour both with the GT's range so they can be compared by eye
            lo, hi = max(lo, float(np.percentile(finite_gt, 1)) * 0.8), min(hi, float(np.percentile(finite_gt, 99)) * 1.2)
    tiles: List[np.ndarray] = [label(image, title or "input"), label(colorize_depth(depth, lo, hi), "prediction")]
    if gt is not None:
        tiles.append(label(colorize_depth(gt, lo, hi), "ground truth"))
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.abs(depth - gt) / gt
        err[~(np.isfinite(gt) & (gt > 0))] = np.nan
        tiles.append(label(colorize(err, 0.0, max_rel_error, "inferno"), f"abs rel error (0-{max_rel_error:g})"))
    if confidence is not None:
        tiles.append(label(colorize(confidence, 0.0, 1.0, "viridis"), "confidence"))
    return np.concatenate(tiles, axis=1)


def save_rgb(path: os.PathLike | str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    if not cv2.imwrite(os.fspath(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def contact_sheet(panels: Sequence[np.ndarray], max_rows: int = 6) -> np.ndarray:
    """Stack up to ``max_rows`` panels (same width) vertically, evenly picked."""
    if not panels:
        raise ValueError("no panels")
    idx = np.unique(np.linspace(0, len(panels) - 1, min(max_rows, len(panels))).round().astype(int))
    rows = [panels[i] for i in idx]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
