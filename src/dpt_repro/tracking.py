"""MLflow tracking: one pipeline run per params version, one child run per stage, models and lineage.

The tracking URI defaults to an SQLite file at an absolute path in the repository (`DVC_ROOT` when DVC runs
the stage, so queued experiments in temporary copies log to the same store); a `MLFLOW_TRACKING_URI` set by
the user wins (a relative SQLite path in it is made absolute the same way). The pipeline run is created once
and its id kept in `.dpt/pipeline-run.json`, keyed by a hash of the params file, the DVC experiment name and
the run key; each stage starts a child run with the `mlflow.parentRunId` tag, so the MLflow UI groups a
whole pipeline under one row.

Lineage: every child run carries the git commit and DVC experiment name as tags, `params.yaml` and `dvc.lock`
as artifacts, and the data it read as dataset inputs whose digest is the DVC hash of that file or folder
(the md5 `dvc.lock` records), so a number in the UI leads back to the exact code, params and data.

Tracking never costs a stage its outputs: if the tracking server cannot be reached, the stage says so once
(naming the address and what was not logged) and runs on without logging.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

from dpt_repro import distributed
from dpt_repro.config import Config
from dpt_repro.io import write_json

log = logging.getLogger("dpt_repro")
EXPERIMENT = "dpt-repro"
CLASSIFIER_REGISTRY_NAME = "dpt-classifier"
CHAMPION = "champion"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_hash(path: Path | str) -> str:
    """The md5 DVC records for a file or folder (`<md5>.dir` for a folder), computed by DVC's own code."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def server_problem(uri: str) -> str | None:
    """Why an HTTP tracking server cannot be used, or None when it answers (or the store is local)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:
            return None if resp.status == 200 else f"/health answered HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _connection_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException, ConnectionError, TimeoutError)


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


def _pip_requirements(*dists: str) -> list[str]:
    """Explicit requirements, so logging a model skips MLflow's slow inference of them."""
    from importlib.metadata import version

    return [f"{d}=={version(d)}" for d in ("mlflow", "torch", "numpy", "safetensors", *dists)]


class StageRun:
    """Thin handle on the active child run, so stages do not import mlflow themselves.

    After a connection error the handle goes offline: the stage keeps running and writing its outputs,
    and the one warning says what was not logged.
    """

    def __init__(self, mlflow, stage: str):
        self._mlflow = mlflow
        self.stage = stage
        self.offline = mlflow is None

    def _call(self, what: str, fn):
        if self.offline:
            return None
        try:
            return fn()
        except _connection_errors() as exc:
            self.offline = True
            log.warning("MLflow tracking at %s failed while logging %s (%s); stage %s goes on and writes its "
                        "outputs, but its remaining metrics, artifacts and models are not logged",
                        tracking_uri(), what, str(exc).splitlines()[0][:200], self.stage)
            return None

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self._call("metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def tags(self, values: dict[str, str]) -> None:
        self._call("tags", lambda: self._mlflow.set_tags(values))

    def artifact(self, path: Path | str, folder: str | None = None) -> None:
        self._call(f"artifact {path}", lambda: self._mlflow.log_artifact(str(path), artifact_path=folder))

    def artifacts(self, path: Path | str, folder: str | None = None) -> None:
        self._call(f"artifacts {path}", lambda: self._mlflow.log_artifacts(str(path), artifact_path=folder))

    def dict(self, obj: dict, name: str) -> None:
        self._call(name, lambda: self._mlflow.log_dict(obj, name))

    def datasets(self, **inputs: Path) -> None:
        """Log the data this stage read as dataset inputs whose digests are their DVC hashes."""
        if self.offline:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        for name, path in inputs.items():
            with warnings.catch_warnings():  # a local path matches two equivalent source types
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(str(Path(path).resolve()))
            dataset = MetaDataset(src, name=name, digest=dvc_hash(path))
            self._call(f"dataset {name}", lambda: self._mlflow.log_input(dataset))

    def classifier_model(self, model_dir: Path, image_shape: tuple[int, int, int]) -> str | None:
        """Log a saved classifier as a pyfunc model: predict(uint8 images) gives class ids. Returns its URI."""
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
                                   params=ParamSchema([ParamSpec("batch_size", "long", 256)]))
        return self._model("classifier", model_dir, signature, ())

    def generator_model(self, model_dir: Path, image_shape: tuple[int, int, int], *, seed: int,
                        guidance_scale: float, steps: int, scheduler: str) -> str | None:
        """Log the stage-2 generator as a pyfunc model: predict(class ids) gives uint8 images."""
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
                                   params=ParamSchema([ParamSpec("seed", "long", seed),
                                                       ParamSpec("guidance_scale", "double", guidance_scale),
                                                       ParamSpec("steps", "long", steps),
                                                       ParamSpec("scheduler", "string", scheduler)]))
        return self._model("generator", model_dir, signature, ("diffusers",))

    def _model(self, kind: str, model_dir: Path, signature, extra_dists: tuple[str, ...]) -> str | None:
        import dpt_repro

        code = Path(__file__).parent / "mlflow_models" / f"{kind}.py"
        info = self._call(f"model {kind}", lambda: self._mlflow.pyfunc.log_model(
            name=kind, python_model=str(code), artifacts={"model_dir": str(model_dir)}, signature=signature,
            code_paths=[str(Path(dpt_repro.__file__).parent)], pip_requirements=_pip_requirements(*extra_dists)))
        return info.model_uri if info is not None else None

    def register_champion_candidate(self, model_uri: str | None, val_acc: float, cfg: Config) -> None:
        """Register a stage-3 classifier and point the `champion` alias at the best version by val accuracy."""
        if model_uri is None or self.offline:
            return

        def register() -> None:
            client = self._mlflow.tracking.MlflowClient()
            tags = {"val_acc": f"{val_acc:.6f}", **_tags(cfg)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._mlflow.register_model(model_uri, CLASSIFIER_REGISTRY_NAME, tags=tags)
            versions = client.search_model_versions(f"name='{CLASSIFIER_REGISTRY_NAME}'")
            best = max(versions, key=lambda v: (float(v.tags.get("val_acc", "-1")), -int(v.version)))
            client.set_registered_model_alias(CLASSIFIER_REGISTRY_NAME, CHAMPION, best.version)
            log.info("%s: version %s is %s (val acc %s)", CLASSIFIER_REGISTRY_NAME, best.version, CHAMPION,
                     best.tags.get("val_acc"))

        self._call(f"registry {CLASSIFIER_REGISTRY_NAME}", register)


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, sections: tuple[str, ...], params_file: Path | str) -> Iterator[StageRun]:
    """A child run of the pipeline run, with the stage's params sections, params file and dvc.lock logged."""
    if not distributed.is_main():  # rank 0 logs for every process of a data-parallel stage
        yield StageRun(None, stage)
        return
    uri = tracking_uri()
    problem = server_problem(uri)
    if problem is not None:
        log.warning("MLflow tracking server %s is unreachable (%s). Check that `mlflow server` runs there "
                    "(`make mlflow-server`) or unset MLFLOW_TRACKING_URI to log to the local SQLite store. "
                    "Stage %s runs and writes its outputs, but its params, metrics, datasets and models are "
                    "NOT logged to MLflow.", uri, problem, stage)
        yield StageRun(None, stage)
        return
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow)
    parent = _pipeline_run(mlflow, cfg, Path(params_file), experiment_id)
    tags = {**_tags(cfg), "mlflow.parentRunId": parent, "stage": stage}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
        params: dict[str, Any] = {}
        for name in ("base", *sections):
            params.update(_flatten(name, cfg.section(name)))
        mlflow.log_params(params)
        run = StageRun(mlflow, stage)
        run.artifact(params_file, "lineage")
        if Path("dvc.lock").is_file():
            run.artifact("dvc.lock", "lineage")
        yield run
