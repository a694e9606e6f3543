"""MLflow tracking: one pipeline run per params version, one child run per stage.

The tracking URI defaults to an SQLite file at an absolute path in the repository (`DVC_ROOT` when DVC runs
the stage, so queued experiments in temporary copies log to the same store); a `MLFLOW_TRACKING_URI` set by
the user wins. The pipeline run is created once and its id kept in `.dpt/pipeline-run.json`, keyed by a hash
of the params file, the DVC experiment name and the run key; each stage starts a child run with the
`mlflow.parentRunId` tag, so the MLflow UI groups a whole pipeline under one row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

from dpt_repro.config import Config
from dpt_repro.io import write_json

log = logging.getLogger("dpt_repro")
EXPERIMENT = "dpt-repro"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(prefix: str, d: dict) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def _experiment_id(mlflow) -> str:
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    artifacts = (project_root() / "mlartifacts").as_uri() if tracking_uri().startswith("sqlite") else None
    try:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    except Exception:  # another process created it first
        return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


def _tags(cfg: Config) -> dict[str, str]:
    return {"dvc.exp_name": os.environ.get("DVC_EXP_NAME", "workspace"), "git.commit": git_commit(),
            "labels_per_class": str(cfg.base.labels_per_class), "seed": str(cfg.base.seed),
            "dataset": cfg.base.dataset, "run_key": cfg.run_key}


def _pipeline_run(mlflow, cfg: Config, params_file: Path, experiment_id: str) -> str:
    """The parent run for this params version, created on first use and remembered in a small file."""
    key_src = params_file.read_bytes() + os.environ.get("DVC_EXP_NAME", "").encode() + cfg.run_key.encode()
    key = hashlib.sha256(key_src).hexdigest()[:16]
    state_file = Path(".dpt") / "pipeline-run.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("key") == key and state.get("uri") == tracking_uri():
            return state["run_id"]
    client = mlflow.tracking.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"pipeline {cfg.run_key}", tags=_tags(cfg))
    client.log_artifact(run.info.run_id, str(params_file))
    client.set_terminated(run.info.run_id)
    write_json(state_file, {"key": key, "run_id": run.info.run_id, "uri": tracking_uri()})
    return run.info.run_id


class StageRun:
    """Thin handle on the active child run, so stages do not import mlflow themselves."""

    def __init__(self, mlflow):
        self._mlflow = mlflow

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(clean, step=step)

    def artifact(self, path: Path | str, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def artifacts(self, path: Path | str, folder: str | None = None) -> None:
        self._mlflow.log_artifacts(str(path), artifact_path=folder)

    def dict(self, obj: dict, name: str) -> None:
        self._mlflow.log_dict(obj, name)

    def dataset(self, name: str, source: str, digest: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # a local path matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            src = resolve_dataset_source(source)
        self._mlflow.log_input(MetaDataset(src, name=name, digest=digest[:36]))


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, sections: tuple[str, ...], params_file: Path | str) -> Iterator[StageRun]:
    """A child run of the pipeline run, with the stage's params sections logged."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = _experiment_id(mlflow)
    parent = _pipeline_run(mlflow, cfg, Path(params_file), experiment_id)
    tags = {**_tags(cfg), "mlflow.parentRunId": parent, "stage": stage}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
        params: dict[str, Any] = {}
        for name in ("base", *sections):
            params.update(_flatten(name, cfg.section(name)))
        mlflow.log_params(params)
        yield StageRun(mlflow)
