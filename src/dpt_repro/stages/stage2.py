"""stage2: the class-conditional diffusion model on all train images with their pseudo-labels.

`stage2.labels` selects the baselines of the paper's second claim: `oracle` trains on the true labels of all
train images (the supervised generator), `labelled` on the few labelled images alone."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import iter_split, load_split, select, split_count
from dpt_repro.diffusion.train import fingerprint, make_scheduler, train_diffusion
from dpt_repro.errors import UserError
from dpt_repro.io import atomic_dir, read_parquet, require_inputs, write_json
from dpt_repro.runtime import setup
from dpt_repro.stages.classifier import write_csv
from dpt_repro.stages.split import read_split


def read_pseudo_labels(path: Path, n_images: int) -> np.ndarray:
    """One pseudo-label per train image, in image order, from the pseudo-label stage's parquet."""
    table = read_parquet(path, "pseudo-labels", ["index", "pseudo_label"]).sort_values("index")
    if len(table) != n_images or not np.array_equal(table["index"].to_numpy(), np.arange(n_images)):
        raise UserError(f"pseudo-labels {path} do not cover the {n_images} train images; rerun pseudo-label")
    return table["pseudo_label"].to_numpy()


def generator_training_set(cfg: Config, images: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    source = cfg.stage2.labels
    if source == "oracle":
        return images, true_labels
    if source == "labelled":
        lab = np.asarray(read_split(cfg)["labelled"], np.int64)
        return images[lab], true_labels[lab]
    return images, read_pseudo_labels(paths(cfg).pseudo_labels, len(images))


def training_data(cfg: Config, device, vae) -> tuple[np.ndarray, np.ndarray]:
    """The train split as the generator sees it: uint8 images, or (with an autoencoder) their latents, encoded
    shard by shard so the images never sit in memory all at once; and the true labels."""
    p = paths(cfg)
    if vae is None:
        return load_split(p.prepared, "train")
    from dpt_repro.diffusion.latent import encode

    parts = [(encode(vae, x, cfg.eval.batch_size, device), y) for x, y in iter_split(p.prepared, "train")]
    return np.concatenate([z for z, _ in parts]), np.concatenate([y for _, y in parts])


def training_fid(cfg: Config, device, decode):
    """`on_eval` for the trainer: FID of guided EMA samples, sampled as the sample stage does, against
    `stage2.fid_images` train images. Small N biases it upward: it shows the trend, evaluate gives the result."""

    from dpt_repro.diffusion.sample import class_plan, sample_all_ranks
    from dpt_repro.metrics import fid
    from dpt_repro.stages.fid_reference import reference_indices

    n, k, s = cfg.stage2.fid_images, cfg.base.num_classes, cfg.sample
    extractor = fid.FeatureExtractor(device, cfg.eval.fid_resize, cfg.eval.fid_precision)
    kw = {"batch_size": cfg.eval.batch_size}
    folder = paths(cfg).prepared
    reference = select(folder, "train", reference_indices(split_count(folder, "train"), n))[0]
    ref = fid.statistics(fid.extract_features(reference, extractor, **kw, description="training FID reference"))
    labels, index, seeds = class_plan(k, -(-n // k), cfg.base.seed)
    order = np.lexsort((labels, index))[:n]  # class-balanced: the i-th image of every class, then the (i+1)-th
    labels, seeds = labels[order], seeds[order]
    scheduler_config = dict(make_scheduler(cfg.stage2).config)

    def on_eval(step: int, ema_unet) -> float:
        generated = sample_all_ranks(ema_unet, scheduler_config, labels, seeds, batch_size=s.batch_size,
                                     image_shape=reference.shape[1:], guidance_scale=s.guidance_scale, steps=s.steps,
                                     null_class=k, device=device, scheduler=s.scheduler,
                                     mixed_precision=cfg.stage2.mixed_precision, decode=decode)
        gen = fid.statistics(fid.extract_features(generated, extractor, **kw, description=f"FID @ {step}"))
        return fid.frechet_distance(*gen, *ref)

    return on_eval


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    c = cfg.stage2
    labels_from = {"pseudo": (p.pseudo_labels,), "labelled": (p.split,)}
    require_inputs(p.prepared, *labels_from.get(c.labels, ()))
    device = setup(cfg.base)
    vae, decode = None, None
    if c.autoencoder:
        from dpt_repro.diffusion.latent import decoder, load_autoencoder

        vae = load_autoencoder(c.autoencoder, device)
        decode = decoder(vae)
    images, labels = generator_training_set(cfg, *training_data(cfg, device, vae))
    fp = fingerprint(c, cfg.base.seed, labels, len(images), images.shape[1])
    ckpt = Path("checkpoints") / "stage2" / cfg.run_key / f"{fp}.pt"
    with tracking.stage_run(cfg, "stage2", ("stage2",), params_file) as run:
        run.datasets(prepared=p.prepared, pseudo_labels=p.pseudo_labels)
        result = train_diffusion(c, images, labels, num_classes=cfg.base.num_classes, seed=cfg.base.seed,
                                 device=device, checkpoint=ckpt, on_log=lambda s, row: run.metrics(row, step=s),
                                 on_eval=training_fid(cfg, device, decode) if c.fid_every else None)
        if not distributed.is_main():
            return {}
        with atomic_dir(p.stage2) as tmp:
            result.unet.save_pretrained(tmp / "unet")
            result.ema_unet.save_pretrained(tmp / "unet_ema")
            write_json(tmp / "scheduler" / "scheduler_config.json", result.scheduler_config)
            write_json(tmp / "training.json", {"stage2": asdict(c), "seed": cfg.base.seed, "fingerprint": fp,
                                               "training_images": int(len(images)),
                                               "num_classes": cfg.base.num_classes,
                                               "null_class": cfg.base.num_classes, "weights_for_sampling": "unet_ema",
                                               "autoencoder": c.autoencoder or None,
                                               "precision": result.precision,
                                               "resumed_from": result.resumed_from})
            write_csv(tmp / "train_curve.csv", result.curve)
        write_csv(p.plots / "stage2" / "train_curve.csv", result.curve)
        write_csv(p.plots / "stage2" / "fid_curve.csv", result.fid_curve, fields=["step", "fid"])
        ckpt.unlink(missing_ok=True)
        metrics = {"final_loss": result.curve[-1]["loss"], "images_per_second": round(result.images_per_second, 1),
                   "parameters": sum(q.numel() for q in result.unet.parameters())}
        run.metrics(metrics)
        run.tags({"stage2.precision": result.precision})
        uri = run.generator_model(p.stage2, (cfg.base.image_size, cfg.base.image_size, cfg.base.channels),
                                  seed=cfg.base.seed, guidance_scale=cfg.sample.guidance_scale, steps=cfg.sample.steps,
                                  scheduler=cfg.sample.scheduler)
        # The champion generator: lowest FID of the final EMA weights against train images (no test image).
        final_fid = result.fid_curve[-1]["fid"] if result.fid_curve else None
        run.register(uri, tracking.GENERATOR_REGISTRY_NAME, "fid_train", final_fid, cfg, higher_is_better=False)
    write_json(p.metrics / "stage2.json", metrics)
    return metrics
