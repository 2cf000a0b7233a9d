"""Untrusted checkpoints: every foreign file is read with safetensors or torch.load(weights_only=True), so a
pickle that would run code is refused before it runs anything; training states are written atomically."""
import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gtaseg
from gtaseg.checkpointing import VERSION, load_state, save_state
from gtaseg.rundir import CHECKPOINT
from gtaseg.cli import main
from tests.conftest import TINY_TRAIN

TRAIN = [*TINY_TRAIN, "--accum-steps", "1", "--steps", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Unpickling this calls exec(): writes ``marker``. Pickle stores exec and the source text, not this class."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def plant(path: Path, marker: Path, how: str) -> Path:
    payload = {"state_dict": {"blocks.0.norm1.weight": torch.ones(3), "evil": RunsCode(marker)}}
    if how == "torch":  # torch's zip format, as torch.save writes it
        torch.save(payload, path)
    else:  # a bare pickle, as old checkpoints are
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path


def test_the_payload_does_run_code_when_unpickled_plainly(tmp_path):
    """The control: without weights_only the file would have run its code."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pth", marker, "pickle")
    with open(tmp_path / "evil.pth", "rb") as f:
        pickle.load(f)
    assert marker.read_text() == "pwned"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, path: Path) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and "refused" in errors[0], result.output


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_train_init_and_source_refuse_a_code_running_pickle(tiny_folder, tmp_path, how):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pth", marker, how)
    refused(invoke("train", "--data", tiny_folder, *TRAIN, "--init", evil, "--arch", "vit_tiny_patch16_224",
                   "--out", tmp_path / "a"), evil)
    refused(invoke("train", "--data", tiny_folder, *TRAIN, "--source", evil, "--arch", "vit_tiny_patch16_224",
                   "--out", tmp_path / "b"), evil)
    assert not marker.exists()


def test_eval_refuses_a_code_running_pickle(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8), mode="L").save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pth", marker, "torch")
    refused(invoke("eval-voc", "--ckpt", evil, "--voc-root", root, "--image-size", 32, "--workers", 0), evil)
    assert not marker.exists()


def test_resume_refuses_a_planted_training_checkpoint(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "--data", tiny_folder, *TRAIN, "--steps", 3, "--out", out).exit_code == 0
    (out / "final.json").unlink()  # as if the run had stopped after its last checkpoint
    marker = tmp_path / "pwned"
    plant(out / CHECKPOINT, marker, "torch")
    refused(invoke("train", "--resume", out), out / CHECKPOINT)
    assert not marker.exists()
    (out / CHECKPOINT).write_bytes(b"garbage")
    result = invoke("train", "--resume", out)
    assert result.exit_code == 1 and str(out / CHECKPOINT) in result.output and "Traceback" not in result.output


def test_training_state_round_trips_under_weights_only(tiny_folder, tmp_path):
    """The state holds only what weights_only=True accepts: numpy RNG states and TransMix's Generator state
    are stored as tensors and primitives."""
    out = tmp_path / "run"
    assert invoke("train", "--data", tiny_folder, *TRAIN, "--transmix", "--out", out).exit_code == 0
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["format"] == "gtaseg-train-state"
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert state["transmix"]["rng"]["bit_generator"] == "PCG64"
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    assert json.loads((out / "config.json").read_text())["transmix"] is True


def test_a_failed_checkpoint_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    good = {"format": "gtaseg-train-state", "version": VERSION, "step": 4, "w": torch.arange(10.0)}
    save_state(path, good)
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # half a file on disk, then the job dies
            fh.truncate(len(Path(f).read_bytes()) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {**good, "step": 8})
    assert path.read_bytes() == before and load_state(path)["step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left behind


def test_every_torch_load_in_the_package_is_weights_only():
    """A static check: each torch.load call passes weights_only=True, and nothing unpickles directly."""
    root = Path(gtaseg.__file__).parent
    loads = []
    for source in root.rglob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                pytest.fail(f"{source}:{node.lineno}: {name} unpickles untrusted bytes")
            if name == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, \
                    f"{source}:{node.lineno}: torch.load without weights_only=True"
                loads.append(f"{source.name}:{node.lineno}")
    assert loads  # gtaseg.models.checkpoints.torch_load, which reads foreign model checkpoints and training states
