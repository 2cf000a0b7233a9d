"""The recipe options timm and DINO users expect (--warmup-steps, --layer-decay, --drop-path, --label-smoothing,
--eval-every, --keep best), each checked against a plain reference, and off by default."""
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gtaseg.config import ADDED_OPTIONS, TrainConfig, default, resolve
from gtaseg.errors import GtasegError
from gtaseg.methods import METHODS
from gtaseg.models import create_vit, set_drop_path
from gtaseg.objective import Objective
from gtaseg.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from gtaseg.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(init="random:vit_tiny_patch16_224", image_size=32, batch_size=4, workers=0, lr=1e-4)


def test_every_new_option_is_off_by_default_and_older_configs_imply_off():
    for name, value in ADDED_OPTIONS.items():
        if name not in ("lam_reduction",):
            assert default(name) == value, name


def test_warmup_rises_linearly_then_the_cosine_runs_over_the_remaining_steps():
    steps, warmup = 10, 4
    assert [lr_factor(s, steps, warmup) for s in range(warmup)] == [0.25, 0.5, 0.75, 1.0]
    for s in range(warmup, steps + 1):
        assert lr_factor(s, steps, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
    # Without warmup: the schedule of every run before the option, bit for bit.
    assert all(lr_factor(s, 7) == 0.5 * (1 + math.cos(math.pi * min(s, 7) / 7)) for s in range(9))


def test_the_scheduler_applies_the_warmup_to_every_group():
    model = create_vit("vit_tiny_patch16_224", 3)
    opt = build_optimizer(model, 1e-3, 0.05, 10.0)
    sched = build_scheduler(opt, 10, 2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["initial_lr"] * 0.5 for g in opt.param_groups])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["initial_lr"] for g in opt.param_groups])


def test_layer_decay_scales_each_block_by_decay_to_its_distance_from_the_top_and_keeps_the_head_lr():
    model = create_vit("vit_tiny_patch16_224", 3)
    lr, decay, depth = 1e-3, 0.5, len(model.blocks)
    lr_of = {}
    for g in param_groups(model, lr, 0.05, 10.0, layer_decay=decay):
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    named = dict(model.named_parameters())
    # timm's layer scales for a ViT: decay^(depth+1) the embeddings, decay^(depth-i) block i, decay the final norm.
    assert lr_of[id(named["patch_embed.proj.weight"])] == pytest.approx(lr * decay ** (depth + 1))
    for i in range(depth):
        assert lr_of[id(named[f"blocks.{i}.attn.qkv.weight"])] == pytest.approx(lr * decay ** (depth - i))
    assert lr_of[id(named["norm.weight"])] == pytest.approx(lr * decay)  # timm groups it with the last block
    assert lr_of[id(named["head.weight"])] == pytest.approx(lr * 10.0)
    assert len(lr_of) == len(named)  # every parameter in exactly one group


def test_without_layer_decay_the_groups_are_those_of_every_earlier_run():
    from timm.optim import param_groups_weight_decay

    model = create_vit("vit_tiny_patch16_224", 3)
    groups = param_groups(model, 1e-3, 0.05, 10.0)
    expected = []
    for g in param_groups_weight_decay(model, 0.05):
        body = [p for p in g["params"] if p is not model.head.weight and p is not model.head.bias]
        head = [p for p in g["params"] if p is model.head.weight or p is model.head.bias]
        expected += [(len(ps), s) for ps, s in ((body, 1e-3), (head, 1e-2)) if ps]
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(n, pytest.approx(s)) for n, s in expected]


def test_drop_path_matches_timm_create_model():
    ours = create_vit("vit_tiny_patch16_224")
    set_drop_path(ours, 0.2)
    theirs = timm.create_model("vit_tiny_patch16_224", drop_path_rate=0.2)
    for a, b in zip(ours.blocks, theirs.blocks):
        for name in ("drop_path1", "drop_path2"):
            pa, pb = getattr(a, name), getattr(b, name)
            assert type(pa) is type(pb) and getattr(pa, "drop_prob", 0) == pytest.approx(getattr(pb, "drop_prob", 0))


def test_label_smoothing_is_the_smoothed_cross_entropy():
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", 5).eval()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 4])
    eps = 0.2
    _, terms = Objective(model, METHODS["baseline"], label_smoothing=eps).loss(images, labels)
    logp = F.log_softmax(model(images).float(), -1)
    targets = F.one_hot(labels, 5).float() * (1 - eps) + eps / 5
    torch.testing.assert_close(terms["ce"], -(targets * logp).sum(-1).mean())


def test_options_that_cannot_work_together_are_one_line_errors(tiny_folder, tmp_path):
    with pytest.raises(GtasegError, match="--eval-every"):
        resolve(TrainConfig(data=str(tiny_folder), keep="best", **TINY))
    with pytest.raises(GtasegError, match="--warmup-steps"):
        resolve(TrainConfig(data=str(tiny_folder), steps=3, warmup_steps=3, **TINY))
    with pytest.raises(GtasegError, match="needs a validation split"):
        train(TrainConfig(data=str(tiny_folder), steps=2, eval_every=1, **TINY), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_eval_every_logs_validation_rows_and_changes_nothing_the_run_computes(tiny_folder, tmp_path):
    """With drop path drawing from torch's RNG, an evaluation that drew from it would change the run."""
    common = dict(data=str(tiny_folder), steps=6, val_fraction=0.34, drop_path=0.2, log_every=2, **TINY)
    plain = train(TrainConfig(**common), tmp_path / "plain")
    evaluated = train(TrainConfig(eval_every=3, **common), tmp_path / "evaluated")
    rows = [json.loads(line) for line in (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_top1" in r]
    assert [r["step"] for r in val_rows] == [3, 6]
    assert val_rows[-1]["val_top1"] == pytest.approx(evaluated["val_top1"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rs if "val_top1" not in r]  # noqa: E731
    plain_rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert strip(rows) == strip(plain_rows)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "evaluated"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["top1"] == evaluated["top1"]


def test_keep_best_keeps_the_weights_of_the_best_validation_step(tiny_folder, tmp_path):
    cfg = TrainConfig(data=str(tiny_folder), steps=8, val_fraction=0.34, eval_every=2, keep="best",
                      **{**TINY, "lr": 3e-3})
    final = train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["val_top1"], -r["step"]) for r in rows if "val_top1" in r]
    best_top1, best_step = max(vals)
    assert final["best_step"] == -best_step and final["keep"] == "best"
    assert final["val_top1"] == pytest.approx(best_top1)  # the kept weights score what they scored then
    kept, best = (load_file(str(tmp_path / "run" / f)) for f in ("model.safetensors", "best.safetensors"))
    assert all(torch.equal(kept[k], best[k]) for k in kept)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["keep"] == "best"
