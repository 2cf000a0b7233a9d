"""The fine-grained loaders on tiny fake copies of the official layouts (see fake_layouts.py)."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import scipy.io
import torchvision.datasets as tvd
from click.testing import CliRunner

import fake_layouts as fl
from gtaseg.data.finegrained import DATASETS, check_dataset, load_split, read_object_mask
from gtaseg.errors import DataError

NAMES = list(fl.BUILDERS)


@pytest.fixture(params=NAMES)
def fake(request, tmp_path) -> tuple[str, fl.FakeDataset]:
    return request.param, fl.BUILDERS[request.param](tmp_path)


def _as_str(samples):
    return [(str(path), label) for path, label in samples]


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_split_matches_the_files(fake, split):
    name, ds = fake
    s = load_split(name, ds.root, split)
    assert s.samples == _as_str(ds.samples[split])
    assert s.classes == ds.classes
    assert sorted(set(s.targets)) == list(range(len(ds.classes)))  # 0-based
    expected_masks = None if ds.masks is None else [str(m) for m in ds.masks[split]]
    assert s.masks == expected_masks


@pytest.mark.parametrize("name", ["cub", "dogs", "pet"])
def test_labels_agree_with_the_class_named_in_the_file_name(tmp_path, name):
    fl.BUILDERS[name](tmp_path)
    s = load_split(name, tmp_path, "train")
    assert all(s.classes[label] in path for path, label in s.samples)


def test_data_root_may_be_the_dataset_folder_itself(fake):
    name, ds = fake
    assert load_split(name, ds.base, "train").samples == _as_str(ds.samples["train"])
    assert DATASETS[name].load(ds.base, "test") == load_split(name, ds.root, "test")


def test_the_table_of_official_sizes():
    sizes = {n: (i.num_classes, i.num_train, i.num_test) for n, i in DATASETS.items()}
    assert sizes == {"cub": (200, 5994, 5794), "cars": (196, 8144, 8041), "aircraft": (100, 6667, 3333),
                     "dogs": (120, 12000, 8580), "pet": (37, 3680, 3669)}
    assert all(i.description and i.name == n for n, i in DATASETS.items())


@pytest.mark.parametrize("name, tv_class, tv_split", [
    ("cars", tvd.StanfordCars, {"train": "train", "test": "test"}),
    ("aircraft", tvd.FGVCAircraft, {"train": "trainval", "test": "test"}),
    ("pet", tvd.OxfordIIITPet, {"train": "trainval", "test": "test"}),
])
def test_torchvision_reads_the_same_layout(tmp_path, name, tv_class, tv_split):
    fl.BUILDERS[name](tmp_path)
    for split, official in tv_split.items():
        theirs = tv_class(tmp_path, split=official, download=False)
        assert [label for _, label in theirs] == load_split(name, tmp_path, split).targets


def test_cub_masks_through_read_object_mask(tmp_path):
    ds = fl.make_cub(tmp_path, segmentations="beside")
    s = load_split("cub", tmp_path, "test")
    assert s.masks == [str(m) for m in ds.masks["test"]]
    np.testing.assert_array_equal(read_object_mask("cub", s.masks[0]), fl.CUB_MASK_EXPECTED)


def test_cub_without_segmentations_has_no_masks(tmp_path):
    fl.make_cub(tmp_path, segmentations=None)
    assert load_split("cub", tmp_path, "train").masks is None


def test_pet_trimaps_through_read_object_mask(tmp_path):
    fl.make_pet(tmp_path)
    mask = read_object_mask("pet", load_split("pet", tmp_path, "train").masks[0])
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, fl.PET_MASK_EXPECTED)


def test_read_object_mask_errors(tmp_path):
    with pytest.raises(DataError, match="has no object masks"):
        read_object_mask("cars", tmp_path / "x.png")
    with pytest.raises(DataError, match="cannot read mask .*nope.png"):
        read_object_mask("pet", tmp_path / "nope.png")
    fl.write_png(tmp_path / "bad.png", np.full((2, 2), 7))
    with pytest.raises(DataError, match="values 1, 2, 3"):
        read_object_mask("pet", tmp_path / "bad.png")


def test_dogs_lists_in_a_lists_folder(tmp_path):
    ds = fl.make_dogs(tmp_path, lists_dir=True)
    assert load_split("dogs", tmp_path, "test").samples == _as_str(ds.samples["test"])


def test_check_dataset_counts_and_a_deleted_image(fake):
    name, ds = fake
    gone = ds.samples["test"][0][0]
    gone.unlink()
    report = check_dataset(name, ds.root)
    info = DATASETS[name]
    assert [(r.what, r.expected, r.found) for r in report.rows] == [
        ("classes", info.num_classes, 3), ("train", info.num_train, 6), ("test", info.num_test, 3)]
    assert not report.ok
    assert f"missing image {gone}" in report.problems
    assert f"train: found 6, expected {info.num_train}" in report.problems
    with pytest.raises(DataError, match=f"missing image {gone}"):
        load_split(name, ds.root, "test")
    assert len(load_split(name, ds.root, "train")) == 6  # the other split is still usable


def test_check_dataset_is_ok_on_a_complete_copy(monkeypatch, tmp_path):
    ds = fl.make_pet(tmp_path)
    monkeypatch.setitem(DATASETS, "pet", dataclasses.replace(DATASETS["pet"], num_classes=3, num_train=6, num_test=3))
    report = check_dataset("pet", tmp_path)
    assert report.ok and report.problems == []
    assert report.masks == ds.base / "annotations" / "trimaps"


ANNOTATIONS = {
    "cub": "CUB_200_2011/images.txt",
    "cars": "stanford_cars/devkit/cars_meta.mat",
    "aircraft": "fgvc-aircraft-2013b/data/images_variant_test.txt",
    "dogs": "stanford_dogs/train_list.mat",
    "pet": "oxford-iiit-pet/annotations/test.txt",
}


@pytest.mark.parametrize("name", NAMES)
def test_missing_annotation_file_is_one_line_naming_it(tmp_path, name):
    fl.BUILDERS[name](tmp_path)
    missing = tmp_path / ANNOTATIONS[name]
    missing.unlink()
    with pytest.raises(DataError) as err:
        load_split(name, tmp_path, "train")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{DATASETS[name].title}: missing {missing} (expected the official")
    report = check_dataset(name, tmp_path)
    assert [r.found for r in report.rows] == [None, None, None]
    assert any(str(missing) in p for p in report.problems)


def test_missing_root_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_split("cub", tmp_path / "nope", "train")
    with pytest.raises(DataError, match="unknown dataset 'flowers'; known: cub, cars, aircraft, dogs, pet"):
        load_split("flowers", tmp_path, "train")
    with pytest.raises(DataError, match="unknown dataset"):
        check_dataset("flowers", tmp_path)
    fl.make_cub(tmp_path)
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_split("cub", tmp_path, "val")


def test_malformed_annotation_lines_are_named(tmp_path):
    ds = fl.make_cub(tmp_path)
    labels = ds.base / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("2 2\n", "2 two\n").replace("3 3\n", "3 9\n"))
    report = check_dataset("cub", tmp_path)
    assert f"{labels}:2: malformed line '2 two' (expected '<image_id> <class_id>')" in report.problems
    assert f"{labels} (image id 3): class id 9 is not in 1..3" in report.problems
    assert any(p.startswith(f"{labels}: no line for image id 2") for p in report.problems)
    with pytest.raises(DataError, match=r"malformed line .* \(and \d+ more; see `gtaseg data check"):
        load_split("cub", tmp_path, "train")


def test_malformed_mat_files_are_named(tmp_path):
    ds = fl.make_dogs(tmp_path)
    lists = ds.base / "test_list.mat"
    scipy.io.savemat(lists, {"file_list": fl.mat_cells(["a/b.jpg"])})
    with pytest.raises(DataError, match=f"{lists}: no variable 'labels'"):
        load_split("dogs", tmp_path, "train")
    lists.write_bytes(b"not a mat file")
    assert any(p.startswith(f"cannot read {lists}") for p in check_dataset("dogs", tmp_path).problems)


def test_conflicting_class_names_are_reported(tmp_path):
    ds = fl.make_pet(tmp_path)
    test_txt = ds.base / "annotations" / "test.txt"
    test_txt.write_text(test_txt.read_text().replace("Bengal_9 3", "Bengal_9 1", 1))
    assert any("class id 1 is both 'Abyssinian' and 'Bengal'" in p for p in check_dataset("pet", tmp_path).problems)


def _data_group():
    # Imported here so the loader tests run even while another gtaseg.cli module is broken or unwritten.
    from gtaseg.cli.data import data

    return data


def test_cli_check_names_a_missing_file_and_exits_1(tmp_path):
    ds = fl.make_aircraft(tmp_path)
    gone = ds.samples["train"][2][0]
    gone.unlink()
    result = CliRunner().invoke(_data_group(), ["check", "--dataset", "aircraft", "--data-root", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"missing image {gone}" in result.output
    assert "train" in result.output and "6667" in result.output
    assert f"FGVC-Aircraft (aircraft) in {ds.base}" in result.output


def test_cli_check_exits_0_on_a_complete_copy(monkeypatch, tmp_path):
    fl.make_cub(tmp_path)
    monkeypatch.setitem(DATASETS, "cub", dataclasses.replace(DATASETS["cub"], num_classes=3, num_train=6, num_test=3))
    result = CliRunner().invoke(_data_group(), ["check", "--dataset", "CUB", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("ok")
    assert f"masks: {tmp_path / 'CUB_200_2011' / 'segmentations'}" in result.output


def test_gtaseg_entry_point_has_data_check(tmp_path):
    from gtaseg.cli import main

    result = CliRunner().invoke(main, ["data", "check", "--dataset", "pet", "--data-root", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert f"data root {tmp_path / 'nope'} does not exist" in result.output
