"""The batched evaluation pipeline: samples → DataLoader → model → [cls] attention → masks → scores.

Only images go to the device; masks come back as small patch grids and are scored on the CPU, so the
device never waits on per-class bookkeeping.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gtaseg.attention import cls_attention, resolve_blocks
from gtaseg.evaluation.coco import prediction_records
from gtaseg.evaluation.inputs import Geometry, SegmentationDataset, SegSample
from gtaseg.evaluation.jaccard import ImageScore, jaccard, score_image
from gtaseg.evaluation.masks import mass_mask, merged_mask, to_pixels
from gtaseg.devices import pick_device
from gtaseg.models import ModelInfo

HEADS = ("best", "merged", "both")


@dataclass(frozen=True)
class Settings:
    """The protocol's knobs (see eval/PROTOCOL.md)."""

    image_size: int = 480
    mass: float = 0.6
    block: int = -1
    heads: str = "both"

    def __post_init__(self) -> None:
        if self.heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {self.heads!r}")

    @property
    def best(self) -> bool:
        return self.heads in ("best", "both")

    @property
    def merged(self) -> bool:
        return self.heads in ("merged", "both")


@dataclass
class Prediction:
    """One image's ground truth and masks, at the protocol's crop×crop pixels."""

    sample: SegSample
    labels: Tensor  # uint8 [c, c]
    original_size: tuple[int, int]  # (H, W) of the file
    head_masks: Tensor | None  # bool [H, c, c]
    merged: Tensor | None  # bool [c, c]


@dataclass
class EvalResult:
    settings: Settings
    geometry: Geometry
    block: int  # resolved, non-negative
    scores: list[ImageScore]
    seconds: float
    records: list[dict] = field(default_factory=list)  # COCO RLE records, when asked for

    @property
    def jaccard_best(self) -> float | None:
        return jaccard(s.best for s in self.scores)

    @property
    def jaccard_merged(self) -> float | None:
        return jaccard(s.merged for s in self.scores)

    @property
    def without_objects(self) -> list[str | int]:
        return [s.id for s in self.scores if not s.has_objects]

    @property
    def images_per_second(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self) -> dict:
        return {
            "jaccard": {"best": self.jaccard_best, "merged": self.jaccard_merged},
            "images": len(self.scores),
            "scored": len(self.scores) - len(self.without_objects),
            "without_objects": self.without_objects,
            "protocol": {**asdict(self.settings), "block": self.block, "crop": self.geometry.crop,
                         "patch_size": self.geometry.patch_size, "resize": "bicubic", "label_resize": "nearest"},
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "per_image": [s.to_json() for s in self.scores],
        }


def predict(model: nn.Module, info: ModelInfo, samples: Sequence[SegSample], settings: Settings, *,
            batch_size: int = 8, workers: int = 2, device: str = "auto", progress: bool = True) -> Iterator[Prediction]:
    """Run the model over ``samples`` in batches and yield each image's masks in sample order."""
    dev = pick_device(device)
    geometry = Geometry(settings.image_size, info.patch_size)
    loader = DataLoader(SegmentationDataset(samples, geometry, info.mean, info.std), batch_size=batch_size,
                        num_workers=workers, pin_memory=dev.type == "cuda")
    model = model.eval().to(dev)
    # disable=None: a bar on a terminal, none in logs and CI output.
    bar = tqdm(total=len(samples), unit="img", desc="eval", disable=None if progress else True)
    with torch.inference_mode(), bar:
        for images, labels, indices, (heights, widths) in loader:
            attention = cls_attention(model, images.to(dev, non_blocking=True), settings.block)  # [B, H, N]
            heads = mass_mask(attention, settings.mass).cpu() if settings.best else None
            merged = merged_mask(attention, settings.mass).cpu() if settings.merged else None
            for j, i in enumerate(indices.tolist()):
                yield Prediction(
                    sample=samples[i], labels=labels[j], original_size=(int(heights[j]), int(widths[j])),
                    head_masks=None if heads is None else to_pixels(heads[j], geometry.grid, geometry.patch_size),
                    merged=None if merged is None else to_pixels(merged[j], geometry.grid, geometry.patch_size))
            bar.update(len(indices))


def evaluate(model: nn.Module, info: ModelInfo, samples: Sequence[SegSample], settings: Settings, *,
             batch_size: int = 8, workers: int = 2, device: str = "auto", progress: bool = True,
             export_masks: bool = False) -> EvalResult:
    """Score every sample under ``settings``; ``export_masks`` also keeps COCO RLE records of the masks."""
    (block,) = resolve_blocks(model, [settings.block])
    geometry = Geometry(settings.image_size, info.patch_size)
    scores, records = [], []
    start = time.perf_counter()
    for p in predict(model, info, samples, settings, batch_size=batch_size, workers=workers, device=device,
                     progress=progress):
        score = score_image(p.sample.id, p.labels, p.head_masks, p.merged)
        scores.append(score)
        if export_masks:
            records.extend(prediction_records(score, p.original_size, geometry, p.head_masks, p.merged))
    return EvalResult(settings, geometry, block, scores, time.perf_counter() - start, records)
