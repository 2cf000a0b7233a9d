"""Paper-style figure: a grid with one row per image and one column per model, each cell the image with
that model's [cls] attention (or its thresholded mask) laid over it."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from gtaseg.attention import cls_attention
from gtaseg.data.folder import IMAGE_SUFFIXES
from gtaseg.errors import DataError
from gtaseg.evaluation.inputs import Geometry, image_tensor
from gtaseg.evaluation.masks import attention_map, merged_mask, to_pixels
from gtaseg.io import atomic_write
from gtaseg.models import ModelInfo

MODES = ("attention", "mask")
_MASK_COLOUR = np.array([1.0, 0.15, 0.1])  # red: visible on the sky, grass and skin of typical photos
_OVERLAY_ALPHA = 0.55
_CELL_INCHES = 2.4


@dataclass(frozen=True)
class Column:
    """One model's cells: a [S, S] map per image, NaN outside the crop the model saw."""

    label: str
    maps: list[np.ndarray]


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, or found (sorted, not recursively) in the folders named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    if not out:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return out


def model_maps(model: nn.Module, info: ModelInfo, images: Sequence[Image.Image], *, size: int, mode: str,
               mass: float = 0.6, block: int = -1, device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Per image, a [size, size] float map: attention (max over heads, scaled to [0, 1]) or the merged mask
    (0/1) of the evaluation protocol. The strip beyond the model's crop is NaN (drawn without overlay)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    geometry = Geometry(size, info.patch_size)
    batch = torch.stack([image_tensor(im, geometry, info.mean, info.std) for im in images]).to(device)
    with torch.inference_mode():
        attention = cls_attention(model.eval().to(device), batch, block)
    values = attention_map(attention) if mode == "attention" else merged_mask(attention, mass).float()
    pixels = to_pixels(values.cpu(), geometry.grid, geometry.patch_size).numpy()
    out = []
    for cell in pixels:
        full = np.full((size, size), np.nan, dtype=np.float32)
        full[: geometry.crop, : geometry.crop] = cell
        out.append(full)
    return out


def _overlay(values: np.ndarray, mode: str) -> np.ndarray:
    """[S, S] map → RGBA layer: a colour map for attention, a flat colour where the mask is on."""
    rgba = np.zeros(values.shape + (4,), dtype=np.float32)
    inside = ~np.isnan(values)
    if mode == "attention":
        rgba[inside] = colormaps["inferno"](values[inside])
        rgba[inside, 3] = _OVERLAY_ALPHA
    else:
        on = inside & (values > 0.5)
        rgba[on, :3] = _MASK_COLOUR
        rgba[on, 3] = _OVERLAY_ALPHA
    return rgba


def render_grid(images: Sequence[Image.Image], names: Sequence[str], columns: Sequence[Column], *, size: int,
                mode: str, out: str | os.PathLike) -> None:
    """Write the grid as a PNG: first column the images, then one column per model."""
    rows, cols = len(images), 1 + len(columns)
    fig = Figure(figsize=(_CELL_INCHES * cols, _CELL_INCHES * rows), dpi=size / _CELL_INCHES)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = [np.asarray(im.resize((size, size), Image.Resampling.BICUBIC)) for im in images]
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(shown[r])
            if c > 0:
                ax.imshow(_overlay(columns[c - 1].maps[r], mode))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image" if c == 0 else columns[c - 1].label, fontsize=10)
        axes[r, 0].set_ylabel(names[r], fontsize=8)
    fig.tight_layout(pad=0.3)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
