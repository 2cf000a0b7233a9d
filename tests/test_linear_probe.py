"""eval/linear_probe.py: the probe that sets the synthetic benchmark's part_scale (data/SYNTHETIC.md)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

spec = importlib.util.spec_from_file_location("linear_probe", Path(__file__).parents[1] / "eval" / "linear_probe.py")
linear_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(linear_probe)


def test_probe_reads_the_one_informative_feature():
    """Labels set by one coordinate among noise: the probe finds it, and held-out points agree."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g)
    y = (x[:, 7] > 0).long() + (x[:, 7] > 1).long()  # three classes along feature 7
    w, b = linear_probe.fit_probe(x[:300], y[:300], weight_decay=1e-3)
    assert w.shape == (20, 3)
    assert w[7].abs().max() > 5 * w[torch.arange(20) != 7].abs().max()
    assert ((x[300:] @ w + b).argmax(1) == y[300:]).float().mean() >= 0.9


@pytest.mark.usefixtures("one_thread")
def test_command_writes_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("GTASEG_CACHE", str(tmp_path / "cache"))
    synthetic = ["--synthetic", "num_classes=6", "--synthetic", "train_per_class=3", "--synthetic", "test_per_class=2",
                 "--synthetic", "image_size=64"]
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(linear_probe.main, ["--ckpt", "random:vit_tiny_patch16_224", *synthetic,
                                                    "--target", "tail", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["target"] == "tail" and saved["chance"] == 50.0  # 6 classes: 5 forked tails, 1 fan
    assert saved["synthetic"]["num_classes"] == 6
    assert saved["train_top1"] == 100.0  # 18 points in 384 dimensions are separable
    assert 0 <= saved["test_top1"] <= 100
    assert f"test {saved['test_top1']:.1f}" in result.output

    bad = CliRunner().invoke(linear_probe.main, ["--synthetic", "part_scale=9"])
    assert bad.exit_code == 1 and "part_scale must be in [0.25, 2]" in bad.output
