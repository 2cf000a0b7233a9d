"""A Hugging Face hub cache on disk, in the hub's own layout, holding random ViTs saved the way timm saves
them: what ``timm.create_model(..., pretrained=True)`` reads with ``HF_HUB_OFFLINE=1``."""
from __future__ import annotations

from pathlib import Path

import timm
from timm.models._hub import save_for_hf
from torch import nn

REVISION = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex commit id


def add_repo(cache: Path, repo_id: str, model: nn.Module) -> Path:
    """``models--org--name/{refs/main, snapshots/<rev>/{model.safetensors, config.json}}`` under ``cache``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    save_for_hf(model, snapshot, safe_serialization=True)
    return snapshot


def add_timm_tag(cache: Path, name: str) -> nn.Module:
    """A random model stored where timm looks for the weights of the pretrained tag ``name``."""
    model = timm.create_model(name, pretrained=False)
    add_repo(cache, timm.models.get_pretrained_cfg(name).hf_hub_id, model)
    return model
