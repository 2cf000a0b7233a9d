"""The training checkpoint's format: every piece of run state saves and restores itself, a checkpoint of the
earlier format (version 1, its run state loose at the top level) still resumes, and both end as a run never
stopped."""
import os
import signal

import pytest
import torch
from click.testing import CliRunner

from gtaseg import train as training
from gtaseg.checkpointing import VERSION, load_state, migrate, save_state
from gtaseg.cli import main
from gtaseg.data.folder import folder_split
from gtaseg.data.pipeline import BadImages, Batches, train_dataset
from gtaseg.errors import CheckpointError
from gtaseg.objective import Objective
from gtaseg.rundir import CHECKPOINT
from gtaseg.transmix import TransMix
from tests.conftest import TINY_TRAIN, make_image_folder
from tests.test_reliability_resume import assert_same_run

pytestmark = pytest.mark.usefixtures("one_thread")

# TransMix (its generator), a partial metrics interval (--log-every 2, stopped after step 3), the probed head,
# validation rows and the best weights: every piece of run state the checkpoint carries.
RUN = [*TINY_TRAIN, "--accum-steps", "1", "--steps", "6", "--log-every", "2", "--transmix", "--head-init", "probe",
       "--val-fraction", "0.34", "--eval-every", "3", "--keep", "best"]


def invoke(*args) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def stopped_after(step: int, data, out, monkeypatch) -> None:
    """A run of RUN stopped by SIGINT in its ``step``-th step, as a Ctrl-C would arrive."""
    loss, calls = Objective.loss, []

    def interrupted(self, images, labels):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, images, labels)

    monkeypatch.setattr(Objective, "loss", interrupted)
    result = CliRunner().invoke(main, ["train", "--data", str(data), *RUN, "--out", str(out)])
    assert result.exit_code == 130, result.output
    monkeypatch.setattr(Objective, "loss", loss)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    # Module-scoped, so it runs before the tests' one_thread: set it here too, or the reference is computed
    # with another thread count than the resumed runs, and their float sums differ in the last digits.
    out, threads = tmp_path_factory.mktemp("reference") / "run", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        invoke("train", "--data", data, *RUN, "--out", out)
    finally:
        torch.set_num_threads(threads)
    return out


def as_version_1(state: dict, layout: str) -> dict:
    """``state`` as gtaseg wrote it under version 1: ``draws`` (``position`` before skipped batches were counted,
    with the unused ``scaler``), ``log``, ``skipped`` and ``transmix_rng`` at the top level, and no probe top-1."""
    old = {k: v for k, v in state.items() if k not in ("batches", "bad_images", "transmix", "probe_top1")}
    old["version"] = 1
    draws = state["batches"]["drawn"]
    if layout == "draws":
        old["draws"] = draws
    else:
        cfg = state["config"]
        old["position"] = state["step"] * cfg["batch_size"] * cfg["accum_steps"] * len(draws)
        old["scaler"] = None
    old["skipped"] = state["bad_images"]["skipped"]
    old["transmix_rng"] = state["transmix"]["rng"]
    return old


@pytest.mark.parametrize("layout", ["draws", "position"])
def test_a_version_1_checkpoint_resumes_as_an_uninterrupted_run(data, reference, tmp_path, monkeypatch, layout):
    out = tmp_path / "run"
    stopped_after(3, data, out, monkeypatch)
    state = load_state(out / CHECKPOINT)
    save_state(out / CHECKPOINT, as_version_1(state, layout))
    assert torch.load(out / CHECKPOINT, weights_only=True)["version"] == 1
    fits = []
    monkeypatch.setattr(training, "fit_head", lambda *a, fit=training.fit_head: fits.append(1) or fit(*a))
    invoke("train", "--resume", out)
    assert fits == [1]  # version 1 kept no probe top-1 (final.json reports it): the probe is fitted again
    assert_same_run(out, reference)


def test_a_checkpoint_resumes_as_an_uninterrupted_run_without_refitting_the_probe(data, reference, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "run"
    stopped_after(3, data, out, monkeypatch)
    state = load_state(out / CHECKPOINT)
    assert state["version"] == VERSION and state["step"] == 3 and state["log"]["count"] == 1
    assert state["probe_top1"] is not None and state["batches"]["drawn"] == [3]
    # The head's weights are in the model's state; the probe's top-1 is a run variable.
    monkeypatch.setattr(training, "fit_head", lambda *a: pytest.fail("the probe was fitted again"))
    invoke("train", "--resume", out)
    assert_same_run(out, reference)


def test_checkpoint_versions():
    v1 = {"version": 1, "step": 2, "config": {"batch_size": 4, "accum_steps": 3}, "position": 48, "log": {},
          "skipped": {"a.png": "a.png: truncated"}, "transmix_rng": None, "scaler": None}
    state = migrate(v1, "old.pt")
    assert state["version"] == VERSION and state["batches"] == {"drawn": [6, 6]}  # two ranks, 3 micro-batches a step
    assert state["bad_images"] == {"skipped": {"a.png": "a.png: truncated"}}
    assert not {"position", "skipped", "transmix_rng", "scaler", "transmix"} & state.keys()
    assert migrate({**v1, "step": 0, "position": 0}, "old.pt")["batches"] == {"drawn": [0]}  # any world size
    with pytest.raises(CheckpointError, match="old.pt: training checkpoint version 3"):
        migrate({"version": 3}, "old.pt")


# ------------------------------------------------------------------------------- each object's own state

def test_transmix_resumes_its_draws():
    a = TransMix(5, seed=1)
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    a.mix(images, labels)
    b = TransMix(5, seed=7)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        x, y = a.mix(images, labels), b.mix(images, labels)
        assert torch.equal(x.images, y.images) and x.lam == y.lam and x.box == y.box


def test_bad_images_keep_what_they_skipped():
    a = BadImages("skip", {"a.png": "a.png: truncated"})
    b = BadImages("skip")
    b.load_state_dict(a.state_dict())
    assert b.skipped == a.skipped and b.skipped is not a.skipped


def test_the_batch_stream_restarts_where_it_stood(tmp_path):
    split = folder_split(make_image_folder(tmp_path / "data", classes=2, train=3, test=1, size=16), "train")
    dataset = train_dataset(split, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, crop_scale=(0.5, 1.0),
                            randaugment=True)
    stream = lambda **kw: Batches(dataset, batch_size=2, seed=3, workers=0, bad_images=BadImages("stop"), **kw)  # noqa: E731
    first = stream()
    for _ in range(5):
        next(first)
    state = first.state_dict()
    assert state == {"drawn": [5]}
    torch.manual_seed(0)
    resumed = stream()
    after = torch.get_rng_state()
    resumed.load_state_dict(state)
    # Building the stream moves torch's RNG on by the one draw the loader's seed takes, as it always did.
    torch.manual_seed(0)
    torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(after, torch.get_rng_state())
    for _ in range(3):
        (x, y), (x2, y2) = next(first), next(resumed)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert resumed.drawn == first.drawn == 8
    with pytest.raises(CheckpointError, match="2 processes; resume it with as many"):
        stream().load_state_dict({"drawn": [5, 4]})
    other = stream(rank=1, world_size=2)
    other.load_state_dict({"drawn": [5, 4]})
    assert other.drawn == 4
    other.load_state_dict({"drawn": [0]})  # nothing drawn yet: any number of processes
    assert other.drawn == 0


def test_the_metrics_interval_resumes_on_its_device():
    a = training.Interval(torch.device("cpu"))
    a.add({"loss": torch.tensor(1.5), "ce": torch.tensor(0.25)})
    a.add({"loss": torch.tensor(0.5), "ce": torch.tensor(0.75)})
    b = training.Interval(torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.count == 2 and {k: float(v) for k, v in b.sums.items()} == {"loss": 2.0, "ce": 1.0}
    b.reset()
    assert b.count == 0 and b.sums == {}
