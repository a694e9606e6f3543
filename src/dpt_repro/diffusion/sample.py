"""Guided DPM-Solver++ sampling with one seed per image.

The initial noise of image i of class c comes from `image_seed(base_seed, c, i)`, so any image can be
regenerated alone and no two classes share noise (the official CIFAR-10 code reuses seeds 0-1000 for every
class). Conditional and null-label passes run in one batched forward; the guided prediction is
`uncond + w * (cond - uncond)` (diffusers' convention: w = 1 is no guidance; U-ViT's s = w - 1).
"""

from __future__ import annotations

import numpy as np
import torch

from dpt_repro.errors import UserError

def image_seed(base_seed: int, cls: int, index: int) -> int:
    return int(np.random.SeedSequence([base_seed, cls, index]).generate_state(1, dtype=np.uint32)[0])


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.inference_mode()
def guided_sample(unet, scheduler_config: dict, labels: torch.Tensor, seeds: list[int], *, guidance_scale: float,
                  steps: int, null_class: int, device: torch.device) -> np.ndarray:
    """Sample one batch; returns uint8 images [N, H, W, C]."""
    from diffusers import DPMSolverMultistepScheduler

    if steps < 1:
        raise UserError(f"sample.steps must be at least 1, got {steps}")
    if guidance_scale < 0:
        raise UserError(f"sample.guidance_scale must be at least 0, got {guidance_scale}")
    sched = DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++",
                                                    solver_order=2)
    sched.set_timesteps(steps)
    cfg = unet.config
    x = initial_noise(seeds, (cfg.in_channels, cfg.sample_size, cfg.sample_size)).to(device)
    x = x * sched.init_noise_sigma
    labels = labels.to(device)
    both = torch.cat([labels, torch.full_like(labels, null_class)])
    for t in sched.timesteps:
        out = unet(torch.cat([x, x]), t, class_labels=both).sample
        cond, uncond = out.chunk(2)
        guided = uncond + guidance_scale * (cond - uncond)
        x = sched.step(guided, t, x).prev_sample
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def class_plan(num_classes: int, per_class: int, base_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, per-class indices and seeds of every image to generate, class-major."""
    labels = np.repeat(np.arange(num_classes), per_class)
    index = np.tile(np.arange(per_class), num_classes)
    seeds = np.array([image_seed(base_seed, int(c), int(i)) for c, i in zip(labels, index)], np.int64)
    return labels, index, seeds
