"""Top-1 / top-5 classification accuracy over a data loader."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.inference_mode()
def topk_accuracy(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "accuracy",
                  total: int | None = None) -> dict[str, float]:
    """``{"top1", "top5", "count"}`` in percent; top-5 is top-k with k = number of classes when fewer than 5.
    ``total``: the number of batches, for the progress bar, where ``loader`` has no length."""
    # Counts stay on the device until the end: one host sync per evaluation, not per batch.
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for images, labels in tqdm(loader, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=-1).sum()
        count += len(labels)
    return {"top1": 100.0 * correct1.item() / max(count, 1), "top5": 100.0 * correct5.item() / max(count, 1), "count": count}
