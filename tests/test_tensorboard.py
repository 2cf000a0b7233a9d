"""gtaseg train --tensorboard: every metrics.jsonl row as TensorBoard scalars; off by default; an optional extra."""
import json
import sys

import pytest
from click.testing import CliRunner

from gtaseg.cli import main
from tests.conftest import TINY_TRAIN

pytest.importorskip("tensorboard")


def train(tmp_path, tiny_folder, *extra):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--method", "gta", "--steps", "3", "--log-every", "1",
            "--out", str(out), *TINY_TRAIN, *extra]
    return out, CliRunner().invoke(main, args)


def test_every_metrics_row_is_in_the_event_files(tmp_path, tiny_folder, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, result = train(tmp_path, tiny_folder, "--tensorboard")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    keys = {k for row in rows for k in row if k != "step"}
    assert keys >= {"loss", "ce", "reg", "lr", "drift", "images_per_s"}
    assert set(events.Tags()["scalars"]) == keys
    for key in keys:
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True


def test_off_by_default(tmp_path, tiny_folder, one_thread):
    out, result = train(tmp_path, tiny_folder)
    assert result.exit_code == 0, result.output
    assert not (out / "tensorboard").exists()


def test_missing_extra_is_a_one_line_error_before_the_run(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out, result = train(tmp_path, tiny_folder, "--tensorboard")
    assert result.exit_code == 1
    assert "error: --tensorboard needs the tensorboard package: pip install 'gtaseg[tensorboard]'" in result.output
    assert not (out / "config.json").exists()
