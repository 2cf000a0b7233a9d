"""bench/train_step.py runs end to end on a tiny model (a smoke test: nothing here asserts a timing)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


TINY = ["--arch", "vit_tiny_patch16_224", "--image-size", "32", "--batch-size", "2", "--classes", "3",
        "--steps", "2", "--warmup", "1", "--threads", "1"]


@pytest.mark.slow
def test_bench_writes_every_figure(tmp_path, bench):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        results = bench.main([*TINY, "--memory-steps", "1", "--eval-limit", "0", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["runs"].keys() == {"eager"}
    run = saved["runs"]["eager"]
    assert set(run["times"]) == {"baseline", "gta", "naive", "source"}
    for key in ("gta/baseline", "naive/baseline", "gta/(baseline+source)", "naive/(baseline+source)",
                "memory max_rss_mb gta/baseline", "memory max_rss_mb gta/naive"):
        assert run["ratios"][key] > 0, key
    assert all(m["max_rss_mb"] > 0 for m in run["memory"].values())
    assert results["eval_voc"]["todo"].startswith("skipped")


def test_naive_path_gives_the_same_loss_as_the_project_path(tmp_path, bench):
    """The naive comparison computes the same GTA loss, only the expensive way: fused attention off and
    every block's full T×T map kept."""
    args = bench.parse(TINY)
    args.compile_now = False
    args.classes = 3
    trainer = bench.make_step("gta", args)
    with torch.no_grad():
        trainer.model.blocks[0].attn.qkv.weight.mul_(1.2)  # so that the GTA term is not 0
    images, labels = bench.fixed_batch(args, 3, torch.device("cpu"))
    loss, terms = trainer.objective.loss(images, labels)
    kept = []
    with bench.naive_attention(trainer, kept):
        naive_loss, naive_terms = trainer.objective.loss(images, labels)
        assert not any(b.attn.fused_attn for b in trainer.model.blocks)
    assert len(kept) == 2 * len(trainer.model.blocks)  # target and source, every block
    T = (32 // 16) ** 2 + 1
    assert kept[0].shape[-2:] == (T, T)
    assert terms["reg"] > 0
    torch.testing.assert_close(naive_terms["reg"], terms["reg"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(naive_loss, loss, rtol=1e-4, atol=1e-6)
    assert all(b.attn.fused_attn for b in trainer.model.blocks)  # restored


def test_eval_speed_bench_compares_eval_voc_with_the_bare_forward(tmp_path):
    """bench/eval_speed.py end to end on a tiny model and a made-up VOC folder (no timing asserted)."""
    from tests.test_eval_voc import IMAGES, _palette_png  # the same hand-made VOC layout
    import numpy as np
    from PIL import Image

    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for name, (w, h, _) in IMAGES.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        _palette_png(np.zeros((h, w), np.uint8), root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(IMAGES))
    spec = importlib.util.spec_from_file_location("bench_eval_speed", BENCH.parent / "eval_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    try:
        results = module.main(["--ckpt", "random:vit_tiny_patch16_224", "--voc-root", str(root), "--image-size", "32",
                               "--batch-size", "2", "--workers", "0", "--limit", "4", "--repeats", "1",
                               "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["median"]["ratio"] == pytest.approx(results["median"]["eval_voc_images_per_s"]
                                                     / results["median"]["bare_forward_images_per_s"])
    assert saved["settings"]["crop"] == 32 and saved["target"]["met"] is None


def test_bench_times_the_attention_transfer_baselines(tmp_path, bench):
    threads = torch.get_num_threads()
    try:
        results = bench.main([*TINY, "--memory", "none", "--eval-limit", "0",
                              "--configs", "baseline,gta,source,attn-distill,cls-distill"])
    finally:
        torch.set_num_threads(threads)
    run = results["runs"]["eager"]
    assert set(run["times"]) == {"baseline", "gta", "source", "attn-distill", "cls-distill"}
    for key in ("attn-distill/gta", "cls-distill/gta", "attn-distill/(baseline+source)", "paired cls-distill/baseline"):
        assert run["ratios"][key] > 0, key


def test_bench_distill_steps_use_their_own_term(tmp_path, bench):
    args = bench.parse(TINY)
    args.compile_now = False
    fns, trainers = bench.step_functions(args, ["attn-distill", "cls-distill"], all_trainers=True)
    assert {t.method for t in trainers.values()} == {"attn-distill", "cls-distill"}
    assert all(float(fns[m]()["reg"]) > 0 for m in ("attn-distill", "cls-distill"))  # CE ≥ the source's entropy


@pytest.mark.slow
def test_train_loader_bench_compares_train_with_the_in_memory_step(tmp_path, tiny_folder):
    """bench/train_loader.py end to end on a tiny model and ImageFolder (no timing asserted): both figures
    come out, and the run trained on links to the folder, with one test photo per class."""
    spec = importlib.util.spec_from_file_location("bench_train_loader", BENCH.parent / "train_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "loader.json"
    results = module.main(["--data-root", str(tiny_folder), "--arch", "vit_tiny_patch16_224", "--classes", "3",
                           "--image-size", "32", "--batch-size", "2", "--workers", "0,1", "--steps", "3",
                           "--log-every", "1", "--memory-steps", "1", "--min-ratio", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["train"]) == {"workers=0", "workers=1"}
    for run in saved["train"].values():
        assert len(run["intervals"]) == 2  # the first of 3 intervals is left out
        assert run["ratio"] == pytest.approx(run["images_per_s"] / saved["in_memory"]["images_per_s"])
    assert results["target"]["worst_ratio"] == min(r["ratio"] for r in saved["train"].values())
