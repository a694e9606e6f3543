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
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def server(tmp_path_factory):
    """`mlflow server` on a free loopback port, stopped by its process id at the end."""
    store = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (store / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    yield uri, proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


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
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([exp.experiment_id])}
    assert {"prepare", "split"} <= set(runs)
    split = runs["split"]
    assert split.data.tags["mlflow.parentRunId"] == runs["prepare"].data.tags["mlflow.parentRunId"]
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
