"""stage1: the semi-supervised classifier on the few labelled images and all unlabelled train images."""

from __future__ import annotations

from pathlib import Path

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.io import write_json
from dpt_repro.stages.classifier import classifier_data, real_data, train_and_save

STREAM = 1


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    images, labels, split = real_data(cfg)
    data = classifier_data(images, labels, split)
    with tracking.stage_run(cfg, "stage1", ("stage1",), params_file) as run:
        run.datasets(prepared=p.prepared, split=p.split)
        result = train_and_save(cfg, "stage1", data, STREAM, p.stage1, run)
        if not distributed.is_main():
            return {}
        metrics = {"val_acc": result.best_val_acc, "best_step": result.best_step,
                   "images_per_second": round(result.images_per_second, 1)}
        run.metrics(metrics)
        run.classifier_model(p.stage1, images.shape[1:])
    write_json(p.metrics / "stage1.json", metrics)
    return metrics
