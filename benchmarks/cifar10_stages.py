"""Throughput of the `cifar10` profile's GPU stages with the profile's own settings, on random data of
CIFAR-10's shape, and the GPU-hours a full run would take at the measured rates (the estimate table of
docs/how-to/clusters.md, measured instead of scaled).

- stage 1 / stage 3: WRN-28-2 FreeMatch steps (B = 40 / 64, mu = 7), images through the network per second;
- stage 2: the DDPM CIFAR-10 UNet at the profile's batch, bf16 and torch.compile (on CUDA);
- sample: guided DPM-Solver++ with the profile's steps and batch;
- FID: Inception-v3 features with the profile's resize protocol.
Under torchrun the trainers run data-parallel with the profile's global batches, every rank samples and
extracts its own batches, and rank 0 prints totals over all ranks.

    python benchmarks/cifar10_stages.py --steps 30                                     # one GPU
    torchrun --standalone --nproc-per-node 8 benchmarks/cifar10_stages.py --steps 30   # one node of 8 GPUs
    python benchmarks/cifar10_stages.py --steps 2 --divide 16                          # a CPU check, batches / 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from dpt_repro import distributed
from dpt_repro.config import load_config, merge_profile, read_params_file
from dpt_repro.diffusion.sample import class_plan, guided_sample
from dpt_repro.diffusion.train import make_scheduler, train_diffusion
from dpt_repro.metrics import fid
from dpt_repro.runtime import hardware, setup
from dpt_repro.ssl.train import ClassifierData, train_classifier
from stage2 import rate  # benchmarks/stage2.py: the same number formatting

ROOT = Path(__file__).resolve().parents[1]


def profile_config(divide: int):
    merged = merge_profile(read_params_file(ROOT / "params.yaml"), read_params_file(ROOT / "configs" / "cifar10.yaml"))
    merged["launcher"]["nproc_per_node"] = 1  # this script is the process; torchrun starts the others
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(merged))
        cfg = load_config(path)
    for section in (cfg.stage1, cfg.stage3, cfg.stage2, cfg.sample, cfg.eval):
        section.batch_size = max(1, section.batch_size // divide)
    return cfg


def timed(fn) -> tuple[object, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per trainer (the first few are warm-up)")
    parser.add_argument("--divide", type=int, default=1, help="divide the profile's batch sizes (CPU checks)")
    args = parser.parse_args()
    full, cfg = profile_config(1), profile_config(args.divide)  # full: the images a complete run processes
    device = setup(cfg.base)
    cuda = device.type == "cuda"
    world = distributed.world_size()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 4096).astype(np.int64)
    rows = []

    for section, stream in (("stage1", 1), ("stage3", 3)):
        c = replace(getattr(cfg, section), steps=args.steps, eval_every=10 ** 9, checkpoint_every=10 ** 9)
        n = c.batch_size
        data = ClassifierData(images[:n], labels[:n], images[n:], images[:100], labels[:100])
        result = train_classifier(c, data, num_classes=10, seed=0, stream=stream, device=device)
        f = getattr(full, section)
        rows.append((f"{section}: WRN-28-2 FreeMatch, B = {c.batch_size}, mu = {c.mu} (incl. warm-up)",
                     result.images_per_second, f.steps * f.batch_size * (1 + 2 * f.mu)))

    c2 = replace(cfg.stage2, steps=args.steps, fid_every=0, checkpoint_every=10 ** 9)
    out = train_diffusion(c2, images, labels, num_classes=10, seed=0, device=device)
    rows.append((f"stage2: DDPM UNet, batch {c2.batch_size}, {out.precision}, compile {c2.compile and cuda}",
                 out.images_per_second, full.stage2.steps * full.stage2.batch_size))

    s = cfg.sample
    plan_labels, _, seeds = class_plan(10, s.batch_size // 10 + 1, 0)
    scheduler_config = dict(make_scheduler(cfg.stage2).config)

    def sample_batch():
        return guided_sample(out.ema_unet.to(device), scheduler_config, torch.from_numpy(plan_labels[:s.batch_size]),
                             seeds[:s.batch_size].tolist(), guidance_scale=s.guidance_scale, steps=s.steps,
                             null_class=10, device=device, scheduler=s.scheduler,
                             mixed_precision=cfg.stage2.mixed_precision)

    sample_batch()  # warm-up
    _, seconds = timed(sample_batch)
    rows.append((f"sample: {s.scheduler}, {s.steps} steps, guided, batch {s.batch_size}",
                 s.batch_size * world / seconds, full.sample.images_per_class * 10))

    e = cfg.eval
    extractor = fid.FeatureExtractor(device, e.fid_resize, e.fid_precision)
    extractor(images[:e.batch_size])  # warm-up
    n_fid = min(len(images), 8 * e.batch_size)
    _, seconds = timed(lambda: [extractor(images[i:i + e.batch_size]) for i in range(0, n_fid, e.batch_size)])
    rows.append((f"FID features: {e.fid_resize}, {e.fid_precision}", n_fid * world / seconds,
                 full.eval.fid_ref_images + full.sample.images_per_class * 10))

    if distributed.is_main():
        print(f"cifar10 profile, {world} process(es), {hardware(device)}, {args.steps} steps per trainer")
        print("| stage | img/s (all ranks) | images in a full run | device-hours at this rate |")
        print("| --- | --- | --- | --- |")
        for name, per_second, total in rows:
            print(f"| {name} | {rate(per_second)} | {total:,} | {total / per_second / 3600 * world:,.2f} |")
    distributed.finish()


if __name__ == "__main__":
    main()
