"""Stage-2 speed, ours against the peers, in one process and one run: images per second and the ratio.

- training: the plain diffusers loop as `examples/unconditional_image_generation/train_unconditional.py` writes
  it (a DataLoader over the images, `DDPMScheduler.add_noise`, MSE, AdamW with diffusers' cosine warm-up
  schedule, `EMAModel`, autocast when mixed precision is on, as `accelerate` does) against our
  `train_diffusion`, on the same UNet profile, batch, precision and device; ours also with `torch.compile` on CUDA.
  Where bf16 runs (CUDA, a CPU with native bf16) the example loop also runs in fp32: the precision lever alone.
- sampling: our guided DPM-Solver++ sampler against DDPM ancestral sampling (1,000 steps, as `DDPMPipeline`)
  and against a plain diffusers DPM-Solver++ loop with classifier-free guidance (as diffusers' class-conditional
  pipelines write it, float32).
- FID features: ours (uint8 arrays, batched resize on the network's device, streamed statistics) against
  clean-fid's folder path (PNG files, PIL resize per image in its DataLoader), with the same Inception network.
The first steps of every timed loop are left out (allocator, autotuning, compilation).

    python benchmarks/stage2.py                                   # CPU, the default profile's UNet
    bash benchmarks/gpu_stage2.sh 560 "fid sample train train-compile"   # a GPU: the DDPM CIFAR-10 UNet, in parts
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from dpt_repro.config import BaseConfig, DiffusionConfig
from dpt_repro.diffusion.sample import class_plan, guided_sample, image_generators, initial_noise
from dpt_repro.diffusion.train import autocast, make_scheduler, precision, to_model_space, train_diffusion
from dpt_repro.diffusion.unet import build_unet
from dpt_repro.io import write_json
from dpt_repro.metrics import fid
from dpt_repro.runtime import hardware, setup

NUM_CLASSES = 10


def rate(images_per_second: float) -> str:
    return f"{images_per_second:,.0f}" if images_per_second >= 100 else f"{images_per_second:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peer_training(cfg: DiffusionConfig, images: np.ndarray, labels: np.ndarray, device: torch.device,
                  warmup: int, flush_denormal: bool) -> float:
    """The diffusers example loop, class-conditional; returns images per second after `warmup` steps.
    The example leaves torch's default (denormals not flushed); `flush_denormal` shows that lever alone."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.set_flush_denormal(flush_denormal)
    torch.backends.cudnn.benchmark = False  # the example leaves cuDNN's default; `setup` turns the search on
    torch.manual_seed(0)
    model = build_unet(cfg.profile, images.shape[1], images.shape[3], NUM_CLASSES).to(device)
    noise_scheduler = make_scheduler(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, model_cls=type(model),
                   model_config=model.config)
    dataset = torch.utils.data.TensorDataset(to_model_space(images), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    step, seen, start = 0, 0, time.perf_counter()
    model.train()
    while step < cfg.steps:
        for clean_images, class_labels in loader:
            if step == warmup:
                sync(device)
                seen, start = 0, time.perf_counter()
            clean_images, class_labels = clean_images.to(device), class_labels.to(device)
            drop = torch.rand(len(class_labels), device=device) < cfg.label_dropout
            class_labels = torch.where(drop, NUM_CLASSES, class_labels)
            noise = torch.randn(clean_images.shape, device=device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(clean_images),),
                                      device=device).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
            with autocast(device, cfg.mixed_precision):
                model_output = model(noisy_images, timesteps, class_labels=class_labels).sample
            loss = F.mse_loss(model_output.float(), target.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            ema.step(model.parameters())
            step += 1
            seen += len(clean_images)
            loss.item()  # the example logs the loss every step
            if step == cfg.steps:
                break
    sync(device)
    torch.set_flush_denormal(True)  # as `setup` leaves them for ours
    torch.backends.cudnn.benchmark = device.type == "cuda"
    return seen / (time.perf_counter() - start)


@torch.inference_mode()
def peer_sampling(unet, scheduler_config: dict, labels: torch.Tensor, seeds: list[int], *, guidance_scale: float,
                  steps: int | None, device: torch.device) -> np.ndarray:
    """Plain diffusers loops: DPM-Solver++ with guidance (steps given) or DDPM ancestral (steps None: 1,000)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    if steps is None:
        scheduler = DDPMScheduler.from_config(scheduler_config)
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++")
        scheduler.set_timesteps(steps)
    c = unet.config
    latents = initial_noise(image_generators(seeds), (c.in_channels, c.sample_size, c.sample_size)).to(device)
    class_labels = labels.to(device)
    class_null = torch.full_like(class_labels, NUM_CLASSES)
    class_labels_input = torch.cat([class_labels, class_null], 0)
    for t in scheduler.timesteps:
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = unet(latent_model_input, t, class_labels=class_labels_input).sample
        cond, uncond = noise_pred.chunk(2)
        noise_pred = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def timed_images(fn, n_images: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return n_images / (time.perf_counter() - start)


def sampling_rows(cfg: DiffusionConfig, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    unet = build_unet(cfg.profile, args.size, args.channels, NUM_CLASSES).to(device).eval()
    scheduler_config = dict(make_scheduler(cfg).config)
    labels, _, seeds = class_plan(NUM_CLASSES, -(-args.sample_images // NUM_CLASSES), 0)
    kw = {"guidance_scale": 1.5, "device": device}

    def ours(n: int):
        for b in range(0, n, args.sample_batch):
            guided_sample(unet, scheduler_config, torch.from_numpy(labels[b:b + args.sample_batch]),
                          seeds[b:b + args.sample_batch].tolist(), steps=args.sample_steps, null_class=NUM_CLASSES,
                          mixed_precision=cfg.mixed_precision, **kw)

    def peer(n: int, steps: int | None):
        for b in range(0, n, args.sample_batch):
            peer_sampling(unet, scheduler_config, torch.from_numpy(labels[b:b + args.sample_batch]),
                          seeds[b:b + args.sample_batch].tolist(), steps=steps, **kw)

    ours(min(args.sample_batch, args.sample_images))  # warm-up
    n, n_ddpm = args.sample_images, args.ddpm_images
    ours_rate = timed_images(lambda: ours(n), n, device)
    plain_rate = timed_images(lambda: peer(n, args.sample_steps), n, device)
    ddpm_rate = timed_images(lambda: peer(n_ddpm, None), n_ddpm, device)
    used = precision(device, cfg.mixed_precision)
    return [
        {"task": f"sampling, DPM-Solver++ {args.sample_steps} steps + CFG ({used})",
         "peer": "plain diffusers loop (fp32)", "peer_img_s": plain_rate, "ours_img_s": ours_rate},
        {"task": f"sampling, ours vs DDPM ancestral 1000 steps + CFG ({n_ddpm} images)",
         "peer": "DDPM ancestral", "peer_img_s": ddpm_rate, "ours_img_s": ours_rate},
    ]


def fid_row(args, device: torch.device) -> dict:
    from cleanfid.fid import get_folder_features
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.fid_images, args.size, args.size, args.channels), dtype=np.uint8)
    extractor = fid.FeatureExtractor(device, "clean", args.fid_precision)
    for _ in range(3):  # TorchScript profiles the first calls and optimises the graph after them
        extractor(images[:args.fid_batch])
    ours = timed_images(lambda: fid.stream_statistics(iter([images]), len(images), extractor,
                                                       batch_size=args.fid_batch), len(images), device)
    # Where the time goes: the network alone on resized input, and resize + network with features to the host.
    resized = torch.zeros(args.fid_batch, 3, fid.INPUT_SIZE, fid.INPUT_SIZE, device=device, dtype=extractor.dtype)

    def network_only():
        with torch.inference_mode():
            for _ in range(0, len(images), args.fid_batch):
                extractor.net(resized.contiguous(memory_format=torch.channels_last))

    def features_only():
        for b in range(0, len(images), args.fid_batch):
            extractor(images[b:b + args.fid_batch])

    breakdown = {"network_img_s": timed_images(network_only, len(images), device),
                 "resize_network_to_host_img_s": timed_images(features_only, len(images), device)}
    print(f"FID breakdown, {args.fid_precision}: network alone {rate(breakdown['network_img_s'])} img/s, resize + "
          f"network + copy to host {rate(breakdown['resize_network_to_host_img_s'])} img/s, whole pipeline "
          f"{rate(ours)} img/s", flush=True)

    def network(x: torch.Tensor) -> torch.Tensor:  # clean-fid hands over resized floats in [0, 255]
        return extractor.net(((x - 128.0) / 128.0).to(extractor.dtype)).reshape(len(x), -1).float()

    with tempfile.TemporaryDirectory() as folder:
        for i, img in enumerate(images):
            Image.fromarray(img[..., 0] if args.channels == 1 else img).save(f"{folder}/{i:06d}.png")

        def peer():
            feats = get_folder_features(folder, model=network, num_workers=args.workers, batch_size=args.fid_batch,
                                        device=device, mode="clean", verbose=False)
            fid.statistics(feats.astype(np.float64))

        peer_rate = timed_images(peer, len(images), device)
    return {"task": f"FID features + statistics, {args.fid_precision}", "peer": "clean-fid folder path",
            "peer_img_s": peer_rate, "ours_img_s": ours, **breakdown}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", default="small28")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="training steps per loop (the first 10%% not timed)")
    ap.add_argument("--precision", default="bf16",
                    help="training and sampling autocast (CUDA, CPUs with native bf16): bf16 | no")
    ap.add_argument("--compile", action="store_true", help="also time our trainer with torch.compile (CUDA)")
    ap.add_argument("--sample-images", type=int, default=100)
    ap.add_argument("--sample-batch", type=int, default=100)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--ddpm-images", type=int, default=10)
    ap.add_argument("--fid-images", type=int, default=1000)
    ap.add_argument("--fid-batch", type=int, default=50)
    ap.add_argument("--fid-precision", default="float32")
    ap.add_argument("--workers", type=int, default=0, help="clean-fid DataLoader workers")
    ap.add_argument("--only", default="train,sample,fid")
    ap.add_argument("--out", default="reports/benchmark_stage2.json")
    args = ap.parse_args()

    device = setup(BaseConfig(device=args.device))  # threads and allocator as every stage sets them
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = DiffusionConfig(profile=args.profile, steps=args.steps, batch_size=args.batch, warmup_steps=5,
                          mixed_precision=args.precision, checkpoint_every=10 ** 9)
    warmup = min(10, args.steps // 10)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4096, args.size, args.size, args.channels), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=len(images))
    rows = []
    used = precision(device, args.precision)  # bf16 on CUDA and on CPUs with native bf16, else fp32
    print(f"UNet precision: {used}", flush=True)
    if "train" in args.only:
        fp32 = replace(cfg, mixed_precision="no")
        peers = {f"diffusers example loop ({used})": peer_training(cfg, images, labels, device, warmup, False)}
        if used != "fp32":  # the precision lever alone: the example loop as it runs without mixed precision
            peers["diffusers example loop (fp32)"] = peer_training(fp32, images, labels, device, warmup, False)
        if device.type == "cpu":
            peers["example loop + flush-denormal (fp32)"] = peer_training(fp32, images, labels, device, warmup, True)
        variants = [("ours", cfg)] + ([("ours + torch.compile", replace(cfg, compile=True))]
                                      if args.compile and device.type == "cuda" else [])
        for name, c in variants:
            ours = train_diffusion(c, images, labels, num_classes=NUM_CLASSES, seed=0, device=device)
            for peer_name, peer in peers.items():
                rows.append({"task": f"training {args.profile} B={args.batch} ({name}, {used})",
                             "peer": peer_name, "peer_img_s": peer, "ours_img_s": ours.images_per_second})
    if "sample" in args.only:
        rows += sampling_rows(cfg, args, device)
    if "fid" in args.only:
        rows.append(fid_row(args, device))

    table = [f"{hardware(device)}, torch {torch.__version__}", "",
             "| task | peer | peer img/s | ours img/s | ours / peer |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        r["ratio"] = r["ours_img_s"] / r["peer_img_s"]
        table.append(f"| {r['task']} | {r['peer']} | {rate(r['peer_img_s'])} | {rate(r['ours_img_s'])} | "
                     f"{r['ratio']:.2f}x |")
    text = "\n".join(table)
    print(text)
    write_json(args.out, {"command": " ".join(sys.argv), "hardware": hardware(device), "rows": rows, "table": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
