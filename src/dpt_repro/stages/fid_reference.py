"""fid-reference: Inception statistics of real images, computed once per dataset split and cached by DVC.

One pass gives every reference-side feature `evaluate` needs (so it reads no real image through the network):
pool3 mean/covariance and the KID sample, the sFID statistics of the spatial features, the precision/recall
sample, and the pool3 rows of each true class for class FID."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import iter_split, load_manifest, split_count
from dpt_repro.io import require_inputs, write_npz
from dpt_repro.metrics import fid, generation
from dpt_repro.runtime import setup

REFERENCE_SEED = 0  # fixed: the reference must not change with base.seed


def reference_indices(n_total: int, n: int) -> np.ndarray:
    n = min(n, n_total)
    return np.sort(np.random.default_rng(REFERENCE_SEED).choice(n_total, n, replace=False))


def _selected(folder: Path, split: str, idx: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The images and labels at the sorted indices `idx`, shard by shard."""
    offset = 0
    for images, labels in iter_split(folder, split):
        lo, hi = np.searchsorted(idx, [offset, offset + len(images)])
        yield images[idx[lo:hi] - offset], labels[idx[lo:hi] - offset]
        offset += len(images)


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.prepared)
    e = cfg.eval
    device = setup(cfg.base)
    idx = reference_indices(split_count(p.prepared, e.fid_ref_split), e.fid_ref_images)
    extractor = fid.FeatureExtractor(device, e.fid_resize, e.fid_precision, spatial=True)
    acc = generation.SetFeatures(len(idx), num_classes=cfg.base.num_classes, pr_images=e.pr_images,
                                 class_images=e.class_fid_images, device=extractor.device)
    ref = generation.stream_features(_selected(p.prepared, e.fid_ref_split, idx), len(idx), extractor, acc,
                                     batch_size=e.batch_size, description="fid reference")
    if not distributed.is_main():
        return {}
    digest = load_manifest(p.prepared)["splits"][e.fid_ref_split]["sha256"]
    meta = {"dataset": cfg.base.dataset, "split": e.fid_ref_split, "n": int(len(idx)), "resize": e.fid_resize,
            "precision": e.fid_precision, "network": fid.NETWORK, "weights_sha256": fid.WEIGHTS_SHA256,
            "data_sha256": digest, "spatial_features": fid.SPATIAL_FEATURES, "pr_images": len(ref["pr_features"]),
            "class_fid_images": e.class_fid_images, "class_counts": acc.class_totals.tolist()}
    write_npz(p.fid_ref, **{k: v.astype(np.float32) if "features" in k else v for k, v in ref.items()},
              indices=idx, meta=np.array(json.dumps(meta)))
    with tracking.stage_run(cfg, "fid_reference", ("eval",), params_file) as run:
        run.datasets(prepared=p.prepared)
        run.metrics({"reference_images": len(idx)})
        run.dict(meta, "fid_reference.json")
    return meta
