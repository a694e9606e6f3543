"""The canonical on-disk form: `.npz` shards of uint8 images and int64 labels, plus a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from dpt_repro.errors import UserError
from dpt_repro.io import SplitDigest, array_digest, read_json, read_npz, write_npz


class SplitWriter:
    """Writes one split as `<split>-NNN.npz` shard by shard as its images arrive (a split need not fit in memory)
    and returns its manifest entry: count, shards, class counts and the digest of the whole split."""

    def __init__(self, folder: Path, split: str, total: int, image_shape: tuple[int, ...]):
        self.folder, self.split, self.total, self.image_shape = Path(folder), split, total, tuple(image_shape)
        self.names: list[str] = []
        self.labels: list[np.ndarray] = []
        self.digest = SplitDigest(total)

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        if tuple(images.shape[1:]) != self.image_shape:
            raise UserError(f"{self.split} images are {tuple(images.shape[1:])}, params expect {self.image_shape} "
                            "(base.image_size, base.channels)")
        name = f"{self.split}-{len(self.names):03d}.npz"
        write_npz(self.folder / name, images=images, labels=labels)
        self.names.append(name)
        self.labels.append(np.asarray(labels))
        self.digest.update(images, labels)

    def entry(self) -> dict:
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        if len(labels) != self.total:
            raise UserError(f"{self.split}: wrote {len(labels)} images, expected {self.total}")
        return {"count": int(len(labels)), "shards": self.names, "class_counts": np.bincount(labels).tolist(),
                "sha256": self.digest.hexdigest()}


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, shard_size: int) -> dict:
    """Write one in-memory split as `<split>-NNN.npz`; returns its manifest entry."""
    writer = SplitWriter(folder, split, len(images), images.shape[1:])
    for start in range(0, len(images), shard_size):
        writer.add(images[start:start + shard_size], labels[start:start + shard_size])
    return writer.entry()


def load_manifest(folder: Path) -> dict:
    return read_json(Path(folder) / "manifest.json", "prepared-data manifest", ("splits",))


def _split_entry(folder: Path, split: str) -> dict:
    manifest = load_manifest(folder)
    if split not in manifest["splits"]:
        raise UserError(f"prepared data in {folder} has no split {split!r}")
    return manifest["splits"][split]


def split_count(folder: Path, split: str) -> int:
    return int(_split_entry(Path(folder), split)["count"])


def iter_split(folder: Path, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) one shard at a time: a pass over a split holds one shard in memory, whatever its size."""
    folder = Path(folder)
    for name in _split_entry(folder, split)["shards"]:
        part = read_npz(folder / name, f"{split} shard")
        yield part["images"], part["labels"]


def split_labels(folder: Path, split: str) -> np.ndarray:
    """The labels of a split without reading its images."""
    folder = Path(folder)
    return np.concatenate([read_npz(folder / name, f"{split} shard", ("labels",))["labels"]
                           for name in _split_entry(folder, split)["shards"]])


def select(folder: Path, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels at `indices` (any order), read shard by shard: memory holds one shard and the
    selection, so a few labelled images of a split too large for memory (ImageNet) are cheap to read."""
    indices = np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")
    wanted = indices[order]
    images, labels, offset = [], [], 0
    for x, y in iter_split(folder, split):
        lo, hi = np.searchsorted(wanted, [offset, offset + len(x)])
        images.append(x[wanted[lo:hi] - offset])
        labels.append(y[wanted[lo:hi] - offset])
        offset += len(x)
    if len(indices) and wanted[-1] >= offset:
        raise UserError(f"index {int(wanted[-1])} is past the {offset} images of {folder} split {split}")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.concatenate(images)[inverse], np.concatenate(labels)[inverse]


def load_split(folder: Path, split: str, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read all shards of one split; with `verify`, check them against the manifest's digest."""
    folder = Path(folder)
    entry = _split_entry(folder, split)
    parts = list(iter_split(folder, split))
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    if len(images) != entry["count"]:
        raise UserError(f"corrupt input: {folder} split {split} has {len(images)} images, manifest says "
                        f"{entry['count']}")
    if verify and array_digest(images, labels) != entry["sha256"]:
        raise UserError(f"corrupt input: {folder} split {split} does not match its manifest checksum")
    return images, labels


def load_generated_manifest(folder: Path) -> dict:
    return read_json(Path(folder) / "manifest.json", "generated-images manifest", ("shards", "images_per_class"))


def iter_generated(folder: Path, per_class: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Generated (images, labels) one shard at a time; with `per_class`, only the first `per_class` images of
    each class (by their plan index, so the same images K = per_class would have drawn)."""
    for name in load_generated_manifest(folder)["shards"]:
        part = read_npz(Path(folder) / name, "generated shard")
        keep = part["index"] < per_class if per_class > 0 else slice(None)
        yield part["images"][keep], part["labels"][keep]


def generated_count(folder: Path, per_class: int = 0) -> int:
    """How many generated images `load_generated(folder, per_class)` would return, without reading them."""
    total = 0
    for name in load_generated_manifest(folder)["shards"]:
        index = read_npz(Path(folder) / name, "generated shard", ("index",))["index"]
        total += int((index < per_class).sum()) if per_class > 0 else len(index)
    return total


def load_generated(folder: Path, per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    parts = list(iter_generated(folder, per_class))
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
