"""What a new user ran into on real photos (issue 18): silent wrong settings, stuck run folders, progress and
time, and the small things; each test fails on the code before the fix."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gtaseg.cli import main
from tests.conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parent.parent
TRAIN = [*TINY_TRAIN, "--accum-steps", "1", "--steps", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------- --help

def test_help_and_usage_errors_import_no_torch():
    """--help and click's usage errors answer without importing torch, timm or the evaluation code."""
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from gtaseg.cli import main
        codes = [CliRunner().invoke(main, args).exit_code
                 for args in (["--help"], ["train", "--help"], ["eval-voc", "--help"], ["train", "--steps", "0"])]
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "gtaseg.evaluation.runner") if m in sys.modules)
        print(codes, heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0, 0, 0, 2] []", out.stdout + out.stderr


# ------------------------------------------------------------------------------ settings silently wrong

@pytest.mark.parametrize("option, value, says", [
    ("--lam", "-1", "must be 0 or more"), ("--weight-decay", "-0.05", "must be 0 or more"),
    ("--lr", "0", "must be above 0"), ("--lr", "-1e-4", "must be above 0"), ("--head-lr-scale", "-1", "above 0")])
def test_negative_coefficients_are_refused_before_the_run_folder_exists(tiny_folder, tmp_path, option, value, says):
    out = tmp_path / "run"
    one_line_error(invoke("train", "--data", tiny_folder, *TRAIN, option, value, "--out", out), option, says)
    assert not out.exists()
