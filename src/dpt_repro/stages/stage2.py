"""stage2: the class-conditional diffusion model on all train images with their pseudo-labels."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import load_split
from dpt_repro.diffusion.train import fingerprint, train_diffusion
from dpt_repro.errors import UserError
from dpt_repro.io import atomic_dir, read_parquet, write_json
from dpt_repro.runtime import setup
from dpt_repro.stages.classifier import write_csv


def load_pseudo_labels(cfg: Config, n_images: int) -> np.ndarray:
    p = paths(cfg)
    table = read_parquet(p.pseudo_labels, "pseudo-labels", ["index", "pseudo_label"]).sort_values("index")
    if len(table) != n_images or not np.array_equal(table["index"].to_numpy(), np.arange(n_images)):
        raise UserError(f"pseudo-labels {p.pseudo_labels} do not cover the {n_images} train images; rerun pseudo-label")
    return table["pseudo_label"].to_numpy()


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    device = setup(cfg.base)
    images, _ = load_split(p.prepared, "train")
    labels = load_pseudo_labels(cfg, len(images))
    c = cfg.stage2
    if c.batch_size % c.grad_accum:
        raise UserError(f"stage2.batch_size {c.batch_size} must be divisible by stage2.grad_accum {c.grad_accum}")
    fp = fingerprint(c, cfg.base.seed, labels, len(images), images.shape[1])
    ckpt = Path("checkpoints") / "stage2" / cfg.run_key / f"{fp}.pt"
    with tracking.stage_run(cfg, "stage2", ("stage2",), params_file) as run:
        run.dataset("pseudo_labels", str(p.pseudo_labels.resolve()), fp)
        result = train_diffusion(c, images, labels, num_classes=cfg.base.num_classes, seed=cfg.base.seed,
                                 device=device, checkpoint=ckpt, on_log=lambda s, row: run.metrics(row, step=s))
        with atomic_dir(p.stage2) as tmp:
            result.unet.save_pretrained(tmp / "unet")
            result.ema_unet.save_pretrained(tmp / "unet_ema")
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(result.scheduler_config, indent=2))
            write_json(tmp / "training.json", {"stage2": asdict(c), "seed": cfg.base.seed, "fingerprint": fp,
                                               "num_classes": cfg.base.num_classes,
                                               "null_class": cfg.base.num_classes, "weights_for_sampling": "unet_ema",
                                               "resumed_from": result.resumed_from})
            write_csv(tmp / "train_curve.csv", result.curve)
        write_csv(p.plots / "stage2" / "train_curve.csv", result.curve)
        ckpt.unlink(missing_ok=True)
        metrics = {"final_loss": result.curve[-1]["loss"], "images_per_second": round(result.images_per_second, 1),
                   "parameters": sum(q.numel() for q in result.unet.parameters())}
        run.metrics(metrics)
        run.artifacts(p.stage2, "model")
    write_json(p.metrics / "stage2.json", metrics)
    return metrics
