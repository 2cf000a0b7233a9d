"""Every supported checkpoint layout loads into the right timm ViT; files are made here, in each layout."""
import pytest
import torch
from safetensors.torch import save_file

from gtaseg.errors import CheckpointError, GtasegError
from gtaseg.models import create_vit, load_model, model_info, save_model


@pytest.fixture(scope="module")
def vit_s16():
    torch.manual_seed(0)
    return create_vit("vit_small_patch16_224")


def backbone(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def assert_same_backbone(loaded, reference):
    ref = backbone(reference)
    got = backbone(loaded)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_timm_state_dict_pth_and_safetensors(tmp_path, vit_s16):
    torch.save(vit_s16.state_dict(), tmp_path / "timm.pth")
    save_file(vit_s16.state_dict(), tmp_path / "timm.safetensors")
    for name in ("timm.pth", "timm.safetensors"):
        model, info = load_model(str(tmp_path / name), num_classes=7)
        assert info.arch == "vit_small_patch16_224" and info.patch_size == 16
        assert model.head.out_features == 7
        assert_same_backbone(model, vit_s16)


def test_dino_flat_backbone(tmp_path, vit_s16):
    torch.save(backbone(vit_s16), tmp_path / "dino_deitsmall16_pretrain.pth")
    model, _ = load_model(str(tmp_path / "dino_deitsmall16_pretrain.pth"))
    assert_same_backbone(model, vit_s16)


def test_dino_full_checkpoint_prefers_teacher_and_drops_projection_head(tmp_path, vit_s16):
    other = create_vit("vit_small_patch16_224")
    head = {"head.mlp.0.weight": torch.randn(2048, 384), "head.last_layer.weight_g": torch.randn(1, 256)}
    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in backbone(other).items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in backbone(vit_s16).items()}, **head},
        "optimizer": {"state": {}}, "epoch": 100,
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    model, _ = load_model(str(tmp_path / "checkpoint.pth"))
    assert_same_backbone(model, vit_s16)


def test_ibot_state_dict_with_masked_embed(tmp_path, vit_s16):
    torch.save({"state_dict": {**backbone(vit_s16), "masked_embed": torch.zeros(1, 384)}}, tmp_path / "ibot.pth")
    model, _ = load_model(str(tmp_path / "ibot.pth"), arch="vit_small_patch16_224")
    assert_same_backbone(model, vit_s16)


def dinov2_layout(model, registers: bool):
    """The facebookresearch/dinov2 layout: pos_embed with a [cls] entry, mask_token, register_tokens."""
    sd = backbone(model)
    if registers:
        reg = sd.pop("reg_token")
        pos = sd.pop("pos_embed")
        sd["register_tokens"] = reg
        sd["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return sd


@pytest.mark.parametrize("arch,registers", [("vit_small_patch14_dinov2", False), ("vit_small_patch14_reg4_dinov2", True)])
def test_dinov2_layout(tmp_path, arch, registers):
    torch.manual_seed(1)
    reference = create_vit(arch)
    torch.save(dinov2_layout(reference, registers), tmp_path / "dinov2.pth")
    model, info = load_model(str(tmp_path / "dinov2.pth"))
    assert info.arch == arch and info.patch_size == 14
    assert info.num_prefix_tokens == (5 if registers else 1)
    assert_same_backbone(model, reference)


def test_dinov2_position_embedding_is_resized(tmp_path):
    torch.manual_seed(2)
    small_grid = create_vit("vit_small_patch14_dinov2")
    sd = dinov2_layout(small_grid, registers=False)
    sd["pos_embed"] = sd["pos_embed"][:, : 1 + 16 * 16]  # a checkpoint trained at 224: a 16x16 grid
    torch.save(sd, tmp_path / "dinov2_224.pth")
    model, _ = load_model(str(tmp_path / "dinov2_224.pth"))
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384)
    torch.testing.assert_close(model.pos_embed[:, 0], sd["pos_embed"][:, 0])  # the [cls] entry is not resampled
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 384)


def test_own_checkpoint_round_trip_keeps_head_and_metadata(tmp_path):
    model = create_vit("vit_tiny_patch16_224", num_classes=3)
    info = model_info(model, "vit_tiny_patch16_224", classes=["a", "b", "c"])
    info.mean = (0.1, 0.2, 0.3)
    save_model(tmp_path / "model.safetensors", model, info)
    loaded, got = load_model(str(tmp_path / "model.safetensors"))
    assert got.classes == ["a", "b", "c"] and got.mean == (0.1, 0.2, 0.3)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # A new task on top of a gtaseg checkpoint: same backbone, fresh head.
    retarget, got = load_model(str(tmp_path / "model.safetensors"), num_classes=5)
    assert retarget.head.out_features == 5 and got.classes is None


def test_mismatching_file_names_the_keys(tmp_path, vit_s16):
    sd = backbone(vit_s16)
    sd.pop("blocks.3.attn.qkv.weight")
    sd["blocks.3.extra"] = torch.zeros(1)
    sd["norm.weight"] = torch.zeros(10)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "broken.pth"), arch="vit_small_patch16_224")
    msg = str(e.value)
    assert "broken.pth" in msg and "blocks.3.attn.qkv.weight" in msg and "blocks.3.extra" in msg and "norm.weight" in msg
    assert "\n" not in msg


def test_unknown_arch_and_unguessable_architecture(tmp_path):
    with pytest.raises(GtasegError, match="unknown --arch"):
        load_model("random:vit_does_not_exist")
    torch.save({"foo": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="--arch"):
        load_model(str(tmp_path / "odd.pth"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_model(str(tmp_path / "evil.pth"))
    assert not marker.exists()
