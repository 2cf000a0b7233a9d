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


def fit(width: int, height: int, size: int) -> tuple[int, int]:
    """(height, width) of a ``width`` × ``height`` picture scaled to fit a ``size`` × ``size`` cell, aspect kept."""
    scale = size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _pad(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``array`` ([h, w, ...]) centred on a ``size`` × ``size`` canvas of ``fill``."""
    canvas = np.full((size, size) + array.shape[2:], fill, dtype=array.dtype)
    top, left = (size - array.shape[0]) // 2, (size - array.shape[1]) // 2
    canvas[top:top + array.shape[0], left:left + array.shape[1]] = array
    return canvas


def _unsquash(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [S, S] map over the squashed square the model saw, back on the picture's ``height`` × ``width``
    (nearest neighbour: NaN stays NaN)."""
    size = values.shape[0]
    rows = np.arange(height) * size // height
    cols = np.arange(width) * size // width
    return values[rows[:, None], cols[None, :]]


def short_label(text: str, fontsize: float, inches: float = 0.8 * _CELL_INCHES, lines: int = 2) -> str:
    """``text`` in at most ``lines`` lines that fit ``inches`` (a character is about 0.6 em; the default leaves a
    cell's margins free), the middle elided with … when it is longer: file and checkpoint names have no spaces
    to wrap at."""
    width = max(8, int(inches * 72 / (0.6 * fontsize)))
    room = width * lines
    if len(text) > room:
        head = (room - 1) // 2
        text = text[:head] + "…" + text[len(text) - (room - 1 - head):]
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


def grid_figure(images: Sequence[Image.Image], names: Sequence[str], columns: Sequence[Column], *, size: int,
                mode: str) -> Figure:
    """The grid: first column the images, then one column per model. Each picture keeps its aspect, padded to
    the square cell, and its maps are mapped back from the square the model saw onto it."""
    rows, cols = len(images), 1 + len(columns)
    # Constrained layout makes room for the titles and labels in every draw (tight_layout, once, fell short by a
    # pixel on two-line titles).
    fig = Figure(figsize=(_CELL_INCHES * cols, _CELL_INCHES * rows), dpi=size / _CELL_INCHES, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, im in enumerate(images):
        height, width = fit(im.width, im.height, size)
        shown = _pad(np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)), size, 255)
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(shown)
            if c > 0:
                ax.imshow(_overlay(_pad(_unsquash(columns[c - 1].maps[r], height, width), size, np.nan), mode))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(short_label("image" if c == 0 else columns[c - 1].label, 10), fontsize=10)
        axes[r, 0].set_ylabel(short_label(names[r], 8), fontsize=8)
    return fig


def render_grid(images: Sequence[Image.Image], names: Sequence[str], columns: Sequence[Column], *, size: int,
                mode: str, out: str | os.PathLike) -> None:
    """Write :func:`grid_figure` as a PNG."""
    fig = grid_figure(images, names, columns, size=size, mode=mode)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
