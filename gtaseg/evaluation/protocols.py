"""Named evaluation protocols: every setting that changes an attention-quality number, and presets that
reproduce the published protocols (eval/PROTOCOL.md names the source file of each preset).

An :class:`EvalProtocol` is also the *protocol card*: :meth:`EvalProtocol.card` is what reports print and write, so
two numbers can be compared only when their cards agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

HEADS = ("best", "merged", "both")
# none: the image at its own size, zero-padded after normalisation to a multiple of the patch (LOST's
# geometry; eval-corloc only, since one batch then holds images of several sizes).
RESIZES = ("bicubic", "bilinear", "none")
MASKS = ("class", "object")
# ignore: void pixels count nowhere; background: they count as not-object (a mask covering them is wrong);
# foreground: the merged variant counts them as object (per-class scores still as not-object: void has no class).
VOID_RULES = ("ignore", "background", "foreground")
AVERAGES = ("image", "pooled")
EMPTY_RULES = ("skip", "zero")
COMPONENT_SEARCHES = ("largest", "lost")
IOU_RULES = (">", ">=")
BLUR_KERNEL = 7  # Leopart's GaussianBlur(7, sigma=0.6); only the sigma is a setting


@dataclass(frozen=True)
class EvalProtocol:
    """The settings of one attention evaluation. Defaults are gtaseg's own protocol (``gtaseg`` preset)."""

    name: str = "gtaseg"
    # Inputs
    image_size: int = 480
    resize: str = "bicubic"
    masks: str = "class"
    # Masks
    block: int = -1
    mass: float = 0.6
    heads: str = "both"
    blur_sigma: float = 0.0  # merged map, on the patch grid, before the threshold (0: no blur)
    min_component: int = 1  # merged mask: 8-connected components of fewer patches are dropped
    # Jaccard
    void: str = "ignore"
    average: str = "image"
    empty: str = "skip"  # images without objects: left out of the mean, or scored 0
    # CorLoc
    box_head: int | None = None  # None: the merged (head-mean) map
    connectivity: int = 8
    components: str = "largest"
    iou_rule: str = ">"

    def __post_init__(self) -> None:
        for name, allowed in (("heads", HEADS), ("resize", RESIZES), ("masks", MASKS), ("void", VOID_RULES),
                              ("average", AVERAGES), ("empty", EMPTY_RULES), ("components", COMPONENT_SEARCHES),
                              ("iou_rule", IOU_RULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"mass must be in (0, 1], got {self.mass}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.blur_sigma < 0 or self.min_component < 1:
            raise ValueError("blur_sigma must be >= 0 and min_component >= 1")

    @property
    def best(self) -> bool:
        return self.heads in ("best", "both")

    @property
    def merged(self) -> bool:
        return self.heads in ("merged", "both")

    def card(self, metric: str = "jaccard", **resolved: Any) -> dict[str, Any]:
        """Every setting that changes a ``metric`` ("jaccard" or "corloc") number, as a flat dict, with
        ``resolved`` values (the non-negative block, crop, patch size) on top."""
        skip = {"name", *(CORLOC_ONLY if metric == "jaccard" else JACCARD_ONLY)}
        return {"preset": self.name, "metric": metric, **{k: v for k, v in asdict(self).items() if k not in skip},
                "label_resize": "nearest", "normalize": "the model's mean/std", **resolved}


SETTINGS = tuple(f.name for f in fields(EvalProtocol) if f.name != "name")
CORLOC_ONLY = ("box_head", "connectivity", "components", "iou_rule")
JACCARD_ONLY = ("heads", "void", "average", "empty")

# Each preset reproduces its source's settings; eval/PROTOCOL.md section 9 names the file each comes from
# and what is not reproduced. Only what differs from gtaseg's defaults is listed.
PRESETS: dict[str, EvalProtocol] = {
    "gtaseg": EvalProtocol(),
    # dino/visualize_attention.py: transforms.Resize((480, 480)) is bilinear; threshold 0.6, last block.
    "dino": EvalProtocol(name="dino", resize="bilinear"),
    # IPViT evaluate_segmentation.py + utils.get_voc_dataset: Resize((512, 512)), --threshold 0.9, and a void
    # test (`cur_mask != 255` on a bool mask) that is always true, so void pixels count in the union.
    "ipvit": EvalProtocol(name="ipvit", image_size=512, resize="bilinear", mass=0.9, void="background"),
    # Leopart src/evaluate_attn_maps.py: Resize((224, 224)); merged map blurred (7, sigma 0.6), components
    # of <= 2 patches dropped; labels through ToTensor, so void (1.0) is foreground and images without
    # objects score 0.
    "leopart": EvalProtocol(name="leopart", image_size=224, resize="bilinear", blur_sigma=0.6, min_component=3,
                        void="foreground", empty="zero"),
    # LOST object_discovery.dino_seg as main_lost.py calls it: each image at its own size zero-padded to a
    # multiple of the patch, head --dinoseg_head (default 4), scipy's default 4-connectivity, its component
    # search, and `ious >= 0.5`.
    "lost": EvalProtocol(name="lost", resize="none", box_head=4, connectivity=4, components="lost", iou_rule=">="),
}
JACCARD_PRESETS = ("gtaseg", "dino", "ipvit", "leopart")


def resolve(preset: str = "gtaseg", **overrides: Any) -> EvalProtocol:
    """The preset with every override that is not None applied (a flag given on the command line wins)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown protocol {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = set(overrides) - set(SETTINGS)
    if unknown:
        raise TypeError(f"not protocol settings: {', '.join(sorted(unknown))}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def describe(protocol: EvalProtocol, metric: str = "jaccard") -> str:
    """The protocol card for the terminal: a few lines, the settings that change a ``metric`` number."""
    p = protocol
    size = "native size, zero-padded to the patch" if p.resize == "none" else f"{p.image_size} px {p.resize}"
    lines = [f"protocol  {short_name(p)}: {size}, {p.masks} masks, block {p.block}, "
             f"mass {p.mass:g}" + (f", heads {p.heads}" if metric == "jaccard" else "")]
    merged = f"merged map: blur sigma {p.blur_sigma:g}, min component {p.min_component} patches"
    if metric == "jaccard":
        lines.append(f"          {merged}; void {p.void}, mean per {p.average}, images without objects: {p.empty}")
    else:
        head = f"head {p.box_head}" if p.box_head is not None else "the merged map"
        lines.append(f"          box from {head}" + (f" ({merged})" if p.box_head is None else "")
                     + f", {p.connectivity}-connected, {p.components} component, correct if IoU {p.iou_rule} 0.5")
    return "\n".join(lines)


def short_name(protocol: EvalProtocol) -> str:
    """The preset's name and the settings that differ from it, e.g. ``leopart+mass=0.7``."""
    base = PRESETS[protocol.name]
    changed = [f"{k}={getattr(protocol, k)}" for k in SETTINGS if getattr(protocol, k) != getattr(base, k)]
    return protocol.name + ("+" + ",".join(changed) if changed else "")
