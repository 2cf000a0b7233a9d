"""Pretrained weights named the way timm names them: ``<arch>.<tag>`` or ``hf-hub:<org>/<repo>``.

Loading goes through timm's own pretrained mechanism, so the weights come from (and are cached in) the
Hugging Face hub cache (``HF_HOME`` / ``HF_HUB_CACHE``), and ``HF_HUB_OFFLINE=1`` loads them from a populated
cache without touching the network. timm's hub weights are already in its layout, so nothing is converted.
"""
from __future__ import annotations

import difflib

import timm
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer

from gtaseg.errors import CheckpointError, GtasegError

HF_HUB_PREFIX = "hf-hub:"
# ``vit_small_patch16_224.pth`` is a missing file, not a tag: no timm tag is a checkpoint suffix.
_FILE_SUFFIXES = {"pth", "pt", "bin", "ckpt", "safetensors", "npz"}


def is_hub_name(spec: str) -> bool:
    """Whether ``spec`` is meant as a timm pretrained name rather than a file: ``hf-hub:...``, or
    ``<timm-architecture>.<tag>`` (an architecture timm knows, then a dot)."""
    if spec.startswith(HF_HUB_PREFIX):
        return True
    arch, dot, tag = spec.partition(".")
    return bool(dot and tag) and tag not in _FILE_SUFFIXES and "/" not in spec and timm.is_model(arch)


def hub_repo(spec: str) -> str:
    """The Hugging Face repository the weights of ``spec`` come from (for messages and downloads)."""
    if spec.startswith(HF_HUB_PREFIX):
        return spec[len(HF_HUB_PREFIX):].split("@")[0]
    cfg = get_pretrained_cfg(spec)
    return getattr(cfg, "hf_hub_id", None) or spec


def check_tag(spec: str) -> None:
    """A one-line error unless ``spec`` is ``<arch>.<tag>`` with a tag timm has weights for."""
    arch = spec.partition(".")[0]
    known = timm.list_pretrained(f"{arch}.*")
    if spec in known:
        return
    close = difflib.get_close_matches(spec, known, n=3, cutoff=0.6) or known[:3]
    raise GtasegError(f"{spec!r}: timm has no such pretrained tag; "
                      + (f"did you mean {', '.join(close)}? " if close else "")
                      + f"timm.list_pretrained('{arch}.*') lists them all")


def load_hub_model(spec: str, num_classes: int) -> VisionTransformer:
    """A timm ViT with the pretrained weights ``spec`` names and a fresh ``num_classes`` head (0: none).

    Weights missing from the cache while offline, or unreachable, give a one-line error saying how to get them.
    """
    if not spec.startswith(HF_HUB_PREFIX):
        check_tag(spec)
    try:
        model = timm.create_model(spec, pretrained=True, num_classes=num_classes, dynamic_img_size=True)
    except TypeError:  # families other than ViT do not take dynamic_img_size
        raise GtasegError(f"{spec!r} is not a plain ViT (timm VisionTransformer); GTA needs [cls] attention") from None
    except Exception as e:  # huggingface_hub's errors: not cached while offline, no network, no such repository
        if not _is_download_error(e):
            raise
        raise CheckpointError(
            f"{spec}: weights not in the Hugging Face cache and not downloadable here ({type(e).__name__}); "
            f"run once with network access, or fetch them with `hf download {hub_repo(spec)}` (huggingface_hub < 1.0: "
            f"`huggingface-cli download`; HF_HOME / HF_HUB_CACHE choose the cache; HF_HUB_OFFLINE=1 then loads from it)"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise GtasegError(f"{spec!r} is not a plain ViT (timm VisionTransformer); GTA needs [cls] attention")
    return model


def architecture(model: VisionTransformer, spec: str) -> str:
    """The timm architecture (no tag) that rebuilds ``model``: what a saved gtaseg checkpoint records."""
    return model.pretrained_cfg.get("architecture") or spec.partition(".")[0]


def _is_download_error(e: Exception) -> bool:
    try:
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return isinstance(e, (OSError, ConnectionError))
    return isinstance(e, (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, OSError, ConnectionError))
