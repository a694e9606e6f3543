"""prepare: import the raw dataset into `.npz` shards with a manifest of counts and checksums."""

from __future__ import annotations

import logging
from pathlib import Path

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import write_split
from dpt_repro.data.sources import load_raw
from dpt_repro.io import atomic_dir, write_json

log = logging.getLogger("dpt_repro")


def run(cfg: Config, params_file: Path) -> dict:
    raw = load_raw(cfg.base, cfg.prepare)
    out = paths(cfg).prepared
    with atomic_dir(out) as tmp:
        splits = {"train": write_split(tmp, "train", raw.train_images, raw.train_labels, cfg.prepare.shard_size),
                  "test": write_split(tmp, "test", raw.test_images, raw.test_labels, cfg.prepare.shard_size)}
        manifest = {"dataset": cfg.base.dataset, "source": raw.source, "class_names": raw.class_names,
                    "num_classes": cfg.base.num_classes, "image_shape": list(raw.train_images.shape[1:]),
                    "dtype": "uint8", "splits": splits}
        write_json(tmp / "manifest.json", manifest)
    log.info("prepare: %d train / %d test images -> %s", splits["train"]["count"], splits["test"]["count"], out)
    with tracking.stage_run(cfg, "prepare", ("prepare",), params_file) as run:
        run.metrics({"train_images": splits["train"]["count"], "test_images": splits["test"]["count"]})
        run.datasets(prepared=out)
        run.artifact(out / "manifest.json")
    return manifest
