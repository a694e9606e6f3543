"""Guided sampling with one seed per image: DPM-Solver++ (default), DDIM or DDPM ancestral.

The initial noise of image i of class c comes from `image_seed(base_seed, c, i)`, so any image can be
regenerated alone and no two classes share noise (the official CIFAR-10 code reuses seeds 0-1000 for every
class). Conditional and null-label passes run in one batched forward; the guided prediction is
`uncond + w * (cond - uncond)` (diffusers' convention: w = 1 is no guidance; U-ViT's s = w - 1). At w = 1 and
w = 0 only the pass that counts runs, at half the cost.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dpt_repro import distributed
from dpt_repro.errors import UserError

# name -> (diffusers scheduler class, extra config): every one is built from the training noise schedule.
SCHEDULERS = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


def make_sampler(scheduler_config: dict, name: str, steps: int):
    import diffusers

    if name not in SCHEDULERS:
        raise UserError(f"unknown sampler scheduler {name!r} (valid: {', '.join(SCHEDULERS)})")
    if steps < 1:
        raise UserError(f"sample.steps must be at least 1, got {steps}")
    cls, extra = SCHEDULERS[name]
    sched = getattr(diffusers, cls).from_config(scheduler_config, **extra)
    sched.set_timesteps(steps)
    return sched


def describe(name: str, steps: int) -> str:
    cls, extra = SCHEDULERS[name]
    return " ".join([cls, *(f"{k}={v}" for k, v in extra.items()), f"{steps} steps"])


def image_seed(base_seed: int, cls: int, index: int) -> int:
    return int(np.random.SeedSequence([base_seed, cls, index]).generate_state(1, dtype=np.uint32)[0])


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.inference_mode()
def guided_sample(unet, scheduler_config: dict, labels: torch.Tensor, seeds: list[int], *, guidance_scale: float,
                  steps: int, null_class: int, device: torch.device, scheduler: str = "dpmsolver++",
                  mixed_precision: str = "no", decode: Callable[[torch.Tensor], np.ndarray] | None = None
                  ) -> np.ndarray:
    """Sample one batch; returns uint8 images [N, H, W, C]. `mixed_precision="bf16"` autocasts where
    `train.precision` says bf16 runs natively; `decode` turns latents into images (`diffusion/latent.py`)."""
    from dpt_repro.diffusion.train import autocast

    if guidance_scale < 0:
        raise UserError(f"sample.guidance_scale must be at least 0, got {guidance_scale}")
    sched = make_sampler(scheduler_config, scheduler, steps)
    # Each image's generator draws its initial noise and, for DDPM's ancestral steps, all its later noise.
    gens = image_generators(seeds)
    step_kw = {"generator": gens} if scheduler == "ddpm" else {}
    cfg = unet.config
    x = initial_noise(gens, (cfg.in_channels, cfg.sample_size, cfg.sample_size)).to(device)
    x = x * sched.init_noise_sigma
    labels = labels.to(device)
    null = torch.full_like(labels, null_class)
    # w = 1 is the conditional model alone and w = 0 the unconditional one: one forward pass instead of two.
    one_pass = {1.0: labels, 0.0: null}.get(float(guidance_scale))
    for t in sched.timesteps:
        if one_pass is not None:
            with autocast(device, mixed_precision):
                guided = unet(sched.scale_model_input(x, t), t, class_labels=one_pass).sample.float()
        else:
            x_in = sched.scale_model_input(torch.cat([x, x]), t)
            with autocast(device, mixed_precision):
                out = unet(x_in, t, class_labels=torch.cat([labels, null])).sample
            cond, uncond = out.float().chunk(2)
            guided = uncond + guidance_scale * (cond - uncond)
        x = sched.step(guided, t, x, **step_kw).prev_sample
    if decode is not None:
        return decode(x)
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def sample_all_ranks(unet, scheduler_config: dict, labels: np.ndarray, seeds: np.ndarray, *, batch_size: int,
                     image_shape: tuple[int, int, int], on_batch: Callable[[int], None] | None = None,
                     **kwargs) -> np.ndarray:
    """`guided_sample` over many images in batches: each rank of a data-parallel stage samples its share and
    every rank gets all images, in order (each image's seed makes it independent of who samples it)."""
    mine = distributed.shard(len(labels))
    parts = [np.zeros((0, *image_shape), np.uint8)]
    for b in range(mine.start, mine.stop, batch_size):
        e = min(b + batch_size, mine.stop)
        parts.append(guided_sample(unet, scheduler_config, torch.from_numpy(labels[b:e]), seeds[b:e].tolist(),
                                   **kwargs))
        if on_batch:
            on_batch(e - b)
    return distributed.gather(np.concatenate(parts))


def class_plan(num_classes: int, per_class: int, base_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, per-class indices and seeds of every image to generate, class-major."""
    labels = np.repeat(np.arange(num_classes), per_class)
    index = np.tile(np.arange(per_class), num_classes)
    seeds = np.array([image_seed(base_seed, int(c), int(i)) for c, i in zip(labels, index)], np.int64)
    return labels, index, seeds
