"""Atomic writes, checkpoints and hashing.

Every output is written to a temporary sibling and renamed into place, so a killed stage never leaves a
half-written file for DVC to cache. Checkpoints are loaded with `weights_only=True` or from safetensors:
nothing a user receives from someone else can run code when loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import typing
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dpt_repro.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Build a directory under a temporary name, then swap it in; the old one goes only after the swap."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def missing_input(path: Path | str, what: str = "") -> UserError:
    """The one message for an input that is not there: what, where, and the command that makes it."""
    from dpt_repro.config import producer

    holds, command = producer(path)
    return UserError(f"missing input: {what or holds} ({path}); run {command} first")


def corrupt_input(path: Path | str, what: str, problem: str) -> UserError:
    """The one message for an input that is there but unreadable or inconsistent."""
    from dpt_repro.config import producer

    return UserError(f"corrupt input: {what} ({path}) {problem}; rerun {producer(path)[1]}")


def require_file(path: Path | str, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise missing_input(path, what)
    return path


def require_inputs(*inputs: Path) -> None:
    """Every input a stage reads, checked before the stage starts anything (a tracking run, a model): the first
    one missing is the one error."""
    for path in inputs:
        if not Path(path).exists():
            raise missing_input(path)


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str, what: str, keys: typing.Sequence[str] = ()) -> Any:
    """A JSON object; with `keys`, it must be a mapping that holds them (so a stage never meets a KeyError)."""
    path = require_file(path, what)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise corrupt_input(path, what, "is not valid JSON") from None
    lacking = [k for k in keys if not isinstance(data, dict) or k not in data]
    if lacking:
        raise corrupt_input(path, what, f"lacks {', '.join(lacking)}")
    return data


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """`np.savez_compressed`'s format with fixed zip timestamps, so equal arrays give byte-equal files (and so
    equal DVC hashes)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def read_npz(path: Path | str, what: str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, or only `keys` (the others are never decompressed: labels of a shard of
    large images cost nothing)."""
    path = require_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a bare .npy array, not an .npz archive")
            missing = [k for k in keys or () if k not in data.files]
            if missing:
                raise KeyError(", ".join(missing))
            return {k: data[k] for k in (keys or data.files)}
    except KeyError as exc:
        raise corrupt_input(path, what, f"lacks array {exc.args[0]}") from None
    except Exception as exc:  # zipfile, zlib and value errors all mean the same thing here
        raise corrupt_input(path, what, f"cannot be read ({type(exc).__name__})") from None


def array_digest(*arrays: np.ndarray) -> str:
    """A content hash of arrays (dtype, shape and bytes), stable across file formats."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class SplitDigest:
    """`array_digest(images, labels)` of a split that arrives shard by shard (`total` images in all): a split
    larger than memory hashes to the value its whole arrays would give."""

    def __init__(self, total: int):
        self.total, self._images, self._labels = total, None, []

    def update(self, images: np.ndarray, labels: np.ndarray) -> None:
        if self._images is None:
            self._images = hashlib.sha256(f"{images.dtype.str}{(self.total, *images.shape[1:])}".encode())
        self._images.update(np.ascontiguousarray(images).tobytes())
        self._labels.append(np.asarray(labels))

    def hexdigest(self) -> str:
        h = self._images.copy() if self._images is not None else hashlib.sha256()
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        h.update(f"{labels.dtype.str}{labels.shape}".encode())
        h.update(labels.tobytes())
        return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_parquet(path: Path | str, what: str, columns: list[str] | None = None):
    """A parquet table, or a UserError naming what is missing or unreadable."""
    import pandas as pd

    path = require_file(path, what)
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises several error types for truncated or foreign files
        raise corrupt_input(path, what, f"cannot be read ({type(exc).__name__})") from None


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Training state (model, EMA, optimiser, step, algorithm state): tensors and plain Python only."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or unsafe and was not loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})") from None


def save_weights(path: Path | str, state_dict: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))


def load_weights(path: Path | str, what: str) -> dict:
    from safetensors.torch import load_file

    path = require_file(path, what)
    try:
        return load_file(str(path))
    except Exception as exc:
        raise corrupt_input(path, what, f"is not a readable safetensors file ({type(exc).__name__})") from None
