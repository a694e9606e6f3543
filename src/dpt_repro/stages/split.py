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


def draw_split(labels: np.ndarray, num_classes: int, labels_per_class: int, val_per_class: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    labelled, validation = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        need = labels_per_class + val_per_class
        if len(idx) < need:
            raise UserError(f"base.labels_per_class {labels_per_class} plus base.val_per_class {val_per_class} "
                            f"is above what class {c} has ({len(idx)} images)")
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
