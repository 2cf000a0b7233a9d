"""The one dataset description shared by every loader, the sampler and the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Split:
    """One split of a classification dataset, as file paths.

    ``masks[i]`` is an optional object mask for ``samples[i]`` (a PNG where non-zero, non-255 pixels are the
    object and 255 is void), used to score [cls] attention on the dataset itself.
    """

    samples: list[tuple[str, int]]
    classes: list[str]
    masks: list[str | None] | None = field(default=None)
    # How many images the split was sampled from (gtaseg.data.sampling); None for a split as listed.
    drawn_from: int | None = field(default=None)

    def __post_init__(self) -> None:
        if self.masks is not None and len(self.masks) != len(self.samples):
            raise ValueError(f"{len(self.masks)} masks for {len(self.samples)} samples")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def by_class(self) -> dict[int, list[int]]:
        """Each label's sample indices, ordered by file name: a draw from them depends on the files, not on the
        order a loader listed them in."""
        out: dict[int, list[int]] = {}
        for i in sorted(range(len(self.samples)), key=lambda i: self.samples[i][0]):
            out.setdefault(self.samples[i][1], []).append(i)
        return dict(sorted(out.items()))

    def first_classes(self, n: int) -> "Split":
        """The samples of the first ``n`` classes (in ``classes`` order, so their labels stay 0..n-1): a smaller
        benchmark that keeps every class's images."""
        keep = [i for i, (_, label) in enumerate(self.samples) if label < n]
        masks = None if self.masks is None else [self.masks[i] for i in keep]
        return Split([self.samples[i] for i in keep], self.classes[:n], masks)

    def subset(self, indices: list[int]) -> "Split":
        masks = None if self.masks is None else [self.masks[i] for i in indices]
        return Split([self.samples[i] for i in indices], self.classes, masks)
