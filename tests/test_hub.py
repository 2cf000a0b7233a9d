"""--init/--source/--ckpt by timm pretrained tag or hf-hub:<org>/<repo>, offline, from a populated HF cache."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from gtaseg.cli import main
from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.models import load_model
from gtaseg.models.hub import check_tag, is_hub_name
from tests.conftest import TINY_TRAIN
from tests.hf_cache import add_repo, add_timm_tag

TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a real timm tag, small enough for a test
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty hub cache, offline. huggingface_hub reads its environment once, at import, so its constants
    are patched too; the variables are set for any subprocess."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf"
    cache.mkdir()
    for var, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def same_backbone(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith("head."))


def test_timm_tag_loads_offline_from_the_cache(hf_cache):
    stored = add_timm_tag(hf_cache, TAG)
    model, info = load_model(TAG, num_classes=5)
    assert same_backbone(model, stored)
    assert model.head.out_features == 5
    # The architecture without the tag rebuilds it; the tag's own normalisation (augreg: 0.5) is kept.
    assert info.arch == "vit_tiny_patch16_224" and info.mean == (0.5, 0.5, 0.5)


def test_hf_hub_repo_loads_offline_from_the_cache(hf_cache):
    stored = add_timm_tag(hf_cache, TAG)
    add_repo(hf_cache, "someone/tiny-vit", stored)
    model, info = load_model("hf-hub:someone/tiny-vit")
    assert same_backbone(model, stored) and info.arch == "vit_tiny_patch16_224"


def test_missing_weights_offline_say_how_to_get_them(hf_cache):
    with pytest.raises(CheckpointError) as e:
        load_model("vit_small_patch16_224.dino")
    msg = str(e.value)
    assert "\n" not in msg and "hf download timm/vit_small_patch16_224.dino" in msg
    with pytest.raises(CheckpointError, match="hf download nobody/nothing"):
        load_model("hf-hub:nobody/nothing")


def test_unknown_tags_and_bare_architectures_are_one_line_errors(hf_cache):
    with pytest.raises(GtasegError, match=r"no such pretrained tag; did you mean vit_small_patch16_224\.dino") as e:
        load_model("vit_small_patch16_224.dinno")
    assert "\n" not in str(e.value)
    with pytest.raises(GtasegError, match="names an architecture, not weights: use random:vit_small_patch16_224"):
        load_model("vit_small_patch16_224")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model("missing/vit_small_patch16_224.pth")
    assert not is_hub_name("vit_small_patch16_224.pth") and not is_hub_name("./a.b")


def test_issue_tags_are_known_to_timm():
    for tag in ("vit_small_patch16_224.dino", "vit_small_patch8_224.dino", "vit_small_patch14_dinov2.lvd142m",
                "vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch16_224.augreg_in21k_ft_in1k"):
        assert is_hub_name(tag)
        check_tag(tag)


def test_paper_configs_name_the_dino_source_by_its_tag():
    for name in ("table2", "table3", "table5", "figure4"):
        base = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["base"]
        assert base["init"] == "vit_small_patch16_224.dino", name


def test_train_and_evaluate_by_tag(hf_cache, tmp_path, tiny_folder, one_thread):
    add_timm_tag(hf_cache, TAG)
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--method", "gta", "--steps", "1", "--out", str(out),
            *TINY_TRAIN, "--init", TAG]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["source"] == TAG
    model, info = load_model(str(out / "model.safetensors"))  # rebuilt from the architecture alone
    assert info.arch == "vit_tiny_patch16_224" and model.head.out_features == 3
