"""Shared fixtures; offline and telemetry-free environment for every test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
TRACKED = ["dvc.yaml", "params.yaml", "configs", "src", ".dvc/config", ".dvcignore", ".gitignore", "pyproject.toml"]
KEY = "lpc1-seed0"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "dpt-repro tests", "GIT_AUTHOR_EMAIL": "tests@dpt-repro.invalid",
                "GIT_COMMITTER_NAME": "dpt-repro tests", "GIT_COMMITTER_EMAIL": "tests@dpt-repro.invalid"}


SMOKE_READERS = ("test_bad_input.py", "test_pipeline.py")  # the files whose tests read the smoke pipeline


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs the suite in worker processes (pytest-xdist). One test file is one unit of work, so its
    module fixtures are built once, and the files that read the smoke pipeline are one unit, so it is built once.
    (xdist's `--dist loadgroup` cannot do this under pytest 9: it renames node ids, which pytest 9 derives.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "smoke-pipeline" if name in SMOKE_READERS else name

    return FileScheduling(config, log)


def sh(args, cwd, env_extra=None, **kw):
    env = {**os.environ, **GIT_IDENTITY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the repo's own SQLite store, unless a test names a server
    env.update(env_extra or {})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kw)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def copy_checkout(repo: Path) -> Path:
    """The files a pipeline run needs from this checkout (what git tracks of it), copied into `repo`."""
    for item in TRACKED:
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return repo


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory):
    """The smoke profile through `dvc repro` in a temporary git copy of the repository, once per session: the
    tests that use it leave it as they found it (the bad-input battery checks that byte for byte)."""
    repo = copy_checkout(tmp_path_factory.mktemp("repo"))
    sh(["git", "init", "-q"], repo, check=True)
    for key in ("user.name", "user.email"):  # DVC experiments commit; CI machines may have no git identity
        ok(sh(["git", "config", key, GIT_IDENTITY["GIT_AUTHOR_" + key.split(".")[1].upper()]], repo))
    assert sh(["dpt-repro", "profile", "smoke"], repo).returncode == 0
    ok(sh(["git", "add", "-A"], repo))
    ok(sh(["git", "commit", "-q", "-m", "smoke profile"], repo))
    first = sh(["dvc", "repro"], repo, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return repo, first.stdout


@pytest.fixture
def toy_images():
    """A small 10-class set whose classes differ in brightness (survives flips and shifts), 28x28 greyscale."""
    rng = np.random.default_rng(0)
    n_per, k = 30, 10
    labels = np.repeat(np.arange(k), n_per)
    noise = rng.integers(0, 16, size=(n_per * k, 28, 28, 1))
    images = (labels[:, None, None, None] * 25 + noise).astype(np.uint8)
    return images, labels


@pytest.fixture
def cifar10_files(tmp_path):
    """Tiny files in CIFAR-10's python format (what torchvision downloads): pickled dicts of 3,072-byte rows
    (R, G, B planes) and labels; 10 images per batch, one of each class. Returns the data_path folder."""
    import pickle

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch = 10
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        planes = np.stack([np.full((per_batch, 32, 32), v, np.uint8) for v in (10, 20, 30)], 1)
        planes[:, 0, 0, 1] = labels  # R plane, row 0, column 1 carries the label
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": planes.reshape(per_batch, 3072), b"labels": labels}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh)
    return folder.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_servers(tmp_path_factory):
    """Start real `mlflow server`s on free loopback ports: `start(mlflow_executable=...)` gives (uri, process,
    port) once /health answers; every server still running is stopped by its process id at the end."""
    procs = []

    def start(executable: Path | str = Path(sys.executable).parent / "mlflow") -> tuple[str, subprocess.Popen, int]:
        store = tmp_path_factory.mktemp("server")
        port = free_port()
        proc = subprocess.Popen(
            [str(executable), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"),
            start_new_session=True)  # its own process group: MLflow 2's CLI leaves gunicorn behind on SIGTERM
        procs.append(proc)
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return uri, proc, port
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (store / "server.log").read_text()[-3000:]
            time.sleep(0.5)

    yield start
    for proc in procs:  # the server's whole process group, by its id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
