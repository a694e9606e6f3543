"""prepare: import the raw dataset into `.npz` shards with a manifest of counts and checksums."""

from __future__ import annotations

import logging
from pathlib import Path

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import SplitWriter
from dpt_repro.data.sources import stream_raw
from dpt_repro.io import atomic_dir, write_json

log = logging.getLogger("dpt_repro")


def run(cfg: Config, params_file: Path) -> dict:
    raw = stream_raw(cfg.base, cfg.prepare)
    out = paths(cfg).prepared
    b, size = cfg.base, cfg.prepare.shard_size
    shape = (b.image_size, b.image_size, b.channels)
    with atomic_dir(out) as tmp:
        splits = {}
        for name, split in raw.splits.items():  # one shard in memory at a time
            writer = SplitWriter(tmp, name, len(split.labels), shape)
            for start in range(0, len(split.labels), size):
                writer.add(split.read(start, start + size), split.labels[start:start + size])
            splits[name] = writer.entry()
        manifest = {"dataset": b.dataset, "source": raw.source, "class_names": raw.class_names,
                    "num_classes": b.num_classes, "image_shape": list(shape), "dtype": "uint8", "splits": splits}
        write_json(tmp / "manifest.json", manifest)
    log.info("prepare: %d train / %d test images -> %s", splits["train"]["count"], splits["test"]["count"], out)
    with tracking.stage_run(cfg, "prepare", ("prepare",), params_file) as run:
        run.metrics({"train_images": splits["train"]["count"], "test_images": splits["test"]["count"]})
        run.datasets(prepared=out)
        run.artifact(out / "manifest.json")
    return manifest
