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


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing input: {what} ({path}); run the stage that produces it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"corrupt input: {what} ({path}) is not valid JSON") from None


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
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing input: {what} ({path}); run the stage that produces it first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in (keys or data.files)}
    except Exception as exc:  # zipfile, zlib and value errors all mean the same thing here
        raise UserError(f"corrupt input: {what} ({path}) cannot be read ({type(exc).__name__})") from None


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

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing input: {what} ({path}); run the stage that produces it first")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises several error types for truncated or foreign files
        raise UserError(f"corrupt input: {what} ({path}) cannot be read ({type(exc).__name__})") from None


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

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing input: {what} ({path}); run the stage that produces it first")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"corrupt input: {what} ({path}) is not a readable safetensors file "
                        f"({type(exc).__name__})") from None
