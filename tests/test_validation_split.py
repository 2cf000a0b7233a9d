"""Validation splits for every dataset: an ImageFolder's own val/, or --val-fraction held out of train before
--sampling-rate (tests/test_reliability_resume.py resumes a run with one)."""
import json
import shutil
from collections import Counter

import pytest

from gtaseg.config import TrainConfig
from gtaseg.data.holdout import hold_out
from gtaseg.data.pipeline import load_run_splits
from gtaseg.data.split import Split
from gtaseg.errors import DataError
from gtaseg.train import train
from tests.conftest import make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(init="random:vit_tiny_patch16_224", image_size=32, batch_size=4, workers=0, lr=1e-4, steps=2)


def splits(root, fraction=0.0, rate=1.0, seed=0):
    return load_run_splits(str(root), data_root=None, synthetic={}, val_fraction=fraction, sampling_rate=rate,
                           seed=seed)


def paths(split):
    return {p for p, _ in split.samples}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("holdout"), classes=3, train=10, test=2, size=8)


def test_held_out_images_are_disjoint_from_train_and_test_with_the_right_counts_per_class(folder):
    s = splits(folder, fraction=0.3)
    assert s.val_origin == "held out"
    assert not paths(s.val) & paths(s.train) and not paths(s.val) & paths(s.test)
    assert Counter(s.val.targets) == {0: 3, 1: 3, 2: 3}  # round(0.3 · 10)
    assert len(s.train) + len(s.val) == 30


def test_the_same_seed_holds_out_the_same_images_another_seed_others(folder):
    assert paths(splits(folder, 0.3, seed=1).val) == paths(splits(folder, 0.3, seed=1).val)
    assert paths(splits(folder, 0.3, seed=1).val) != paths(splits(folder, 0.3, seed=2).val)


def test_the_validation_images_never_depend_on_the_sampling_rate(folder):
    full, sampled = splits(folder, 0.3), splits(folder, 0.3, rate=0.15)
    assert paths(full.val) == paths(sampled.val)
    assert paths(sampled.train) <= paths(full.train)


def test_at_least_one_image_a_class_is_held_out_and_one_left_to_train():
    samples = [("a0", 0), ("a1", 0), ("b0", 1)] + [(f"c{i}", 2) for i in range(4)]
    train_split, val = hold_out(Split(samples, ["a", "b", "c"]), 0.05, seed=0)
    assert Counter(val.targets) == {0: 1, 2: 1}  # b has one image: it stays in train
    assert Counter(train_split.targets) == {0: 1, 1: 1, 2: 3}


def test_the_choice_does_not_depend_on_the_listing_order():
    samples = [(f"x{i}", i % 2) for i in range(20)]
    a = hold_out(Split(samples, ["p", "q"]), 0.25, seed=3)[1]
    b = hold_out(Split(samples[::-1], ["p", "q"]), 0.25, seed=3)[1]
    assert paths(a) == paths(b)


def test_an_image_folder_s_own_val_is_read_and_scored(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, train=4, test=2, size=8)
    shutil.copytree(root / "test", root / "val")
    s = splits(root)
    assert s.val_origin == "val" and paths(s.val) == {p.replace("/test/", "/val/") for p in paths(s.test)}
    final = train(TrainConfig(data=str(root), **TINY), tmp_path / "run")
    assert final["val_origin"] == "val" and final["val_images"] == 4 and final["val_top1"] is not None
    assert "val_top5" in final


def test_val_folder_with_val_fraction_is_a_one_line_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, train=4, test=2, size=8)
    shutil.copytree(root / "test", root / "val")
    with pytest.raises(DataError, match=r"val: the data has a validation split of its own; drop --val-fraction"):
        splits(root, fraction=0.2)


def test_a_val_folder_with_other_classes_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, train=4, test=2, size=8)
    shutil.copytree(root / "test" / "class0", root / "val" / "class0")
    with pytest.raises(DataError, match="classes differ"):
        splits(root)


def test_a_run_writes_its_held_out_list_and_scores_it(folder, tmp_path):
    final = train(TrainConfig(data=str(folder), val_fraction=0.3, **TINY), tmp_path / "run")
    lines = (tmp_path / "run" / "val_files.txt").read_text().splitlines()
    assert len(lines) == final["val_images"] == 9 and final["val_origin"] == "held out"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["val_fraction"] == 0.3
    train_lines = set((tmp_path / "run" / "train_files.txt").read_text().splitlines())
    assert not train_lines & set(lines)


def test_classes_keeps_the_first_classes_of_every_split_with_their_labels(folder):
    full, first = splits(folder, 0.3), load_run_splits(str(folder), data_root=None, synthetic={}, val_fraction=0.3,
                                                       sampling_rate=1.0, seed=0, classes=2)
    for a, b in ((full.train, first.train), (full.val, first.val), (full.test, first.test)):
        assert b.classes == a.classes[:2]
        assert b.samples == [s for s in a.samples if s[1] < 2]  # the same images as the full run, labels kept


def test_more_classes_than_the_data_has_is_a_one_line_error(folder):
    with pytest.raises(DataError, match="--classes 4, but it has 3 classes"):
        load_run_splits(str(folder), data_root=None, synthetic={}, val_fraction=0.0, sampling_rate=1.0, seed=0,
                        classes=4)


def test_a_class_subset_run_names_its_data_and_has_a_head_of_that_size(folder, tmp_path):
    from gtaseg.report.runs import Run
    from gtaseg.sweep.naming import run_name

    out = tmp_path / "run"
    train(TrainConfig(data=str(folder), method="baseline", classes=2, **TINY), out)
    assert json.loads((out / "final.json").read_text())["test_images"] == 4
    assert run_name({"data": str(folder), "method": "baseline", "classes": 2}).startswith(f"{folder.name}-first2/")
    config = json.loads((out / "config.json").read_text())
    assert Run("run", config, {}).dataset == f"{folder.name}-first2"
