"""Top-1 / top-5 classification accuracy over a data loader, with each scored image's top-1 class."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@dataclass(frozen=True)
class TopK:
    figures: dict[str, float]  # {"top1", "top5", "count"}, accuracies in percent
    labels: list[int]  # per scored image, in the loader's order
    predicted: list[int]  # the top-1 class of each of those images


@torch.inference_mode()
def topk_accuracy(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "accuracy",
                  total: int | None = None) -> TopK:
    """Top-1/top-5 over ``loader``; top-5 is top-k with k = number of classes when fewer than 5.
    ``total``: the number of batches, for the progress bar, where ``loader`` has no length."""
    # Everything stays on the device until the end: one host sync per evaluation, not per batch.
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    labels_seen, predicted = [], []
    for images, labels in tqdm(loader, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        correct5 += (top == labels[:, None]).any(dim=-1).sum()
        labels_seen.append(labels)
        predicted.append(top[:, 0])
    labels_all = torch.cat(labels_seen).tolist() if labels_seen else []
    predicted_all = torch.cat(predicted).tolist() if predicted else []
    count = len(labels_all)
    correct1 = sum(y == p for y, p in zip(labels_all, predicted_all))
    figures = {"top1": 100.0 * correct1 / max(count, 1), "top5": 100.0 * correct5.item() / max(count, 1),
               "count": count}
    return TopK(figures, labels_all, predicted_all)
