"""pseudo-label: hard label and confidence for every train image from the stage-1 EMA classifier.

As in the official code there is no confidence threshold and the labelled images get the predicted label
too; `true_label` is kept for diagnostics only (pseudo-label accuracy, per-class precision and recall).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import iter_split, load_manifest
from dpt_repro.io import atomic_path, require_inputs, write_json
from dpt_repro.metrics.classification import plot_confusion, summary
from dpt_repro.runtime import setup
from dpt_repro.ssl.train import predict_proba_all_ranks
from dpt_repro.stages.classifier import load_classifier


def predict_split(model, folder: Path, split: str, batch_size: int, device) -> pd.DataFrame:
    """The pseudo-label table of one split, read one shard at a time: memory holds one shard and the table."""
    pseudo, confidence, labels = [], [], []
    for images, shard_labels in iter_split(folder, split):
        probs = predict_proba_all_ranks(model, images, batch_size, device)
        pseudo.append(probs.argmax(1).astype(np.int64))
        confidence.append(probs.max(1).astype(np.float32))
        labels.append(shard_labels)
    pseudo = np.concatenate(pseudo)
    return pd.DataFrame({"index": np.arange(len(pseudo), dtype=np.int64), "pseudo_label": pseudo,
                         "confidence": np.concatenate(confidence), "true_label": np.concatenate(labels)})


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.prepared, p.stage1)
    device = setup(cfg.base)
    model, _ = load_classifier(p.stage1, "stage-1 classifier")
    table = predict_split(model.to(device), p.prepared, "train", cfg.pseudo.batch_size, device)
    if not distributed.is_main():
        return {}
    pseudo, labels = table["pseudo_label"].to_numpy(), table["true_label"].to_numpy()
    with atomic_path(p.pseudo_labels) as tmp:
        table.to_parquet(tmp, index=False)
    stats = summary(labels, pseudo, cfg.base.num_classes)
    metrics = {"pseudo_label_accuracy": stats["accuracy"], "mean_confidence": float(table.confidence.mean()),
               "per_class_precision": stats["precision"], "per_class_recall": stats["recall"],
               "class_counts": np.bincount(pseudo, minlength=cfg.base.num_classes).tolist()}
    write_json(p.metrics / "pseudo_label.json", metrics)
    class_names = load_manifest(p.prepared)["class_names"]
    plot_confusion(np.asarray(stats["confusion_matrix"]), class_names, p.plots / "pseudo_label_confusion.png",
                   f"stage-1 pseudo-labels vs true labels (train), {cfg.run_key}")
    with tracking.stage_run(cfg, "pseudo_label", ("pseudo",), params_file) as run:
        run.datasets(prepared=p.prepared)
        run.metrics({k: v for k, v in metrics.items() if not isinstance(v, list)})
        run.metrics({f"precision_class_{c}": v for c, v in enumerate(stats["precision"])})
        run.metrics({f"recall_class_{c}": v for c, v in enumerate(stats["recall"])})
        run.artifact(p.plots / "pseudo_label_confusion.png")
        run.dict(metrics, "pseudo_label.json")
    return metrics
