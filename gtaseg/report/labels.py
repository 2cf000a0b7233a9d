"""How the report orders and names datasets, methods, sources and sampling rates."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gtaseg.data.finegrained import DATASETS
from gtaseg.methods import METHODS
from gtaseg.sweep.naming import path_name

DATASET_ORDER = tuple(DATASETS)
DATASET_TITLES = {**{name: info.title for name, info in DATASETS.items()}, "synthetic": "synthetic"}


def order(values: Iterable[Any], first: Sequence[Any] = ()) -> list:
    """The distinct values: those in ``first`` in its order, then the rest sorted."""
    values = set(values)
    return [v for v in first if v in values] + sorted(values - set(first), key=str)


def method_order(methods: Iterable[str]) -> list[str]:
    return order(methods, tuple(METHODS))


def dataset_order(datasets: Iterable[str]) -> list[str]:
    return order(datasets, DATASET_ORDER)


def source_label(source: str, labels: dict[str, dict[str, str]]) -> str:
    """A sweep's label for the source (or init) model, else its file name without the checkpoint suffix."""
    for key in ("source", "init"):
        if source in labels.get(key, {}):
            return labels[key][source]
    name = path_name(source)
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        name = name.removesuffix(suffix)
    return name


def rate_header(rate: float) -> str:
    return f"{rate * 100:g}%"
