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

SCORES_DIR = "attention"


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

    def samples(self) -> list:
        from gtaseg.data.voc import voc_box_samples, voc_samples

        if self.metric == "corloc":
            return voc_box_samples(self.root, self.split)
        return voc_samples(self.root, self.split, None, self.protocol.masks)

    def request(self, samples: Sequence) -> dict[str, Any]:
        """What a stored score must have answered to be reused: the data by folder name, split and its ids (so
        a copied folder still matches), and every protocol setting."""
        ids = hashlib.sha256("\n".join(str(s.id) for s in samples).encode()).hexdigest()[:16]
        return {"metric": self.metric, "data": self.root.name, "split": self.split, "images": len(samples),
                "ids_sha256": ids, "protocol": asdict(self.protocol)}


def jaccard_measure(root: str | Path, protocol: EvalProtocol, split: str = "val") -> Measure:
    return Measure(f"voc{protocol.image_size}", "jaccard", protocol, Path(root), split)


def corloc_measure(root: str | Path, protocol: EvalProtocol, split: str = "trainval") -> Measure:
    return Measure(f"corloc{protocol.image_size}", "corloc", protocol, Path(root), split)


def summary(report: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a table shows from one stored report: ``best`` and ``merged`` Jaccard, or ``corloc``."""
    if "corloc" in report:
        return {"corloc": report["corloc"]["percent"]}
    return {"best": report["jaccard"]["best"], "merged": report["jaccard"]["merged"]}


def image_count(report: dict[str, Any]) -> int:
    """How many images of the split a stored report covers (for CorLoc, those with a ground-truth box)."""
    return report["corloc"]["images"] if "corloc" in report else report["images"]


def stored(folder: Path, measure: Measure, request: dict[str, Any]) -> dict[str, Any] | None:
    path = folder / SCORES_DIR / f"{measure.name}.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("request") == request else None


def score_model(ckpt: str, folder: Path, measures: Sequence[Measure], *, batch_size: int = 8, workers: int = 2,
                device: str = "auto", log=print, weights: Path | None = None) -> dict[str, dict[str, Any]]:
    """measure name → the report of ``ckpt`` under it: stored in ``folder`` when it answers the same request,
    otherwise scored now (the model loaded once for all the missing measures) and stored. ``weights``: the
    file ``ckpt`` names, when it is one; MissingWeights when a score is missing and that file is not there."""
    from gtaseg.evaluation.runner import evaluate, evaluate_corloc, load_checked

    out, missing = {}, []
    for measure in measures:
        samples = measure.samples()
        request = measure.request(samples)
        report = stored(folder, measure, request)
        if report is None:
            missing.append((measure, samples, request))
        else:
            out[measure.name] = report
    if not missing:
        return out
    if weights is not None and not weights.is_file():
        raise MissingWeights(f"{weights}: no such file, and no stored {missing[0][0].name} score in {folder}")
    model, info, described = load_checked(ckpt, missing[0][0].protocol, None)
    for measure, samples, request in missing:
        log(f"scoring {ckpt} on {measure.root.name} ({measure.split}, {len(samples)} images): {measure.name}")
        run = evaluate_corloc if measure.metric == "corloc" else evaluate
        result = run(model, info, samples, measure.protocol, batch_size=batch_size, workers=workers, device=device)
        report = {"request": request, "model": described, **result.to_json()}
        write_json(folder / SCORES_DIR / f"{measure.name}.json", report)
        out[measure.name] = report
    return out
