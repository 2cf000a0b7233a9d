"""What a training run measures about its model: top-1 on a split, the drift of its [cls] logits from the
starting weights, and, where the data has object masks, the Jaccard and attention mass of its [cls] attention.

``gtaseg train`` logs the drift every metrics interval and writes all of it to final.json (and the test
predictions of :func:`split_scores` to test_predictions.csv); ``gtaseg eval-acc`` scores a saved model through
the same :func:`split_accuracy`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gtaseg.attention import cls_logits
from gtaseg.data.pipeline import LoaderSettings, stack_readable
from gtaseg.data.split import Split
from gtaseg.errors import GtasegError
from gtaseg.evaluation.accuracy import topk_accuracy
from gtaseg.models import ModelInfo
from gtaseg.methods import METHODS, Layout
from gtaseg.regularizers import guidance_l2
from gtaseg.rundir import Prediction, prediction_ids

# Test images on which the [cls]-logit drift from the initial weights is logged during training.
PROBE_IMAGES = 16


def split_scores(model: nn.Module, info: ModelInfo, split: Split, loading: LoaderSettings,
                 desc: str = "accuracy") -> tuple[dict[str, float], list[Prediction]]:
    """Top-1/top-5 (%) and the count of images scored on ``split``, with the run's eval transform, and the
    prediction for each scored image, from the same pass. Unreadable images are handled by the loading's
    bad-image policy; with ``skip`` they are neither scored nor predicted. The model is left in eval mode."""
    dataset = loading.dataset(split, info.mean, info.std)
    model.eval()
    scores = topk_accuracy(model, loading.batches(dataset), loading.device, desc=desc, total=loading.count(dataset))
    # The loader keeps the split's order and drops exactly the images the policy skipped, so the scored images
    # are the split's without those.
    ids = prediction_ids([p for p, _ in split.samples])
    scored = [(i, y) for i, (p, y) in zip(ids, split.samples) if str(p) not in loading.bad_images.skipped]
    if [y for _, y in scored] != scores.labels:
        raise GtasegError(f"the {scores.figures['count']} images scored do not line up with the split's "
                          f"{len(scored)} readable images (a file changed during the run?)")
    names = split.classes
    return scores.figures, [Prediction(i, names[y], names[p]) for (i, y), p in zip(scored, scores.predicted)]


def split_accuracy(model: nn.Module, info: ModelInfo, split: Split, loading: LoaderSettings,
                   desc: str = "accuracy") -> dict[str, float]:
    """:func:`split_scores` without the per-image predictions."""
    return split_scores(model, info, split, loading, desc)[0]


class DriftProbe:
    """A fixed batch of test images and the starting weights' [cls] logits on it: the drift Σ_{blocks,heads}
    ‖A − A₀‖² (mean over the probe) is measured the same way for every method."""

    def __init__(self, model: nn.Module, info: ModelInfo, test: Split, loading: LoaderSettings):
        n = len(test)
        picks = sorted({round(i * (n - 1) / max(PROBE_IMAGES - 1, 1)) for i in range(min(PROBE_IMAGES, n))})
        data = loading.dataset(test.subset(picks), info.mean, info.std)
        self.images = stack_readable(data, loading.bad_images).to(loading.device)
        self.start = self._logits(model)
        self.entries = METHODS["gta"].entries(Layout.of(model, len(model.blocks), self.start.shape[-1]))

    @torch.inference_mode()
    def _logits(self, model: nn.Module) -> Tensor:
        was_training = model.training
        model.eval()
        logits = cls_logits(model, self.images)
        model.train(was_training)
        return logits

    def drift(self, model: nn.Module) -> float:
        return float(guidance_l2(self._logits(model), self.start))


def attention_quality(model: nn.Module, info: ModelInfo, test: Split, data: str, loading: LoaderSettings,
                      probe: DriftProbe) -> dict[str, float | None]:
    """Drift (summed and per entry); on the test masks, when there are any, the Jaccard of the last block's [cls]
    attention at the training resolution (recorded as jaccard_image_size); for synthetic data, the attention
    mass on the object and, for a localised cue, on the cue."""
    from gtaseg.data.finegrained import DATASETS
    from gtaseg.evaluation.protocols import EvalProtocol
    from gtaseg.evaluation.runner import evaluate as evaluate_masks
    from gtaseg.evaluation.split_masks import mask_samples

    drift = probe.drift(model)
    out = {"drift": drift, "drift_per_entry": drift / probe.entries, "jaccard_best": None, "jaccard_merged": None,
           "jaccard_image_size": None}
    samples = mask_samples(test, data if data in DATASETS else None)
    samples = [s for s in samples if str(s.image) not in loading.bad_images.skipped]
    if samples:
        result = evaluate_masks(model, info, samples, EvalProtocol(image_size=loading.image_size),
                                batch_size=loading.batch_size, workers=loading.workers, device=str(loading.device),
                                progress=False)
        out.update(jaccard_best=result.jaccard_best, jaccard_merged=result.jaccard_merged,
                   jaccard_image_size=loading.image_size)
    if data == "synthetic":
        out.update(synthetic_masses(model, info, test, loading))
    return out


def synthetic_masses(model: nn.Module, info: ModelInfo, test: Split, loading: LoaderSettings) -> dict[str, float]:
    """Mean attention mass (%) on the object, and on the cue where the data has a localised one, over ``test``."""
    from gtaseg.data.synthetic import cue_mask_paths
    from gtaseg.evaluation.mass import attention_masses

    regions = {key: masks for key, masks in {"mass_object": test.masks, "mass_cue": cue_mask_paths(test)}.items()
               if masks}
    if not regions:
        return {}
    data = loading.dataset(test, info.mean, info.std)
    images = torch.stack([data[i][0] for i in range(len(data))]).to(loading.device)
    was_training = model.training
    model.eval()
    masses = attention_masses(model, images, regions, info.patch_size, loading.batch_size)
    model.train(was_training)
    return {key: 100.0 * sum(values) / len(values) for key, values in masses.items()}
