"""MLflow tracking: one pipeline run per experiment and setting, one child run per stage, models and lineage.

The tracking URI defaults to an SQLite file at an absolute path in the repository (`DVC_ROOT` when DVC runs
the stage, so queued experiments in temporary copies log to the same store); a `MLFLOW_TRACKING_URI` set by
the user wins (a relative SQLite path in it is made absolute the same way).

The experiment is created as a model-training experiment (tag `mlflow.experimentKind` =
`custom_model_development`, MLflow 3's "Machine learning" kind). The pipeline (parent) run is the row a user
compares: created once per resolved config, DVC experiment name and tracking URI (its id kept in
`.dpt/pipeline-runs.json`), named after the DVC experiment and the run key, it carries the params that tell
experiments apart, the float metrics of `metrics/eval.json` (copied when evaluate finishes, so a rerun updates
them), RUNNING while a stage runs, FINISHED when it ends and FAILED when a stage or gate fails, and links to
the git commit, the `dvc.lock` digest and the report row. Each stage starts a child run with the
`mlflow.parentRunId` tag, so the MLflow UI groups a whole pipeline under that row.

Lineage: every child run carries the git commit and DVC experiment name as tags, `params.yaml` and `dvc.lock`
as artifacts, and the data it read as dataset inputs whose digest is the DVC hash of that file or folder
(the md5 `dvc.lock` records), so a number in the UI leads back to the exact code, params and data.

Tracking never costs a stage its outputs: if the tracking server cannot be reached, the stage says so once
(naming the address and what was not logged) and runs on without logging; a server of an older major version
gets the stage's params, metrics and artifacts, and the model weights as plain artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

from dpt_repro import distributed
from dpt_repro.config import Config, paths
from dpt_repro.io import write_json

log = logging.getLogger("dpt_repro")
EXPERIMENT = "dpt-repro"
# MLflow 3's experiment kinds (the UI's `ExperimentKind`): "Machine learning" vs "GenAI apps & agents".
KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
CLASSIFIER_REGISTRY_NAME = "dpt-classifier"
GENERATOR_REGISTRY_NAME = "dpt-generator"
CHAMPION = "champion"
RESULTS_STAGE = "evaluate"  # its metrics/eval.json holds the headline metrics the pipeline run carries
# The params that tell one experiment from another, logged on the pipeline run (named as in the child runs).
PIPELINE_RUNS = Path(".dpt") / "pipeline-runs.json"
PIPELINE_PARAMS = ("base.profile", "base.dataset", "base.labels_per_class", "base.seed", "stage1.algorithm",
                   "stage1.backbone", "stage2.labels", "stage2.profile", "sample.images_per_class",
                   "sample.guidance_scale", "stage3.protocol", "stage3.generated_share")


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def dvc_exp_name() -> str:
    return os.environ.get("DVC_EXP_NAME", "workspace")


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


def older_server(uri: str) -> str | None:
    """The MLflow version an HTTP tracking server runs when its major version is older than this client's."""
    import mlflow

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/version", timeout=5) as resp:
            version = resp.read().decode().strip()
    except (urllib.error.URLError, OSError):
        return None
    major = version.split(".")[0]
    return version if major.isdigit() and int(major) < int(mlflow.__version__.split(".")[0]) else None


def _connection_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException, ConnectionError, TimeoutError)


def _flatten(prefix: str, d: dict) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def _experiment(mlflow) -> tuple[str, str]:
    """The experiment's id and kind. A new one is created as a training experiment; one without a kind (made by
    an earlier dpt-repro) gets it; another kind, set on purpose, is left as it is."""
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        artifacts = (project_root() / "mlartifacts").as_uri() if tracking_uri().startswith("sqlite") else None
        try:
            return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts,
                                            tags={KIND_TAG: TRAINING_KIND}), TRAINING_KIND
        except Exception:  # another process created it first
            exp = mlflow.get_experiment_by_name(EXPERIMENT)
    kind = exp.tags.get(KIND_TAG)
    if kind is None:
        mlflow.tracking.MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_KIND)
        kind = TRAINING_KIND
    return exp.experiment_id, kind


def _tags(cfg: Config) -> dict[str, str]:
    return {"dvc.exp_name": dvc_exp_name(), "git.commit": git_commit(),
            "labels_per_class": str(cfg.base.labels_per_class), "seed": str(cfg.base.seed),
            "dataset": cfg.base.dataset, "run_key": cfg.run_key}


def _pipeline_key(cfg: Config) -> str:
    """One pipeline run per resolved config (params file and `-S` overrides; not the launcher, which is
    hardware), DVC experiment and tracking store."""
    sections = {f.name: cfg.section(f.name) for f in dataclasses.fields(cfg) if f.name != "launcher"}
    src = json.dumps([sections, dvc_exp_name(), tracking_uri()], sort_keys=True, default=str)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def _pipeline_run(mlflow, cfg: Config, params_file: Path, experiment_id: str, kind: str) -> str:
    """The parent run for this setting, created on first use (with the params that identify the experiment)
    and remembered in a small file."""
    key = _pipeline_key(cfg)
    state = _known_pipeline_runs()
    if key in state:
        return state[key]
    if kind != TRAINING_KIND:
        log.warning("MLflow experiment %r at %s already exists with kind %r (tag %s), not %r (model training): "
                    "the pipeline logs to it as usual and leaves its kind as it is; set that tag to %r to make it "
                    "a training experiment", EXPERIMENT, tracking_uri(), kind, KIND_TAG, TRAINING_KIND,
                    TRAINING_KIND)
    from mlflow.entities import Param

    client = mlflow.tracking.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"{dvc_exp_name()} {cfg.run_key}", tags=_tags(cfg))
    values = {f"{section}.{name}": cfg.section(section)[name]
              for section, name in (p.split(".") for p in PIPELINE_PARAMS)}
    params = [Param(k, str(v)) for k, v in {**values, "dvc.exp_name": dvc_exp_name()}.items()]
    client.log_batch(run.info.run_id, params=params)
    client.log_artifact(run.info.run_id, str(params_file))
    write_json(PIPELINE_RUNS, {**state, key: run.info.run_id})
    return run.info.run_id


def _known_pipeline_runs() -> dict[str, str]:
    """Pipeline-run ids by `_pipeline_key`, of the runs this workspace created."""
    return json.loads(PIPELINE_RUNS.read_text()) if PIPELINE_RUNS.is_file() else {}


def _links(cfg: Config) -> dict[str, str]:
    """What made the pipeline run's current results: the code, the DVC lock file as this stage saw it, and the
    row `dpt-repro report` gives the experiment."""
    lock = Path("dvc.lock")
    exp = os.environ.get("DVC_EXP_NAME")
    row = (f"experiment {exp} in reports/report.md (dpt-repro report)" if exp else
           "workspace run: none until committed, then a '(commit)' row of reports/report.md (dpt-repro report)")
    return {"git.commit": git_commit(), "dvc.lock_md5": hashlib.md5(lock.read_bytes()).hexdigest()
            if lock.is_file() else "none yet", "report.row": row}


def _results(cfg: Config) -> dict[str, float]:
    """The float metrics of metrics/eval.json: the headline metrics, and any that evaluate adds later."""
    path = paths(cfg).metrics / "eval.json"
    values = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in values.items() if isinstance(v, float)}


@contextlib.contextmanager
def pipeline_outcome(cfg: Config) -> Iterator[None]:
    """Mark the pipeline run FAILED when a stage raises (a failed gate, a user error, a crash), then re-raise."""
    try:
        yield
    except Exception:
        _mark_failed(cfg)
        raise


def _mark_failed(cfg: Config) -> None:
    """FAILED on the pipeline run of this setting, if a stage created one (nothing is created for a failure)."""
    parent = _known_pipeline_runs().get(_pipeline_key(cfg))
    uri = tracking_uri()
    if parent is None or not distributed.is_main() or server_problem(uri) is not None:
        return  # nothing logged yet, another rank's job, or a server the stage already named as unreachable
    import mlflow

    try:
        mlflow.tracking.MlflowClient(tracking_uri=uri).set_terminated(parent, "FAILED")
    except _connection_errors() as exc:
        log.warning("MLflow tracking at %s failed while marking the pipeline run FAILED (%s)", uri,
                    str(exc).splitlines()[0][:200])


def _pip_requirements(*dists: str) -> list[str]:
    """Explicit requirements, so logging a model skips MLflow's slow inference of them."""
    from importlib.metadata import version

    return [f"{d}=={version(d)}" for d in ("mlflow", "torch", "numpy", "safetensors", *dists)]


class StageRun:
    """Thin handle on the active child run, so stages do not import mlflow themselves.

    After a connection error the handle goes offline: the stage keeps running and writing its outputs,
    and the one warning says what was not logged. Against a server of an older major version (`old_server`,
    its version) models are logged as plain artifacts: MLflow 3's logged models need a 3.x server.
    """

    def __init__(self, mlflow, stage: str, old_server: str | None = None):
        self._mlflow = mlflow
        self.stage = stage
        self.offline = mlflow is None
        self.old_server = old_server

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

        if self.old_server:
            log.warning("MLflow tracking server %s runs MLflow %s, an older major version than this client's %s: "
                        "stage %s logs its %s weights as plain artifacts (%s/), not as an MLflow model, and does "
                        "not register them; params, metrics and other artifacts are logged as usual. Upgrade the "
                        "server to MLflow 3 for models and the registry.", tracking_uri(), self.old_server,
                        self._mlflow.__version__, self.stage, kind, kind)
            self.artifacts(model_dir, kind)
            return None
        code = Path(__file__).parent / "mlflow_models" / f"{kind}.py"
        info = self._call(f"model {kind}", lambda: self._mlflow.pyfunc.log_model(
            name=kind, python_model=str(code), artifacts={"model_dir": str(model_dir)}, signature=signature,
            code_paths=[str(Path(dpt_repro.__file__).parent)], pip_requirements=_pip_requirements(*extra_dists)))
        return info.model_uri if info is not None else None

    def register(self, model_uri: str | None, registry: str, metric: str, value: float | None, cfg: Config,
                 higher_is_better: bool) -> None:
        """Register a model version tagged with its selection metric (one that uses no test image) and point
        the `champion` alias at the best version by that metric. A version without the metric (None) is
        registered but not a candidate."""
        if model_uri is None or self.offline:
            return

        def register() -> None:
            client = self._mlflow.tracking.MlflowClient()
            tags = {**({metric: f"{value:.6f}"} if value is not None else {}), **_tags(cfg)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._mlflow.register_model(model_uri, registry, tags=tags)
            sign = 1 if higher_is_better else -1
            versions = [v for v in client.search_model_versions(f"name='{registry}'") if metric in v.tags]
            if not versions:
                log.info("%s: no version has %s yet, so no %s alias", registry, metric, CHAMPION)
                return
            best = max(versions, key=lambda v: (sign * float(v.tags[metric]), -int(v.version)))
            client.set_registered_model_alias(registry, CHAMPION, best.version)
            log.info("%s: version %s is %s (%s %s)", registry, best.version, CHAMPION, metric, best.tags[metric])

        self._call(f"registry {registry}", register)


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
    from mlflow.entities import Metric, RunTag

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # set_tracking_uri also exports MLFLOW_TRACKING_URI to this process's environment (for subprocesses): restored
    # at the end, so a later stage in the same process (a test, a notebook) resolves its own store again
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id, kind = _experiment(mlflow)
        parent = _pipeline_run(mlflow, cfg, Path(params_file), experiment_id, kind)
        client = mlflow.tracking.MlflowClient()
        tags = {**_tags(cfg), "mlflow.parentRunId": parent, "stage": stage}
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
            params: dict[str, Any] = {}
            for name in ("base", *sections):
                params.update(_flatten(name, cfg.section(name)))
            mlflow.log_params(params)
            run = StageRun(mlflow, stage, older_server(uri))
            run._call("the pipeline run's status", lambda: client.update_run(parent, "RUNNING"))
            run._call("the pipeline run's links", lambda: client.log_batch(
                parent, tags=[RunTag(k, v) for k, v in _links(cfg).items()]))
            run.artifact(params_file, "lineage")
            if Path("dvc.lock").is_file():
                run.artifact("dvc.lock", "lineage")
            yield run
        # reached only when the stage succeeded (`pipeline_outcome` marks a failure), after its child run ended
        if stage == RESULTS_STAGE:
            run._call("the pipeline run's metrics", lambda: client.log_batch(
                parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in _results(cfg).items()]))
        run._call("the pipeline run's status", lambda: client.set_terminated(parent, "FINISHED"))
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
