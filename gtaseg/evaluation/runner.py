"""The batched evaluation pipeline: samples → DataLoader → model → [cls] attention → masks → scores.

Decoding, resizing and ground-truth preparation run in the loader's workers; images (and label maps)
reach the device through pinned memory with non-blocking copies; masks are scored on the device from
per-patch pixel counts (:mod:`gtaseg.evaluation.patch_scores`), so no mask is upsampled to pixels unless
COCO RLE output is asked for. One host sync per image, for its scores.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gtaseg.attention import check_layout, cls_attentions, resolve_blocks
from gtaseg.devices import pick_device
from gtaseg.errors import GtasegError
from gtaseg.evaluation.blocks import BlockAccumulator, BlockReport
from gtaseg.evaluation.coco import prediction_records
from gtaseg.evaluation.corloc import CorlocDataset, CorlocScore, collate, component_box, corloc_percent, score_box
from gtaseg.evaluation.inputs import Geometry, SegmentationDataset, SegSample
from gtaseg.evaluation.jaccard import ImageScore, jaccard
from gtaseg.evaluation.masks import mass_mask, merged_mask, to_pixels
from gtaseg.evaluation.patch_scores import best_of_heads, every_mask_iou, merged_ious, patch_targets, score_patches
from gtaseg.evaluation.protocols import HEADS, PRESETS, EvalProtocol
from gtaseg.models import ModelInfo, load_model

__all__ = ["HEADS", "EvalProtocol", "EvalResult", "BlockReport", "CorlocResult", "evaluate", "evaluate_corloc", "load_checked"]


def load_checked(ckpt: str, protocol: EvalProtocol, arch: str | None = None) -> tuple[nn.Module, ModelInfo, dict]:
    """Load ``ckpt`` and check the protocol fits it (block, image size, box head), in one-line errors; also the
    model's part of a report (ckpt, arch, heads)."""
    model, info = load_model(ckpt, arch=arch)
    check_layout(model, range(len(model.blocks)))  # before any data is read, and before .attn is looked up
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    if not -depth <= protocol.block < depth:
        raise GtasegError(f"--block {protocol.block}: {info.arch} has blocks 0..{depth - 1} (or -1..-{depth})")
    if protocol.image_size < info.patch_size:
        raise GtasegError(f"--image-size {protocol.image_size} is smaller than the patch size {info.patch_size}")
    if protocol.box_head is not None and not 0 <= protocol.box_head < heads:
        raise GtasegError(f"--box-head {protocol.box_head}: {info.arch} has heads 0..{heads - 1} "
                          f"(--protocol {protocol.name} uses head {PRESETS[protocol.name].box_head})")
    return model, info, {"ckpt": ckpt, "arch": info.arch, "heads": heads}


def protocol_masks(attention: Tensor, protocol: EvalProtocol, grid: tuple[int, int], heads: bool = True,
                   merged: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """[..., H, N] attention → per-head masks [..., H, N] and the merged mask [..., N] of the protocol."""
    head_masks = mass_mask(attention, protocol.mass) if heads else None
    merged_masks = (merged_mask(attention, protocol.mass, grid, protocol.blur_sigma, protocol.min_component)
                    if merged else None)
    return head_masks, merged_masks


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                      collate_fn=collate_fn)


def _bar(total: int, progress: bool, desc: str = "eval") -> tqdm:
    # On stderr whether or not it is a terminal, as training's bar: a run from a script or a scheduler's log
    # still shows where a long evaluation stands, and its ETA.
    return tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)


@dataclass
class EvalResult:
    settings: EvalProtocol
    geometry: Geometry
    block: int  # resolved, non-negative
    scores: list[ImageScore]
    seconds: float
    records: list[dict] = field(default_factory=list)  # COCO RLE records, when asked for
    blocks: BlockReport | None = None

    def jaccard_of(self, variant: str) -> float | None:
        """The Jaccard (percent) of ``variant``, ``best`` or ``merged``; None when the protocol did not run it
        or no image has an object class."""
        p = self.settings
        if not (p.best if variant == "best" else p.merged):
            return None
        if p.average == "pooled":
            pairs = ([(c.inter, c.union) for s in self.scores for c in s.classes.values()] if variant == "best"
                     else [s.merged_counts for s in self.scores if s.merged_counts is not None])
            union = sum(u for _, u in pairs)
            return 100.0 * sum(i for i, _ in pairs) / union if union else None
        values = [getattr(s, variant) for s in self.scores]
        if p.empty == "zero":  # Leopart: images without objects score 0 and stay in the mean
            values = [0.0 if v is None and not s.has_objects else v for v, s in zip(values, self.scores)]
        return jaccard(values)

    @property
    def jaccard_best(self) -> float | None:
        return self.jaccard_of("best")

    @property
    def jaccard_merged(self) -> float | None:
        return self.jaccard_of("merged")

    @property
    def without_objects(self) -> list[str | int]:
        return [s.id for s in self.scores if not s.has_objects]

    @property
    def images_per_second(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else float("inf")

    def card(self) -> dict:
        return self.settings.card(block=self.block, crop=self.geometry.crop, patch_size=self.geometry.patch_size)

    def to_json(self) -> dict:
        out = {
            "jaccard": {"best": self.jaccard_best, "merged": self.jaccard_merged},
            "images": len(self.scores),
            "scored": len(self.scores) - len(self.without_objects),
            "without_objects": self.without_objects,
            "protocol": self.card(),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "per_image": [s.to_json() for s in self.scores],
        }
        if self.blocks is not None:
            out["per_block"] = self.blocks.to_json()
        return out


def evaluate(model: nn.Module, info: ModelInfo, samples: Sequence[SegSample], settings: EvalProtocol, *,
             batch_size: int = 8, workers: int = 2, device: str = "auto", progress: bool = True,
             export_masks: bool = False, per_block: bool = False) -> EvalResult:
    """Score every sample under ``settings``; ``export_masks`` also keeps COCO RLE records of the masks,
    ``per_block`` also scores every head of every block (one forward still: all blocks are captured)."""
    if settings.resize == "none":
        raise ValueError("resize 'none' (native size) is for CorLoc only: a Jaccard batch needs one image size")
    dev = pick_device(device)
    (block,) = resolve_blocks(model, [settings.block])
    blocks = resolve_blocks(model, None) if per_block else [block]
    main = blocks.index(block)
    geometry = Geometry(settings.image_size, info.patch_size)
    p = geometry.patch_size
    loader = _loader(SegmentationDataset(samples, geometry, info.mean, info.std, settings.resize),
                     batch_size, workers, dev)
    model = model.eval().to(dev)
    scores, records = [], []
    acc = BlockAccumulator() if per_block else None
    start = time.perf_counter()
    with torch.inference_mode(), _bar(len(samples), progress) as bar:
        for images, labels, indices, (heights, widths) in loader:
            attention = cls_attentions(model, images.to(dev, non_blocking=True), blocks)  # [B, L, H, N]
            labels = labels.to(dev, non_blocking=True)
            heads, merged = protocol_masks(attention, settings, geometry.grid, heads=settings.best or per_block,
                                           merged=settings.merged or per_block)
            for j, i in enumerate(indices.tolist()):
                targets = patch_targets(labels[j], p, settings.void)
                head_j = heads[j, main] if settings.best else None
                merged_j = merged[j, main] if settings.merged else None
                score = score_patches(samples[i].id, targets, head_j, merged_j)
                scores.append(score)
                if acc is not None:
                    acc.add("per_head", every_mask_iou(heads[j], targets))
                    acc.add("best", best_of_heads(heads[j], targets))
                    acc.add("merged", merged_ious(merged[j], targets))
                if export_masks:
                    pixels = (None if head_j is None else to_pixels(head_j, geometry.grid, p),
                              None if merged_j is None else to_pixels(merged_j, geometry.grid, p))
                    records.extend(prediction_records(score, (int(heights[j]), int(widths[j])), geometry, *pixels))
            bar.update(len(indices))
    report = acc.report(blocks) if acc else None
    return EvalResult(settings, geometry, block, scores, time.perf_counter() - start, records, report)


@dataclass
class CorlocResult:
    settings: EvalProtocol
    geometry: Geometry
    block: int
    scores: list[CorlocScore]
    seconds: float

    @property
    def corloc(self) -> float | None:
        return corloc_percent(self.scores)

    @property
    def without_boxes(self) -> list[str | int]:
        return [s.id for s in self.scores if s.gt_boxes == 0]

    def card(self) -> dict:
        native = self.settings.resize == "none"  # no S: each image keeps its size, padded to the patch
        return self.settings.card("corloc", block=self.block, crop=None if native else self.geometry.crop,
                                  patch_size=self.geometry.patch_size,
                                  **({"image_size": None} if native else {}))

    def to_json(self) -> dict:
        counted = [s for s in self.scores if s.gt_boxes > 0]
        return {
            "corloc": {"percent": self.corloc, "correct": sum(s.correct for s in counted), "images": len(counted),
                       "without_boxes": self.without_boxes},
            "protocol": self.card(),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(len(self.scores) / self.seconds, 3) if self.seconds > 0 else None,
            "per_image": [s.to_json() for s in self.scores],
        }


def attention_boxes(attention: Tensor, protocol: EvalProtocol, grid: tuple[int, int], patch_size: int) -> list:
    """[B, H, N] [cls] attention on a ``grid`` of patches → one pixel box per image (None where the mask
    has no component)."""
    if protocol.box_head is None:
        _, masks = protocol_masks(attention, protocol, grid, heads=False)
    else:
        masks = mass_mask(attention[:, protocol.box_head], protocol.mass)
    grids = masks.reshape(-1, *grid).cpu().numpy()
    return [component_box(g, patch_size, protocol.connectivity, protocol.components) for g in grids]


def evaluate_corloc(model: nn.Module, info: ModelInfo, samples: Sequence, settings: EvalProtocol, *,
                    batch_size: int = 8, workers: int = 2, device: str = "auto", progress: bool = True) -> CorlocResult:
    """One box per image (eval/PROTOCOL.md section 10) against its ground-truth boxes."""
    dev = pick_device(device)
    (block,) = resolve_blocks(model, [settings.block])
    geometry = Geometry(settings.image_size, info.patch_size)
    dataset = CorlocDataset(samples, geometry, info.mean, info.std, settings.resize, settings.masks)
    loader = _loader(dataset, batch_size, workers, dev, collate)
    model = model.eval().to(dev)
    scores = []
    start = time.perf_counter()
    with torch.inference_mode(), _bar(len(samples), progress, "corloc") as bar:
        for groups, gt_boxes, indices in loader:
            boxes: list = [None] * len(indices)
            for images, positions in groups:  # one group per image size (one group unless resize is none)
                grid = (images.shape[-2] // geometry.patch_size, images.shape[-1] // geometry.patch_size)
                attention = cls_attentions(model, images.to(dev, non_blocking=True), [block])[:, 0]  # [b, H, N]
                for k, box in zip(positions, attention_boxes(attention, settings, grid, geometry.patch_size)):
                    boxes[k] = box
            for box, gt, i in zip(boxes, gt_boxes, indices):
                scores.append(score_box(samples[i].id, box, gt.numpy(), settings.iou_rule))
            bar.update(len(indices))
    return CorlocResult(settings, geometry, block, scores, time.perf_counter() - start)
