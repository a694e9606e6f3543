"""sample: K pseudo images per class from the EMA UNet with guided DPM-Solver++, as `.npz` shards.

Shards are first written to a work folder keyed by the sampling fingerprint, so a killed run (even one that
DVC restarts, removing the stage's outputs) resumes at the first missing shard; the finished set is then
moved into `data/generated/<run key>/` in one rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.diffusion.sample import class_plan, describe, sample_all_ranks
from dpt_repro.diffusion.train import precision
from dpt_repro.errors import UserError
from dpt_repro.io import (atomic_dir, atomic_path, corrupt_input, read_json, read_npz, require_file, require_inputs,
                          write_json, write_npz)
from dpt_repro.runtime import Progress, setup

log = logging.getLogger("dpt_repro")


def load_generator(model_dir: Path, device=None):
    """The EMA UNet, its noise schedule, the training record, and the latent decoder (None in pixel space)."""
    from diffusers import UNet2DModel

    ema = model_dir / "unet_ema"
    read_json(ema / "config.json", "stage-2 EMA UNet config", ("sample_size", "in_channels"))
    require_file(ema / "diffusion_pytorch_model.safetensors", "stage-2 EMA UNet weights")
    try:
        unet = UNet2DModel.from_pretrained(str(ema)).eval()
    except Exception as exc:  # diffusers raises OSError, ValueError or safetensors' errors for a damaged folder
        raise corrupt_input(ema, "stage-2 EMA UNet", f"cannot be loaded ({type(exc).__name__})") from None
    scheduler_config = read_json(model_dir / "scheduler" / "scheduler_config.json", "stage-2 noise schedule")
    training = read_json(model_dir / "training.json", "stage-2 training record", ("stage2", "num_classes"))
    decode = None
    if training.get("autoencoder"):
        from dpt_repro.diffusion.latent import decoder, load_autoencoder

        decode = decoder(load_autoencoder(training["autoencoder"], device or torch.device("cpu")))
    return unet, scheduler_config, training, decode


def sampling_precision(training: dict) -> str:
    """The generator's `mixed_precision`, as it trained: the sample stage and the MLflow model both sample with it,
    so the logged model reproduces the generated shards."""
    return training["stage2"].get("mixed_precision", "no")


def check_generator(cfg: Config, model_dir: Path, unet, training: dict, decode) -> None:
    """Refuse a generator trained for another dataset shape before sampling anything."""
    b = cfg.base
    size, channels = unet.config.sample_size, unet.config.in_channels
    if decode is not None:  # latent diffusion: compare the decoded shape
        probe = decode(torch.zeros(1, channels, size, size))
        size, channels = probe.shape[1], probe.shape[3]
    for key, model_value, value in (("num_classes", training.get("num_classes"), b.num_classes),
                                    ("image_size", size, b.image_size),
                                    ("channels", channels, b.channels)):
        if model_value != value:
            raise UserError(f"stage-2 model {model_dir} was trained with {key} {model_value}, but params say "
                            f"base.{key} {value}; rerun stage2 for these params")


def save_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, per_row: int, path: Path) -> None:
    """A class-per-row grid of the first `per_row` images of each class."""
    from PIL import Image

    h, w, c = images.shape[1:]
    grid = np.full((num_classes * (h + 2), per_row * (w + 2), c), 255, np.uint8)
    for k in range(num_classes):
        for j, img in enumerate(images[labels == k][:per_row]):
            grid[k * (h + 2) + 1:k * (h + 2) + 1 + h, j * (w + 2) + 1:j * (w + 2) + 1 + w] = img
    grid = grid[..., 0] if c == 1 else grid
    big = Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST)
    with atomic_path(path) as tmp:
        big.save(tmp, format="PNG")


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.stage2)
    s = cfg.sample
    device = setup(cfg.base)
    unet, scheduler_config, training, decode = load_generator(p.stage2, device)
    check_generator(cfg, p.stage2, unet, training, decode)
    unet.to(device)
    k = cfg.base.num_classes
    labels, index, seeds = class_plan(k, s.images_per_class, cfg.base.seed)
    mixed_precision = sampling_precision(training)
    used_precision = precision(device, mixed_precision)  # "bf16" or "fp32" on this device
    identity = {"sample": asdict(s), "seed": cfg.base.seed, "model": training["fingerprint"],
                "precision": used_precision}  # shards of another precision are not reused
    fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    work = Path("checkpoints") / "sample" / cfg.run_key / fp
    if distributed.is_main():
        work.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(labels), s.shard_size))
    names = [f"shard-{i:03d}.npz" for i in range(len(starts))]
    with tracking.stage_run(cfg, "sample", ("sample",), params_file) as run, \
            Progress("sample", len(labels)) as bar:
        for name, start in zip(names, starts):
            end = min(start + s.shard_size, len(labels))
            if distributed.broadcast((work / name).is_file()):  # rank 0's view of the work folder
                log.info("sample: %s was written by an earlier run (resumed)", name)
                bar.update(end - start)
                continue
            # Each rank of a data-parallel run samples its part of the shard; rank 0 writes the whole shard.
            shard_images = sample_all_ranks(
                unet, scheduler_config, labels[start:end], seeds[start:end], batch_size=s.batch_size,
                image_shape=(cfg.base.image_size, cfg.base.image_size, cfg.base.channels),
                on_batch=lambda n: bar.update(n * distributed.world_size()), guidance_scale=s.guidance_scale,
                steps=s.steps, null_class=training["null_class"], device=device, scheduler=s.scheduler,
                mixed_precision=mixed_precision, decode=decode)
            if distributed.is_main():
                write_npz(work / name, images=shard_images, labels=labels[start:end],
                          index=index[start:end], seeds=seeds[start:end])
        if not distributed.is_main():
            return {}
        shards = [read_npz(work / name, "generated shard") for name in names]
        images = np.concatenate([x["images"] for x in shards])
        manifest = {"shards": names, "count": int(len(labels)), "images_per_class": s.images_per_class,
                    "guidance_scale": s.guidance_scale, "guidance_convention": "uncond + w * (cond - uncond)",
                    "sampler": describe(s.scheduler, s.steps), "weights": "unet_ema",
                    "precision": used_precision,
                    "seed_rule": "SeedSequence([base.seed, class, index])", "fingerprint": fp}
        with atomic_dir(p.generated) as tmp:
            for name in names:
                shutil.copyfile(work / name, tmp / name)
            write_json(tmp / "manifest.json", manifest)
        save_grid(images, labels, k, min(10, s.images_per_class), p.samples_png)
        run.metrics({"generated_images": len(labels)})
        run.artifact(p.samples_png)
        run.dict(manifest, "generated_manifest.json")
    shutil.rmtree(work, ignore_errors=True)
    return manifest
