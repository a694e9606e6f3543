"""MLflow against a real tracking server on loopback, and what happens when the server is not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def dpt(args: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["dpt-repro", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A project folder with the smoke params and nothing run yet."""
    work = tmp_path_factory.mktemp("mlops")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    shutil.copytree(ROOT / "configs", work / "configs")
    assert dpt(["profile", "smoke"], work, "").returncode == 0
    return work


@pytest.fixture(scope="module")
def server(mlflow_servers):
    return mlflow_servers()


def test_a_stage_logs_to_a_real_tracking_server_which_stops_by_pid(workdir, server):
    import mlflow

    from dpt_repro.tracking import dvc_hash

    uri, proc, port = server
    result = dpt(["prepare"], workdir, uri)
    assert result.returncode == 0, result.stderr[-2000:]
    result = dpt(["split"], workdir, uri)
    assert result.returncode == 0, result.stderr[-2000:]

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dpt-repro")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's "Machine learning" kind
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([exp.experiment_id])}
    assert {"prepare", "split"} <= set(runs)
    split = runs["split"]
    assert split.data.tags["mlflow.parentRunId"] == runs["prepare"].data.tags["mlflow.parentRunId"]
    parent = client.get_run(split.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "workspace lpc1-seed0" and parent.info.status == "FINISHED"
    assert parent.data.params["base.labels_per_class"] == "1" and parent.data.params["base.profile"] == "smoke"
    assert parent.info.start_time <= runs["prepare"].info.start_time
    assert parent.info.end_time >= split.info.end_time  # the pipeline's span, not the 16 ms of its creation

    # A stage that fails (here: stage 2 without pseudo-labels) turns the pipeline run FAILED.
    failed = dpt(["stage2"], workdir, uri)
    assert failed.returncode == 2 and "pseudo-labels" in failed.stderr and "Traceback" not in failed.stderr
    assert client.get_run(parent.info.run_id).info.status == "FAILED"
    assert split.data.params["base.labels_per_class"] == "1"
    assert split.data.metrics["labelled_images"] == 10
    prepared = workdir / "data" / "prepared" / "fashion-mnist"
    digests = {i.dataset.name: i.dataset.digest for i in split.inputs.dataset_inputs}
    assert digests == {"prepared": dvc_hash(prepared)} and digests["prepared"].endswith(".dir")
    # artifacts go through the server's proxy: the client needs no access to the artifact store
    local = client.download_artifacts(split.info.run_id, "lineage/params.yaml", str(workdir / "dl"))
    assert Path(local).read_bytes() == (workdir / "params.yaml").read_bytes()

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while port_open(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not port_open(port)


def test_an_unreachable_server_names_the_address_and_loses_no_output(workdir):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = workdir / "data" / "splits" / "lpc2-seed0" / "split.json"
    result = dpt(["split", "--labels-per-class", "2"], workdir, uri)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and len(json.loads(out.read_text())["labelled"]) == 20
    err = " ".join(result.stderr.split())
    assert f"MLflow tracking server {uri} is unreachable" in err
    assert "NOT logged" in err and "mlflow server" in err
    assert "Traceback" not in result.stderr


def test_the_packaged_server_command_binds_to_loopback_by_default():
    dry = subprocess.run(["make", "-n", "mlflow-server"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    command = dry.stdout[dry.stdout.index("mlflow server"):].replace("\\\n", " ")
    assert "--host 127.0.0.1 " in command and "--backend-store-uri" in command


def test_an_experiment_of_another_kind_gets_one_warning_and_all_the_logs(workdir, tmp_path):
    """An existing `dpt-repro` experiment of the GenAI kind is logged to as usual and keeps its kind."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("dpt-repro", artifact_location=(tmp_path / "artifacts").as_uri(),
                                      tags={"mlflow.experimentKind": "genai_development"})
    result = dpt(["split", "--labels-per-class", "3"], workdir, uri)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "genai_development" in line]
    assert len(warnings) == 1 and "logs to it as usual" in warnings[0], result.stderr
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "genai_development"
    split = client.search_runs([exp_id], "tags.stage = 'split'")[0]
    assert split.data.metrics["labelled_images"] == 30
    assert (workdir / "data" / "splits" / "lpc3-seed0" / "split.json").is_file()


# an `mlflow` executable of an older major version: `make test` installs MLflow 2.22.1 there
OLD_MLFLOW = Path(os.environ.get("DPT_OLD_MLFLOW", Path(__file__).resolve().parents[1] / ".venv-mlflow2/bin/mlflow"))


def test_a_server_of_an_older_major_version_gets_everything_but_the_models(workdir, mlflow_servers):
    import mlflow

    assert OLD_MLFLOW.is_file(), f"no MLflow 2 at {OLD_MLFLOW}: `make test` (or `make .venv-mlflow2/bin/mlflow`) " \
                                 "installs it"
    uri, _, _ = mlflow_servers(OLD_MLFLOW)
    for stage in ("prepare", "split"):  # stage 1's inputs, unless an earlier test of this module made them
        if not (workdir / "data" / ("prepared" if stage == "prepare" else "splits")).is_dir():
            assert dpt([stage], workdir, uri).returncode == 0
    result = dpt(["stage1", "-S", "stage1.steps=5", "-S", "stage1.eval_every=5"], workdir, uri)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "older major version" in line]
    assert len(warnings) == 1 and "as plain artifacts (classifier/)" in warnings[0], result.stderr
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dpt-repro")
    stage1 = client.search_runs([exp.experiment_id], "tags.stage = 'stage1'")[0]
    assert stage1.info.status == "FINISHED" and "val_acc" in stage1.data.metrics
    assert stage1.data.params["stage1.steps"] == "5"
    # (an MLflow 3 client lists a sub-folder through the logged-models API, which a 2.x server lacks: download)
    weights = client.download_artifacts(stage1.info.run_id, "classifier/model.safetensors", str(workdir / "old"))
    local = workdir / "models" / "stage1" / "lpc1-seed0" / "model.safetensors"
    assert Path(weights).read_bytes() == local.read_bytes()


def test_an_in_process_stage_leaves_the_environment_as_it_found_it(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI for subprocesses; left set, a later stage of the same
    process in another folder (or any command it starts) would log to the first folder's store."""
    from dpt_repro import tracking
    from dpt_repro.config import Config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        (folder / "params.yaml").write_text("{}\n")
        with tracking.stage_run(Config(), "prepare", ("prepare",), folder / "params.yaml") as run:
            run.metrics({"images": 1.0})
        assert "MLFLOW_TRACKING_URI" not in os.environ
        assert (folder / "mlflow.db").is_file()
