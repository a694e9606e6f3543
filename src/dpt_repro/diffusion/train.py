"""Class-conditional diffusion training: DDPM noising, epsilon or v loss, label dropout to the null class.

AdamW with linear warm-up, diffusers' EMA with warm-up, gradient accumulation. As in the classifier loop,
step k's random draws come from `generator(seed, stream, k)` and a checkpoint holds model, EMA, optimiser
and step, so a killed run resumes and ends where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dpt_repro.config import DiffusionConfig
from dpt_repro.diffusion.unet import build_unet
from dpt_repro.io import load_checkpoint, save_checkpoint
from dpt_repro.runtime import Progress, generator

log = logging.getLogger("dpt_repro")


@dataclass
class DiffusionResult:
    unet: torch.nn.Module
    ema_unet: torch.nn.Module
    scheduler_config: dict
    curve: list[dict] = field(default_factory=list)
    fid_curve: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    resumed_from: int = 0


def make_scheduler(cfg: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def fingerprint(cfg: DiffusionConfig, seed: int, labels: np.ndarray, n_images: int, image_size: int) -> str:
    h = hashlib.sha256(json.dumps({"cfg": asdict(cfg), "seed": seed, "n": n_images, "size": image_size},
                                  sort_keys=True).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def train_diffusion(cfg: DiffusionConfig, images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                    device: torch.device, checkpoint: Path | None = None,
                    on_log: Callable[[int, dict], None] | None = None,
                    on_eval: Callable[[int, torch.nn.Module], float] | None = None) -> DiffusionResult:
    """Train; `on_eval(step, ema_unet)` (every `cfg.fid_every` steps and at the end) returns a guided FID."""
    from diffusers.training_utils import EMAModel

    channels, size = images.shape[3], images.shape[1]
    torch.manual_seed(seed)
    unet = build_unet(cfg.profile, size, channels, num_classes).to(device)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3,
                   model_cls=type(unet), model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    noise_sched = make_scheduler(cfg)

    x_all, y_all = to_model_space(images), torch.from_numpy(labels.astype(np.int64))
    result = DiffusionResult(unet=unet, ema_unet=unet, scheduler_config=dict(noise_sched.config))
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        result.curve = list(state["curve"])
        result.fid_curve = list(state.get("fid_curve", []))
        start = result.resumed_from = int(state["step"])
        log.info("stage2: resuming from step %d (%s)", start, checkpoint)

    log_every = max(1, cfg.steps // 200)
    micro = cfg.batch_size // cfg.grad_accum
    seen, t0 = 0, time.perf_counter()
    unet.train()
    with Progress("stage2 diffusion", cfg.steps) as bar:
        bar.update(start)
        for step in range(start, cfg.steps):
            g = generator(seed, 2, step)
            torch.manual_seed(generator(seed, 2, step, 1).initial_seed())  # dropout, if the profile has any
            total = 0.0
            for _ in range(cfg.grad_accum):
                idx = torch.randint(len(x_all), (micro,), generator=g)
                x0, y = x_all[idx], y_all[idx].clone()
                y[torch.rand(micro, generator=g) < cfg.label_dropout] = num_classes  # null label for CFG
                noise = torch.randn(x0.shape, generator=g)
                t = torch.randint(0, cfg.num_train_timesteps, (micro,), generator=g)
                x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)
                x_t = noise_sched.add_noise(x0, noise, t)
                target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
                pred = unet(x_t, t, class_labels=y).sample
                loss = F.mse_loss(pred.float(), target.float()) / cfg.grad_accum
                loss.backward()
                total += loss.item()
                seen += micro
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            if step % log_every == 0 or step == cfg.steps - 1:
                row = {"step": step, "loss": total, "lr": sched.get_last_lr()[0]}
                result.curve.append(row)
                if on_log:
                    on_log(step, row)
            done = step + 1
            if on_eval and cfg.fid_every and (done % cfg.fid_every == 0 or done == cfg.steps):
                t_eval = time.perf_counter()
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
                result.fid_curve.append({"step": done, "fid": on_eval(done, unet.eval())})
                ema.restore(unet.parameters())
                unet.train()
                t0 += time.perf_counter() - t_eval  # the step rate counts training only
                if on_log:
                    on_log(done, {"fid_during_training": result.fid_curve[-1]["fid"]})
            if checkpoint is not None and done < cfg.steps and done % cfg.checkpoint_every == 0:
                save_checkpoint(checkpoint, {"model": unet.state_dict(), "ema": ema.state_dict(),
                                             "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                                             "step": done, "curve": result.curve, "fid_curve": result.fid_curve})
            bar.update(1, f"loss {total:.4f}")
    elapsed = time.perf_counter() - t0
    result.images_per_second = seen / elapsed if elapsed > 0 else 0.0
    ema_unet = build_unet(cfg.profile, size, channels, num_classes)
    ema.copy_to(ema_unet.parameters())
    result.ema_unet = ema_unet.eval()
    return result
