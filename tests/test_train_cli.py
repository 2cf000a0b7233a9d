"""`gtaseg train` as a user runs it: every method, with and without TransMix, writes the run files."""
import json

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from gtaseg.cli import main
from gtaseg.methods import METHODS
from gtaseg.models import load_model
from tests.conftest import TINY_TRAIN


@pytest.mark.parametrize("transmix", [False, True], ids=["plain", "transmix"])
@pytest.mark.parametrize("method", list(METHODS))
def test_train_writes_run_files(tmp_path, tiny_folder, method, transmix):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--method", method, "--steps", "3", "--log-every", "1",
            "--sampling-rate", "0.5", "--out", str(out), *TINY_TRAIN] + (["--transmix"] if transmix else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["transmix"] == transmix and config["accum_steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "ce", "reg", "lr", "images_per_s"} <= rows[0].keys()
    final = json.loads((out / "final.json").read_text())
    assert final["method"] == method and final["steps"] == 3 and final["sampling_rate"] == 0.5
    assert final["lam"] == METHODS[method].default_lam and 0 <= final["top1"] <= 100
    assert final["train_images"] == 9  # 3 of 6 per class
    assert len((out / "train_files.txt").read_text().splitlines()) == 9
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "gtaseg" in f.metadata()
    model, info = load_model(str(out / "model.safetensors"))
    assert info.classes == ["class0", "class1", "class2"] and model.head.out_features == 3
    assert "top1" in result.output


def test_train_help_documents_every_option():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for opt in main.commands["train"].params:
        assert opt.help, f"--{opt.name} has no help"
        assert opt.opts[0] in result.output


@pytest.mark.parametrize("fields", [
    {"transmix": True, "randaugment": False, "blocks": [9, 10, -1], "synthetic": {"shortcut": 0.9, "cue": "glyph"},
     "compile": True, "lr": 1e-05, "val_fraction": 0.1, "data": "cub", "head_init": "probe"},
    {"transmix": False, "randaugment": True, "blocks": None, "synthetic": {}, "steps": 3},
], ids=["set", "defaults"])
def test_printed_argv_parses_back_to_the_same_config(fields):
    """Every option kind (value, flag, negated, blocks, pairs): the argv a sweep prints is the config it came from."""
    from dataclasses import asdict

    from gtaseg.cli.train import config_from_options
    from gtaseg.config import TrainConfig, train_argv

    ctx = main.commands["train"].make_context("train", train_argv(fields))
    parsed = config_from_options({k: v for k, v in ctx.params.items() if k not in ("out", "resume")})
    assert asdict(parsed) == asdict(TrainConfig(**fields))


def test_existing_run_directory_is_refused(tmp_path, tiny_folder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_folder), "--steps", "1", "--out", str(out), *TINY_TRAIN])
    assert result.exit_code == 1
    assert "already holds a run" in result.output and (out / "config.json").read_text() == "{}"


def test_blocks_option_limits_the_guided_blocks(tmp_path, tiny_folder):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_folder), "--steps", "1", "--blocks", "-1,0",
                                       "--out", str(out), *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["blocks"] == [-1, 0]
    bad = CliRunner().invoke(main, ["train", "--blocks", "last", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "block indices" in bad.output
