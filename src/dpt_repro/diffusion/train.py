"""Class-conditional diffusion training: DDPM noising, epsilon or v loss, label dropout to the null class.

AdamW with linear warm-up, diffusers' EMA with warm-up, gradient accumulation. As in the classifier loop,
step k's random draws come from `generator(seed, stream, k)` and a checkpoint holds model, EMA, optimiser,
step and the configuration's fingerprint, so a killed run resumes and ends where an uninterrupted one would,
and a checkpoint of another configuration is refused.

What makes it faster than the plain diffusers example loop on a GPU: the training set lives on the device
(no DataLoader, no per-step host copy of images), bf16 autocast, channels-last, fused AdamW, a foreach EMA
update, no host sync per step (the loss is read only at logging steps) and optional `torch.compile`. On
a CPU: bf16 autocast where the CPU has native bf16, and `runtime.setup`'s denormal flushing
(benchmarks/stage2.py shows each lever).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dpt_repro import distributed
from dpt_repro.config import DiffusionConfig
from dpt_repro.diffusion.unet import build_unet
from dpt_repro.errors import UserError
from dpt_repro.io import load_checkpoint, save_checkpoint
from dpt_repro.runtime import Progress, cpu_has_native_bf16, generator

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
    precision: str = "fp32"


def make_scheduler(cfg: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W, C] -> float [N, C, H, W] in [-1, 1]; float arrays (scaled latents) are only
    transposed."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0) if images.dtype == np.uint8 else x


def fingerprint(cfg: DiffusionConfig, seed: int, labels: np.ndarray, n_images: int, image_size: int) -> str:
    identity = {"cfg": asdict(cfg), "seed": seed, "n": n_images, "size": image_size, **distributed.run_identity()}
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def precision(device: torch.device, mixed_precision: str) -> str:
    """The precision the UNet really runs in: "bf16" (autocast; weights, optimiser and loss stay float32) on
    CUDA and on CPUs with native bf16 (1.4-1.8x faster training and sampling on an AVX512-BF16 CPU, measured
    by benchmarks/stage2.py), else "fp32". Recorded with every run, since it changes the numbers."""
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return "bf16" if mixed_precision == "bf16" and native else "fp32"


def autocast(device: torch.device, mixed_precision: str):
    """The autocast context of `precision(device, mixed_precision)`."""
    enabled = precision(device, mixed_precision) == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def check_checkpoint_config(state: dict, cfg: DiffusionConfig, expected: str, path: Path) -> None:
    """Refuse to resume from a checkpoint written under another configuration, naming what differs."""
    if state.get("fingerprint") == expected:
        return
    saved = state.get("config") or {}
    diff = [f"stage2.{k}: checkpoint {saved.get(k)!r}, params {v!r}" for k, v in asdict(cfg).items()
            if k in saved and saved[k] != v]
    what = "; ".join(diff) or "same stage2 params, different seed, labels or data"
    raise UserError(f"checkpoint {path} was written by another configuration ({what}); "
                    f"delete it or restore those params")


def make_ema(unet, cfg: DiffusionConfig):
    """EMA of the weights with warm-up (decay 1 - (1 + step)^(-2/3), capped at `cfg.ema_decay`)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3,
                    foreach=True, model_cls=type(unet), model_config=unet.config)


def ema_unet_from_checkpoint(path: Path, cfg: DiffusionConfig, image_shape: tuple[int, int, int],
                             num_classes: int) -> tuple[torch.nn.Module, int]:
    """The EMA weights of a training checkpoint in a fresh UNet, and the step they were saved at: samples of a
    run that was stopped, as its own `train_diffusion` would have returned them at that step."""
    state = load_checkpoint(path)
    unet = build_unet(cfg.profile, image_shape[0], image_shape[2], num_classes)
    ema = make_ema(unet, cfg)
    ema.load_state_dict(state["ema"])
    ema.copy_to(unet.parameters())
    return unet.eval(), int(state["step"])


def train_diffusion(cfg: DiffusionConfig, images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                    device: torch.device, checkpoint: Path | None = None,
                    on_log: Callable[[int, dict], None] | None = None,
                    on_eval: Callable[[int, torch.nn.Module], float] | None = None) -> DiffusionResult:
    """Train; `on_eval(step, ema_unet)` (every `cfg.fid_every` steps and at the end) returns a guided FID."""
    channels, size = images.shape[3], images.shape[1]
    cuda = device.type == "cuda"
    world, main = distributed.world_size(), distributed.is_main()
    fp = fingerprint(cfg, seed, labels, len(images), size)
    torch.manual_seed(seed)
    unet = build_unet(cfg.profile, size, channels, num_classes).to(device)
    if cuda:
        unet = unet.to(memory_format=torch.channels_last)
    ema = make_ema(unet, cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda or None)
    warmup = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    noise_sched = make_scheduler(cfg)
    forward = unet
    if distributed.active():  # data-parallel: gradients averaged over the ranks by DDP
        forward = torch.nn.parallel.DistributedDataParallel(unet, device_ids=[device] if cuda else None)
    forward = torch.compile(forward) if cfg.compile and cuda else forward

    # The whole training set on the device: at most ~0.7 GB in float32 for 60k 32x32 RGB images.
    x_all, y_all = to_model_space(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device)
    # diffusers keeps the names of defaulted fields as a set: sorted, equal params give a byte-equal config file
    scheduler_config = {k: sorted(v) if k == "_use_default_values" else v for k, v in noise_sched.config.items()}
    result = DiffusionResult(unet=unet, ema_unet=unet, scheduler_config=scheduler_config,
                             precision=precision(device, cfg.mixed_precision))
    log.info("stage2: the UNet runs in %s on %s", result.precision, device.type)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        check_checkpoint_config(state, cfg, fp, checkpoint)
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
    micro = cfg.batch_size // (cfg.grad_accum * world)  # this rank's micro-batch (config checks it divides)
    shape = (micro, *x_all.shape[1:])
    # The step rate leaves out the first steps (allocator, kernel autotuning, compilation).
    warm_step = start + min(10, (cfg.steps - start) // 10)
    seen, t0 = 0, time.perf_counter()
    unet.train()
    with Progress("stage2 diffusion", cfg.steps) as bar:
        bar.update(start)
        for step in range(start, cfg.steps):
            if step == warm_step:
                if cuda:
                    torch.cuda.synchronize(device)
                seen, t0 = 0, time.perf_counter()
            g = generator(seed, *distributed.rank_stream(2, step))
            torch.manual_seed(generator(seed, 2, step, 1).initial_seed())  # dropout, if the profile has any
            total = torch.zeros((), device=device)
            for i in range(cfg.grad_accum):
                idx = torch.randint(len(x_all), (micro,), generator=g)
                drop = torch.rand(micro, generator=g) < cfg.label_dropout
                noise = torch.randn(shape, generator=g)
                t = torch.randint(0, cfg.num_train_timesteps, (micro,), generator=g)
                idx, drop, noise, t = (v.to(device, non_blocking=True) for v in (idx, drop, noise, t))
                x0 = x_all[idx]
                y = torch.where(drop, num_classes, y_all[idx])  # the null label, for classifier-free guidance
                x_t = noise_sched.add_noise(x0, noise, t)
                target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
                if cuda:
                    x_t = x_t.contiguous(memory_format=torch.channels_last)
                sync = i == cfg.grad_accum - 1 or not distributed.active()  # all-reduce once per step
                with nullcontext() if sync else forward.no_sync():
                    with autocast(device, cfg.mixed_precision):
                        pred = forward(x_t, t, class_labels=y).sample
                    loss = F.mse_loss(pred.float(), target.float()) / cfg.grad_accum
                    loss.backward()
                total += loss.detach()
                seen += micro * world
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            if step % log_every == 0 or step == cfg.steps - 1:
                row = {"step": step, "loss": total.item(), "lr": sched.get_last_lr()[0]}  # the only host sync
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
            if main and checkpoint is not None and done < cfg.steps and done % cfg.checkpoint_every == 0:
                save_checkpoint(checkpoint, {"model": unet.state_dict(), "ema": ema.state_dict(),
                                             "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                                             "step": done, "curve": result.curve, "fid_curve": result.fid_curve,
                                             "fingerprint": fp, "config": asdict(cfg)})
            bar.update(1, f"loss {result.curve[-1]['loss']:.4f}" if result.curve else "")
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    result.images_per_second = seen / elapsed if elapsed > 0 else 0.0
    ema_unet = build_unet(cfg.profile, size, channels, num_classes)
    ema.copy_to(ema_unet.parameters())
    result.ema_unet = ema_unet.eval()
    return result
