"""Per-block and per-head Jaccard: which blocks (and heads) keep localisation and which lose it in
fine-tuning. Accumulated on the device by the runner; written here as a table, CSV and a PNG heat map."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from gtaseg.io import atomic_write


@dataclass
class BlockReport:
    """Jaccard (percent, mean over the images with objects) of every block: each head alone (the mean over
    an image's classes of that head's IoU), the best head per class, and the merged mask."""

    blocks: list[int]
    per_head: list[list[float | None]]  # [L][H]
    best: list[float | None]
    merged: list[float | None]

    def to_json(self) -> dict:
        return {"blocks": self.blocks, "per_head": self.per_head, "best": self.best, "merged": self.merged}

    @property
    def columns(self) -> list[str]:
        return ["block"] + [f"head{h}" for h in range(len(self.per_head[0]))] + ["best", "merged"]

    def rows(self) -> list[list]:
        return [[b, *heads, best, merged] for b, heads, best, merged in zip(self.blocks, self.per_head, self.best, self.merged)]

    def table(self) -> str:
        def cell(v) -> str:
            return f"{v:>8}" if isinstance(v, int) else f"{'-' if v is None else f'{v:.2f}':>8}"
        lines = ["".join(f"{c:>8}" for c in self.columns)]
        lines += ["".join(cell(v) for v in row) for row in self.rows()]
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.columns)
        writer.writerows([["" if v is None else v for v in row] for row in self.rows()])
        atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))

    def write_png(self, path: str | os.PathLike, title: str = "") -> None:
        """A heat map, blocks down, heads then best and merged across, each cell labelled with its value."""
        values = np.array([[np.nan if v is None else v for v in row[1:]] for row in self.rows()], dtype=float)
        cols = self.columns[1:]
        fig = Figure(figsize=(0.8 * len(cols) + 1.5, 0.4 * len(self.blocks) + 1.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(1.0, float(np.nanmax(values))) if np.isfinite(values).any() else 1.0,
                          aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(self.blocks)), [str(b) for b in self.blocks], fontsize=8)
        ax.set_ylabel("block")
        ax.axvline(len(cols) - 2.5, color="white", linewidth=2)  # heads | best, merged
        for r in range(values.shape[0]):
            for c in range(values.shape[1]):
                if np.isfinite(values[r, c]):
                    ax.text(c, r, f"{values[r, c]:.0f}", ha="center", va="center", fontsize=7, color="white")
        fig.colorbar(image, ax=ax, label="Jaccard %")
        ax.set_title(title or "Jaccard per block and head", fontsize=9)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


class BlockAccumulator:
    """Sums on the device, one host sync at the end; NaN (an image without classes or foreground) is left
    out of its mean."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def add(self, name: str, values: Tensor) -> None:
        seen = ~torch.isnan(values)
        self.sums[name] = self.sums.get(name, 0) + torch.where(seen, values, 0.0)
        self.counts[name] = self.counts.get(name, 0) + seen.to(torch.float64)

    def mean(self, name: str) -> list:
        means = (100.0 * self.sums[name] / self.counts[name]).tolist()  # 0/0 → NaN → None

        def clean(v):
            return [clean(x) for x in v] if isinstance(v, list) else (None if v != v else v)
        return clean(means)

    def report(self, blocks: list[int]) -> BlockReport | None:
        if not self.sums:
            return None
        return BlockReport(blocks, self.mean("per_head"), self.mean("best"), self.mean("merged"))
