"""A model's attention scores kept in a folder beside it: ``<folder>/attention/<measure>.json``, each the report
that eval-voc (or eval-corloc) ``--out`` writes, plus the request it answered. A score is reused only when that
request (data folder, split, image ids and protocol) is the one asked for now, so that tables over many runs
can be rebuilt without scoring a model twice, and a changed protocol is never mixed with an old one."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gtaseg.errors import GtasegError
from gtaseg.evaluation.protocols import EvalProtocol
from gtaseg.io import write_json
from gtaseg.rundir import ATTENTION


class MissingWeights(GtasegError):
    """A score is not stored and the model's weights file is not there to make it."""


@dataclass(frozen=True)
class Measure:
    """One score of a model: the Jaccard of its attention masks on a VOC segmentation split (``metric`` =
    ``jaccard``), or its CorLoc on a VOC detection split (``corloc``), under ``protocol``."""

    name: str  # the file stem, e.g. voc224
    metric: str
    protocol: EvalProtocol
    root: Path
    split: str

    def prepare(self) -> Prepared:
        """The measure with its samples read (once, for every model it scores) and its request."""
        from gtaseg.data.voc import voc_box_samples, voc_samples

        samples = (voc_box_samples(self.root, self.split) if self.metric == "corloc"
                   else voc_samples(self.root, self.split, None, self.protocol.masks))
        # What a stored score must have answered to be reused: the data by folder name, split and its ids (so a
        # copied folder still matches), and every protocol setting.
        ids = hashlib.sha256("\n".join(str(s.id) for s in samples).encode()).hexdigest()[:16]
        request = {"metric": self.metric, "data": self.root.name, "split": self.split, "images": len(samples),
                   "ids_sha256": ids, "protocol": asdict(self.protocol)}
        return Prepared(self, samples, request)


@dataclass(frozen=True)
class Prepared:
    measure: Measure
    samples: list
    request: dict[str, Any]


def jaccard_measure(root: str | Path, protocol: EvalProtocol, split: str = "val") -> Measure:
    return Measure(f"voc{protocol.image_size}", "jaccard", protocol, Path(root), split)


def corloc_measure(root: str | Path, protocol: EvalProtocol, split: str = "trainval") -> Measure:
    return Measure(f"corloc{protocol.image_size}", "corloc", protocol, Path(root), split)


def summary(report: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a table shows from one stored report: ``best`` and ``merged`` Jaccard, or ``corloc``."""
    if "corloc" in report:
        return {"corloc": report["corloc"]["percent"]}
    return {"best": report["jaccard"]["best"], "merged": report["jaccard"]["merged"]}


def per_image(report: dict[str, Any], value: str) -> dict[str, float]:
    """Image id → that image's share of ``summary(report)[value]``, a fraction whose mean over the images, × 100,
    is the summary: 1 or 0 for CorLoc's hit, the image's Jaccard for ``best`` and ``merged`` (images the
    protocol skipped are left out)."""
    key = "correct" if value == "corloc" else value
    return {e["id"]: float(e[key]) for e in report["per_image"] if e.get(key) is not None}


def image_count(report: dict[str, Any]) -> int:
    """How many images of the split a stored report covers (for CorLoc, those with a ground-truth box)."""
    return report["corloc"]["images"] if "corloc" in report else report["images"]


def stored(folder: Path, prepared: Prepared) -> dict[str, Any] | None:
    path = folder / ATTENTION / f"{prepared.measure.name}.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("request") == prepared.request else None


def score_model(ckpt: str | Path, folder: Path, measures: Sequence[Prepared], *, batch_size: int = 8,
                workers: int = 2, device: str = "auto", log=print) -> dict[str, dict[str, Any]]:
    """measure name → the report of ``ckpt`` under it: stored in ``folder`` when it answers the same request,
    otherwise scored now (the model loaded once for all the missing measures) and stored. ``ckpt`` is any
    --ckpt spelling, or a Path to a weights file: MissingWeights when a score is missing and that file is gone."""
    from gtaseg.evaluation.runner import evaluate, evaluate_corloc, load_checked

    out = {p.measure.name: report for p in measures if (report := stored(folder, p)) is not None}
    missing = [p for p in measures if p.measure.name not in out]
    if not missing:
        return out
    if isinstance(ckpt, Path) and not ckpt.is_file():
        raise MissingWeights(f"{ckpt}: no such file, and no stored {missing[0].measure.name} score in {folder}")
    model, info, described = load_checked(str(ckpt), missing[0].measure.protocol)
    for p in missing:
        m = p.measure
        log(f"scoring {ckpt} on {m.root.name} ({m.split}, {len(p.samples)} images): {m.name}")
        run = evaluate_corloc if m.metric == "corloc" else evaluate
        result = run(model, info, p.samples, m.protocol, batch_size=batch_size, workers=workers, device=device)
        report = {"request": p.request, "model": described, **result.to_json()}
        write_json(folder / ATTENTION / f"{m.name}.json", report)
        out[m.name] = report
    return out
