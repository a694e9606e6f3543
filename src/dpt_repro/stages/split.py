"""split: draw the labelled images and the validation split from train, per class, with a seed.

For one seed the draws are nested: the validation split is the same at every labels_per_class, and the
labelled images at 1 label per class are among those at 2 and at 5 (as the MSN subsets are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import load_manifest, split_labels
from dpt_repro.errors import UserError
from dpt_repro.io import read_json, require_inputs, write_json


def suggested_val_per_class(smallest_class: int) -> int:
    """The validation split for a dataset whose smallest class has this many train images: 10 % of it, at most
    the default profile's 100 (Fashion-MNIST's 6,000 per class and CIFAR-10's 5,000 keep 100)."""
    return max(1, min(100, smallest_class // 10))


def check_val_per_class(counts: np.ndarray, labels_per_class: int, val_per_class: int) -> None:
    """Validation must leave each class at least as many unlabelled-only images as it takes: otherwise it eats the
    data that stage 1 learns from (the default 100 of a 180-image class leaves 79), and the message names the value
    to use instead."""
    c = int(np.argmin(counts))
    smallest = int(counts[c])
    left = smallest - labels_per_class - val_per_class
    if left < val_per_class:
        most = (smallest - labels_per_class) // 2
        raise UserError(f"base.val_per_class {val_per_class} leaves class {c} {left} of its {smallest} train images "
                        f"outside the labels and the validation split, fewer than it validates on: use "
                        f"base.val_per_class: {suggested_val_per_class(smallest)} (10 % of the smallest class, "
                        f"{smallest} images; at most {most} passes)")


def draw_split(labels: np.ndarray, num_classes: int, labels_per_class: int, val_per_class: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    for c in range(num_classes):
        if counts[c] < labels_per_class + val_per_class:
            raise UserError(f"base.labels_per_class {labels_per_class} plus base.val_per_class {val_per_class} "
                            f"is above what class {c} has ({counts[c]} images)")
    check_val_per_class(counts, labels_per_class, val_per_class)
    labelled, validation = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        need = labels_per_class + val_per_class
        perm = np.random.default_rng([seed, c]).permutation(idx)
        validation.append(np.sort(perm[:val_per_class]))
        labelled.append(np.sort(perm[val_per_class:need]))
    return np.concatenate(labelled), np.concatenate(validation)


def read_split(cfg: Config) -> dict:
    """The split file of this run key, as `split` wrote it."""
    return read_json(paths(cfg).split, f"split for {cfg.run_key}")


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.prepared)
    labels = split_labels(p.prepared, "train")
    manifest = load_manifest(p.prepared)
    labelled, validation = draw_split(labels, cfg.base.num_classes, cfg.base.labels_per_class,
                                      cfg.base.val_per_class, cfg.base.seed)
    split = {"dataset": cfg.base.dataset, "train_sha256": manifest["splits"]["train"]["sha256"],
             "labels_per_class": cfg.base.labels_per_class, "val_per_class": cfg.base.val_per_class,
             "seed": cfg.base.seed, "labelled": labelled.tolist(), "validation": validation.tolist()}
    write_json(p.split, split)
    with tracking.stage_run(cfg, "split", (), params_file) as run:
        run.metrics({"labelled_images": len(labelled), "validation_images": len(validation)})
        run.datasets(prepared=p.prepared)
        run.artifact(p.split)
    return split
