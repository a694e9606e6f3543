"""tools/screenshots.py refuses, in one line and before it starts anything, what it cannot work with.

The pictures themselves come from `make screenshots` (a real mlflow server and Chromium), not from this suite."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shoot(workspace: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "screenshots.py"), "shoot", str(workspace), *options],
                          capture_output=True, text=True, cwd=ROOT)


def refused(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_no_chromium(tmp_path):
    refused(shoot(tmp_path, "--chromium", str(tmp_path / "no-chromium")), "no Chromium at")


def test_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        refused(shoot(tmp_path, "--chromium", sys.executable, "--port", str(s.getsockname()[1])), "is busy")


def test_no_finished_pipeline(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    result = shoot(tmp_path, "--chromium", sys.executable, "--port", "0")
    refused(result, "no finished pipeline in")
    assert "metrics/eval.json" in result.stderr and "dvc.lock" in result.stderr


def test_a_port_chromium_refuses(tmp_path):
    refused(shoot(tmp_path, "--chromium", sys.executable, "--port", "5060"), "Chromium refuses")
