"""The canonical on-disk form: `.npz` shards of uint8 images and int64 labels, plus a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpt_repro.errors import UserError
from dpt_repro.io import array_digest, read_json, read_npz, write_npz


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, shard_size: int) -> dict:
    """Write one split as `<split>-NNN.npz`; returns its manifest entry (count, shards, content digest)."""
    names = []
    for i, start in enumerate(range(0, len(images), shard_size)):
        name = f"{split}-{i:03d}.npz"
        write_npz(folder / name, images=images[start:start + shard_size], labels=labels[start:start + shard_size])
        names.append(name)
    counts = np.bincount(labels).tolist()
    return {"count": int(len(images)), "shards": names, "class_counts": counts,
            "sha256": array_digest(images, labels)}


def load_manifest(folder: Path) -> dict:
    return read_json(Path(folder) / "manifest.json", "prepared-data manifest")


def load_split(folder: Path, split: str, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read all shards of one split; with `verify`, check them against the manifest's digest."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    if split not in manifest["splits"]:
        raise UserError(f"prepared data in {folder} has no split {split!r}")
    entry = manifest["splits"][split]
    parts = [read_npz(folder / name, f"{split} shard") for name in entry["shards"]]
    images = np.concatenate([p["images"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    if len(images) != entry["count"]:
        raise UserError(f"corrupt input: {folder} split {split} has {len(images)} images, manifest says "
                        f"{entry['count']}")
    if verify and array_digest(images, labels) != entry["sha256"]:
        raise UserError(f"corrupt input: {folder} split {split} does not match its manifest checksum")
    return images, labels


def load_generated_manifest(folder: Path) -> dict:
    return read_json(Path(folder) / "manifest.json", "generated-images manifest")


def load_generated(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = load_generated_manifest(folder)
    parts = [read_npz(Path(folder) / name, "generated shard") for name in manifest["shards"]]
    return np.concatenate([p["images"] for p in parts]), np.concatenate([p["labels"] for p in parts])
