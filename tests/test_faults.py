"""Kill a stage with SIGKILL after its first checkpoint (or shard), rerun it, and get what an uninterrupted run
gives; rerun a stage and get bit-identical outputs. Smoke profile, real CLI processes."""

from __future__ import annotations

import json
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


def test_prepare_killed_while_writing_its_shards_leaves_no_output_and_reruns_identically(repo):
    out = repo / "data" / "prepared" / "fashion-mnist"
    reference = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    shutil.rmtree(out)
    killed_after(repo, "data/prepared/.fashion-mnist.*.tmp/train-000.npz", "prepare")
    assert not out.exists()  # the half-written folder never took the output's name
    cli(repo, "prepare")
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == reference


def _limited_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_fails_for_lack_of_space_keeps_the_previous_output(repo):
    table = repo / "data" / "pseudo_labels" / KEY / "pseudo_labels.parquet"
    before = table.read_bytes()
    assert len(before) > 200_000
    exe = Path(sys.executable).parent / "dpt-repro"
    result = subprocess.run([str(exe), "pseudo-label"], cwd=repo, capture_output=True, text=True, timeout=600,
                            preexec_fn=_limited_file_size(200_000))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "could not write" in result.stderr and "earlier outputs are intact" in result.stderr
    assert "Traceback" not in result.stderr
    assert table.read_bytes() == before
    assert not list(table.parent.glob(".*.tmp"))  # the temporary file was removed


def test_a_refused_parameter_deletes_nothing_finished(repo):
    weights = repo / "models" / "stage1" / KEY / "model.safetensors"
    before = weights.read_bytes()
    exe = Path(sys.executable).parent / "dpt-repro"
    for bad in ("stage1.threshold=1.5", "stage1.batch_size=100000", "stage1.algorithm=meanteacher"):
        result = subprocess.run([str(exe), "stage1", "-S", bad], cwd=repo, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (bad, result.stderr[-1500:])
        assert bad.split("=")[1] in result.stderr, bad
        assert weights.read_bytes() == before


def test_samples_and_metrics_are_identical_on_rerun(repo):
    if not (repo / "models" / "stage2" / KEY).exists():  # when run alone
        cli(repo, "stage2")
    cli(repo, "sample")
    shards = {p.name: p.read_bytes() for p in sorted((repo / "data" / "generated" / KEY).glob("*"))}
    for stage in ("fid-reference", "stage3", "evaluate"):
        cli(repo, stage)
    def metrics_now() -> dict:  # everything but the measured speed
        return {name: {k: v for k, v in json.loads((repo / "metrics" / name).read_text()).items()
                       if k != "images_per_second"} for name in ("stage3.json", "eval.json", "pseudo_label.json")}

    metrics = metrics_now()
    assert {"fid", "kid", "top1_stage3"} <= set(metrics["eval.json"])
    for stage in ("sample", "stage3", "evaluate"):
        cli(repo, stage)
    assert {p.name: p.read_bytes() for p in sorted((repo / "data" / "generated" / KEY).glob("*"))} == shards
    assert metrics_now() == metrics
