"""Datasets: every source (synthetic, ImageFolder, the fine-grained benchmarks) yields a :class:`Split`."""
from gtaseg.data.split import Split

__all__ = ["Split"]
