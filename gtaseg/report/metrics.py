"""The numbers a run's ``final.json`` holds that the report's tables show, and how each is shown."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A number each run's ``final.json`` holds, as a table shows it."""

    key: str  # in final.json
    title: str
    spec: str = ".2f"  # format of the mean and the std
    bold_best: bool = True  # drift has no better end, so nothing is bold there
    optional: bool = False  # runs may lack it (no masks → no Jaccard): the CSV counts the runs that have it


TOP1 = Metric("top1", "top-1 accuracy (%)")
TOP5 = Metric("top5", "top-5 accuracy (%)")
VAL_TOP1 = Metric("val_top1", "validation top-1 accuracy (%)", optional=True)
# The last metrics.jsonl row's cross-entropy (mean over its log interval): whether a run reached the
# overfitting regime.
TRAIN_CE = Metric("train_ce", "train cross-entropy, last logged interval", spec=".3f", bold_best=False, optional=True)
ATTENTION = (Metric("jaccard_merged", "Jaccard, heads merged (%)", optional=True),
             Metric("jaccard_best", "Jaccard, best head (%)", optional=True),
             Metric("drift", "[cls] attention drift Σ‖A − A₀‖²", spec="#.3g", bold_best=False, optional=True),
             Metric("drift_per_entry", "[cls] attention drift per entry (mean over blocks, heads, patches)",
                    spec="#.3g", bold_best=False, optional=True),
             Metric("mass_object", "[cls] attention mass on the object (%)", optional=True),
             Metric("mass_cue", "[cls] attention mass on the shortcut cue (%)", bold_best=False, optional=True))
