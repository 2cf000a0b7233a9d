"""Every training run saves its test predictions (test_predictions.csv): the images it scored, in order, and
their top-1 classes, which give final.json's top1."""
import json

import pytest
from click.testing import CliRunner

from gtaseg.errors import GtasegError
from gtaseg.rundir import PREDICTIONS, RunDir, prediction_ids
from tests.conftest import TINY_TRAIN, make_image_folder


def test_prediction_ids_are_relative_to_the_split_folder():
    assert prediction_ids(["/d/test/a/1.png", "/d/test/b/2.png"]) == ["a/1.png", "b/2.png"]
    assert prediction_ids(["/d/test/a/1.png"]) == ["1.png"]


def test_training_run_writes_predictions_that_give_its_top1(tmp_path, one_thread):
    from gtaseg.cli import main

    data = make_image_folder(tmp_path / "data", classes=3, train=4, test=3, size=40)
    bad = data / "test" / "class1" / "2.png"
    bad.write_bytes(bad.read_bytes()[:50])  # unreadable: skipped, so neither scored nor predicted
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), *TINY_TRAIN, "--steps", "2",
                                       "--on-bad-image", "skip", "--out", str(out)])
    assert result.exit_code == 0, result.output
    final = json.loads((out / "final.json").read_text())
    rows = RunDir(out).predictions()
    expected = [f"class{c}/{i}.png" for c in range(3) for i in range(3)]
    assert [r.id for r in rows] == [i for i in expected if i != "class1/2.png"]
    assert final["test_images"] == len(rows) == 8
    assert all(r.label == r.id.split("/")[0] for r in rows)
    assert 100.0 * sum(r.label == r.predicted for r in rows) / len(rows) == pytest.approx(final["top1"])
    assert RunDir(tmp_path).predictions() is None


def test_a_file_that_is_not_a_predictions_file_is_named(tmp_path):
    (tmp_path / PREDICTIONS).write_text("path,class\na.png,x\n")
    with pytest.raises(GtasegError, match=PREDICTIONS):
        RunDir(tmp_path).predictions()
    (tmp_path / PREDICTIONS).write_text("id,label,predicted\na.png,x\n")
    with pytest.raises(GtasegError, match="3 fields"):
        RunDir(tmp_path).predictions()
