"""Kill a stage with SIGKILL after its first checkpoint (or shard), rerun it, and get what an uninterrupted run
gives; rerun a stage and get bit-identical outputs. Smoke profile, real CLI processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "lpc1-seed0"


def cli(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dpt-repro"
    result = subprocess.run([str(exe), *args], cwd=repo, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def killed_after(repo: Path, pattern: str, *args: str) -> None:
    """Start a stage, SIGKILL it as soon as a file matching `pattern` exists, and wait for it to die."""
    exe = Path(sys.executable).parent / "dpt-repro"
    proc = subprocess.Popen([str(exe), *args], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(repo.glob(pattern)):
        assert proc.poll() is None, f"{args} finished before {pattern} appeared"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("faults")
    for item in ("params.yaml", "configs"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, repo / item)
    cli(repo, "profile", "smoke")
    for stage in ("prepare", "split", "stage1", "pseudo-label"):
        cli(repo, stage)
    return repo


def test_split_and_pseudo_labels_are_bit_identical_on_rerun(repo):
    split = (repo / "data" / "splits" / KEY / "split.json").read_bytes()
    table = pd.read_parquet(repo / "data" / "pseudo_labels" / KEY / "pseudo_labels.parquet")
    cli(repo, "split")
    cli(repo, "pseudo-label")
    assert (repo / "data" / "splits" / KEY / "split.json").read_bytes() == split
    pd.testing.assert_frame_equal(pd.read_parquet(repo / "data" / "pseudo_labels" / KEY / "pseudo_labels.parquet"),
                                  table, check_exact=True)


def test_stage1_killed_after_a_checkpoint_resumes_to_the_same_weights(repo):
    weights = repo / "models" / "stage1" / KEY / "model.safetensors"
    reference = weights.read_bytes()
    shutil.rmtree(weights.parent)
    killed_after(repo, f"checkpoints/stage1/{KEY}/*.pt", "stage1")
    assert not weights.parent.exists()  # nothing half-written where DVC would look
    result = cli(repo, "stage1")
    assert "resuming from step" in result.stderr
    assert weights.read_bytes() == reference
    assert not list(repo.glob(f"checkpoints/stage1/{KEY}/*.pt"))  # a finished run leaves no checkpoint behind


def test_stage2_killed_after_a_checkpoint_resumes_to_the_same_weights(repo):
    cli(repo, "validate", "pseudo_labels")
    cli(repo, "stage2")
    ema = repo / "models" / "stage2" / KEY / "unet_ema" / "diffusion_pytorch_model.safetensors"
    reference = ema.read_bytes()
    killed_after(repo, f"checkpoints/stage2/{KEY}/*.pt", "stage2")
    assert ema.read_bytes() == reference  # the previous finished model is intact after the kill
    result = cli(repo, "stage2")
    assert "resuming from step" in result.stderr
    assert ema.read_bytes() == reference


def test_sampling_killed_between_shards_resumes_by_shard_with_identical_images(repo):
    cli(repo, "sample")
    out = repo / "data" / "generated" / KEY
    reference = {p.name: np.load(p)["images"] for p in sorted(out.glob("shard-*.npz"))}
    assert len(reference) >= 2
    shutil.rmtree(out)
    killed_after(repo, f"checkpoints/sample/{KEY}/*/shard-000.npz", "sample")
    assert not out.exists()
    result = cli(repo, "sample")
    assert "(resumed)" in result.stderr
    for name, images in reference.items():
        assert np.array_equal(np.load(out / name)["images"], images), name
