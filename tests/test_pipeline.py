"""End to end: the smoke profile through `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKED = ["dvc.yaml", "params.yaml", "configs", "src", ".dvc/config", ".dvcignore", ".gitignore", "pyproject.toml"]
STAGES = ["prepare", "gate_prepared", "split", "gate_split", "stage1", "pseudo_label", "gate_pseudo_labels", "stage2",
          "sample", "fid_reference", "gate_generated", "gate_mix", "stage3", "evaluate"]


def sh(args, cwd, **kw):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for item in TRACKED:
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    sh(["git", "init", "-q"], repo, check=True)
    assert sh(["dpt-repro", "profile", "smoke"], repo).returncode == 0
    first = sh(["dvc", "repro"], repo, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return repo, first.stdout


def test_every_stage_ran_and_a_second_repro_runs_nothing(smoke_repo):
    repo, out = smoke_repo
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    again = sh(["dvc", "repro"], repo)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    status = sh(["dvc", "status"], repo)
    assert "up to date" in status.stdout


def test_metrics_are_computed(smoke_repo):
    repo, _ = smoke_repo
    m = json.loads((repo / "metrics" / "eval.json").read_text())
    for key in ("top1_stage1", "top1_stage3", "dpt_gain", "fid", "kid", "pseudo_label_accuracy"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert 0 <= m["top1_stage1"] <= 1 and 0 <= m["pseudo_label_accuracy"] <= 1
    assert m["dpt_gain"] == pytest.approx(m["top1_stage3"] - m["top1_stage1"])
    assert m["fid"] > 0
    assert m["fid_protocol"]["n_generated"] == 80 and m["fid_protocol"]["n_reference"] == 100
    for name in ("prepared", "split", "pseudo_labels", "generated", "mix"):
        gate = json.loads((repo / "metrics" / "gates" / f"{name}.json").read_text())
        assert gate["success"], name
        assert (repo / "reports" / "gates" / name / "index.html").is_file()
    manifest = json.loads((repo / "data" / "generated" / "lpc1-seed0" / "manifest.json").read_text())
    assert manifest["count"] == 80 and (repo / "reports" / "lpc1-seed0" / "samples.png").is_file()


def test_mlflow_holds_one_pipeline_run_with_a_child_per_stage(smoke_repo):
    import mlflow

    repo, _ = smoke_repo
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dpt-repro")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1
    assert sorted(r.data.tags["stage"] for r in children) == sorted(STAGES)
    by_stage = {r.data.tags["stage"]: r for r in children}
    ev = by_stage["evaluate"].data
    assert json.loads((repo / "metrics" / "eval.json").read_text())["fid"] == pytest.approx(ev.metrics["fid"])
    assert by_stage["stage1"].data.params["stage1.algorithm"] == "freematch"
    assert "val_acc" in by_stage["stage1"].data.metrics
    history = client.get_metric_history(by_stage["stage2"].info.run_id, "loss")
    assert len(history) > 5
    assert all(r.data.tags["labels_per_class"] == "1" for r in children)


def test_a_stage_runs_alone_for_another_labels_per_class(smoke_repo):
    repo, _ = smoke_repo
    for stage in ("split", "stage1"):
        result = sh(["dpt-repro", stage, "--labels-per-class", "2"], repo)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (repo / "models" / "stage1" / "lpc2-seed0" / "model.safetensors").is_file()
    assert (repo / "models" / "stage1" / "lpc1-seed0" / "model.safetensors").is_file()


def test_a_failing_gate_stops_the_pipeline_before_the_expensive_stage(smoke_repo):
    repo, _ = smoke_repo
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("pseudo_max_kl: 5.0", "pseudo_max_kl: 1.0e-09"))
        result = sh(["dvc", "repro"], repo, timeout=600)
    finally:
        params.write_text(original)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'gate_pseudo_labels'" in out and "Running stage 'stage2'" not in out
    assert "gate pseudo_labels failed" in out and "FAIL table: expect_column_kl_divergence_to_be_less_than" in out
    assert "'threshold': 1e-09" in out
    assert not (repo / "metrics" / "gates" / "pseudo_labels.passed").exists()
