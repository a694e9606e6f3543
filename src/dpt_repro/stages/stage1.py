"""stage1: the semi-supervised classifier on the few labelled images and all unlabelled train images, or, with
`stage1.algorithm: probe`, DPT's ImageNet protocol: a frozen pretrained encoder and a logistic regression."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths, validate_stage1_batch
from dpt_repro.io import require_inputs, write_json
from dpt_repro.ssl.train import build_classifier
from dpt_repro.stages.classifier import classifier_data, fit_probe_and_save, probe_data, real_data, train_and_save

STREAM = 1


def probe(cfg: Config, data) -> dict:
    """DPT's ImageNet stage 1: a frozen pretrained encoder and a logistic regression on the labelled images."""
    c = cfg.stage1
    encoder = build_classifier(c, cfg.base.channels, cfg.base.num_classes, cfg.base.image_size)
    return fit_probe_and_save(cfg, "stage1", encoder, asdict(c), data, paths(cfg).stage1, {
        "weights": f"{c.backbone} pretrained ({c.weights or 'hub'}), frozen, + logistic-regression head"})


def run(cfg: Config, params_file: Path) -> dict:
    validate_stage1_batch(cfg)
    p = paths(cfg)
    require_inputs(p.prepared, p.split)
    probing = cfg.stage1.algorithm == "probe"
    data = probe_data(cfg) if probing else classifier_data(*real_data(cfg))  # read before tracking starts
    with tracking.stage_run(cfg, "stage1", ("stage1",), params_file) as run:
        run.datasets(prepared=p.prepared, split=p.split)
        if probing:
            if not distributed.is_main():
                return {}  # the probe is a small fit on one process
            metrics = probe(cfg, data)
        else:
            result = train_and_save(cfg, "stage1", data, STREAM, p.stage1, run)
            if not distributed.is_main():
                return {}
            metrics = {"val_acc": result.best_val_acc, "best_step": result.best_step,
                       "images_per_second": round(result.images_per_second, 1)}
        run.metrics(metrics)
        run.classifier_model(p.stage1, (cfg.base.image_size, cfg.base.image_size, cfg.base.channels))
    write_json(p.metrics / "stage1.json", metrics)
    return metrics
