"""check-attention's gate: the thresholds a Jaccard must meet, and the JSON file (eval/gate.json) that sets them."""
from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtaseg.errors import GtasegError

# Free text in a gate file; every other key names an option of check-attention.
NOTE_KEY = "note"


@dataclass(frozen=True)
class Gate:
    """Thresholds on a Jaccard in percent, each None when not checked: ``min_jaccard`` absolute, ``min_ratio``
    (× the reference's Jaccard) and ``max_drop`` (points below it) relative to a reference model's."""

    min_jaccard: float | None = None
    min_ratio: float | None = None
    max_drop: float | None = None

    @property
    def relative(self) -> bool:
        return self.min_ratio is not None or self.max_drop is not None

    def checks(self, value: float, reference: float | None = None) -> list[tuple[str, bool]]:
        """Each threshold set as (what it compared, whether ``value`` met it); the relative ones need
        ``reference``, the reference model's Jaccard on the same images and protocol."""
        checks = []
        if self.min_jaccard is not None:
            checks.append((f"the minimum is {self.min_jaccard:.2f}", value >= self.min_jaccard))
        if self.min_ratio is not None:
            checks.append((f"{value / reference:.3f} × the reference's {reference:.2f} (allowed down to "
                           f"{self.min_ratio:g} ×)", value >= self.min_ratio * reference))
        if self.max_drop is not None:
            change = (f"dropped {reference - value:.2f} J from" if value <= reference
                      else f"rose {value - reference:.2f} J above")
            checks.append((f"{change} the reference's {reference:.2f} (allowed {self.max_drop:g})",
                           value >= reference - self.max_drop))
        return checks


def merge_options_file(path: str, opts: Mapping[str, Any], given: Collection[str],
                       cast: Callable[[str, Any], Any]) -> dict[str, Any]:
    """``opts`` with the values of the JSON object at ``path`` filled in, except the options in ``given`` (set
    on the command line, which win). ``cast(key, value)`` converts a file's value to the option's type or
    raises ValueError. A relative ``voc_root`` is relative to the file, so a gate file can point at data beside
    the repository."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GtasegError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise GtasegError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise GtasegError(f"{path}: expected a JSON object of option names")
    unknown = sorted(set(config) - set(opts) - {NOTE_KEY})
    if unknown:
        raise GtasegError(f"{path}: unknown keys {', '.join(unknown)} (use {', '.join(sorted(opts))})")
    merged = dict(opts)
    for key, value in config.items():
        if key == NOTE_KEY or key in given:
            continue
        try:
            value = cast(key, value)
        except ValueError as e:
            raise GtasegError(f"{path}: {key}: {e}") from None
        merged[key] = str(Path(path).parent / value) if key == "voc_root" else value
    return merged
