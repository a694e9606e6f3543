"""The semi-supervised training loop shared by stage 1 and stage 3.

One step: draw a labelled batch (B) and an unlabelled batch (mu*B), make the weak and strong views, run them
through the network in one forward pass (one set of BatchNorm statistics, as FixMatch does), take the
algorithm's loss, step SGD with Nesterov momentum and cosine decay, and update the EMA weights. The EMA model
(optionally with its own BatchNorm statistics, `bn_recalibration_images`) is evaluated on the validation split
(never the test set) and the best one is kept.

Every random draw of step k comes from `generator(seed, stream, k)`, so a run resumed from a checkpoint at
step k continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from dpt_repro import distributed
from dpt_repro.config import ClassifierConfig
from dpt_repro.data import augment
from dpt_repro.errors import UserError
from dpt_repro.io import load_checkpoint, save_checkpoint
from dpt_repro.runtime import Progress, generator
from dpt_repro.ssl.algorithms import build_algorithm
from dpt_repro.ssl.backbones import build_backbone

log = logging.getLogger("dpt_repro")


@dataclass
class ClassifierData:
    """uint8 images [N, H, W, C]; labels int64. Unlabelled images carry no labels on purpose."""

    labelled_x: np.ndarray
    labelled_y: np.ndarray
    unlabelled_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    n_generated: int = 0          # the last n_generated labelled images are generated ones
    generated_share: float = -1.0  # their share of each labelled batch; -1: uniform over the pool


def labelled_batch(data: ClassifierData, size: int, g: torch.Generator) -> torch.Tensor:
    """Indices of one labelled batch: uniform over the pool, or round(share * size) generated images and the
    rest real ones (the stage-3 mix, which `stage3.generated_share` sets)."""
    n = len(data.labelled_x)
    if data.generated_share < 0 or data.n_generated == 0:
        return torch.randint(n, (size,), generator=g)
    k = round(data.generated_share * size)
    n_real = n - data.n_generated
    return torch.cat([torch.randint(n_real, (size - k,), generator=g),
                      n_real + torch.randint(data.n_generated, (k,), generator=g)])


@dataclass
class TrainResult:
    state_dict: dict
    best_step: int
    best_val_acc: float
    curve: list[dict] = field(default_factory=list)
    val_curve: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    resumed_from: int = 0


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def build_classifier(cfg: ClassifierConfig, channels: int, num_classes: int, image_size: int) -> nn.Module:
    return build_backbone(cfg.backbone, channels, num_classes, image_size, cfg.pretrained, cfg.weights)


@torch.inference_mode()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Softmax probabilities, streamed in batches so memory does not grow with the dataset."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(images[start:start + batch_size])).to(device)
        out.append(model(x).float().softmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_proba_all_ranks(model: nn.Module, images: np.ndarray, batch_size: int,
                            device: torch.device) -> np.ndarray:
    """`predict_proba` with each rank of a data-parallel stage taking its share; every rank gets all rows."""
    return distributed.gather(predict_proba(model, images[distributed.shard(len(images))], batch_size, device))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int,
             device: torch.device) -> float:
    return float((predict_proba(model, images, batch_size, device).argmax(1) == labels).mean())


def fingerprint(cfg: ClassifierConfig, seed: int, stream: int, data: ClassifierData) -> str:
    """Identifies a training run: a checkpoint is resumed only by the run that wrote it."""
    identity = {"cfg": asdict(cfg), "seed": seed, "stream": stream, **distributed.run_identity()}
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for a in (data.labelled_x, data.labelled_y, data.val_y):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(str(data.unlabelled_x.shape).encode())
    return h.hexdigest()[:16]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray, n: int, batch_size: int, g: torch.Generator,
                          device: torch.device) -> None:
    """Recompute the BatchNorm statistics of `model` (the EMA) on `n` unaugmented images drawn with `g`.

    The EMA copies the live model's statistics, which belong to weights up to 1/(1 - decay) steps newer; in a
    run only a few times that long (EMA 0.999 over 4,000 steps) the mismatch costs the EMA several points.
    Wu and Johnson 2021 ("Rethinking 'Batch' in BatchNorm") recommend recomputing them for EMA models.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or n <= 0 or len(images) == 0:
        return
    idx = np.sort(torch.randperm(len(images), generator=g)[:n].numpy())
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for start in range(0, len(idx), batch_size):
        model(normalize(to_float(images[idx[start:start + batch_size]])).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def augmentation(cfg: ClassifierConfig) -> augment.Policy:
    """The views a stage's params describe."""
    return augment.Policy(hflip=cfg.hflip, vflip=cfg.vflip, shift=cfg.shift, padding=cfg.padding,
                          ops=tuple(cfg.randaugment_ops), num_ops=cfg.randaugment_num_ops,
                          magnitude=(cfg.randaugment_magnitude_min, cfg.randaugment_magnitude_max),
                          cutout=cfg.cutout)


def validate_batch_sizes(cfg: ClassifierConfig, data: ClassifierData, section: str) -> None:
    if cfg.batch_size > len(data.labelled_x):
        raise UserError(f"{section}.batch_size {cfg.batch_size} is larger than the labelled set "
                        f"({len(data.labelled_x)} images); lower it or add labels")
    if len(data.unlabelled_x) == 0 and cfg.algorithm != "supervised":
        raise UserError(f"{section}: algorithm {cfg.algorithm!r} needs unlabelled images, found none")


def train_classifier(cfg: ClassifierConfig, data: ClassifierData, *, num_classes: int, seed: int, stream: int,
                     device: torch.device, checkpoint: Path | None = None, description: str = "train",
                     on_log: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train on this process, or as one rank of a data-parallel run (DDP): every rank draws its own share of
    the global batch; rank 0 alone evaluates, keeps the best weights and writes checkpoints."""
    algo = build_algorithm(cfg, num_classes)
    channels, size = data.labelled_x.shape[3], data.labelled_x.shape[1]
    world, main = distributed.world_size(), distributed.is_main()
    torch.manual_seed(seed * 1000 + stream)
    model = build_classifier(cfg, channels, num_classes, size).to(device)
    ema = copy.deepcopy(model).eval()
    net = model  # the module whose weights are saved; `model` may be its DDP wrapper
    if distributed.active():
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    xl, yl = to_float(data.labelled_x).to(device), torch.from_numpy(data.labelled_y).to(device)
    xu = to_float(data.unlabelled_x).to(device) if algo.uses_unlabelled else None
    b = cfg.batch_size // world  # this rank's share of the global batch (config checks it divides)
    n_u = cfg.mu * b
    policy = augmentation(cfg)
    result = TrainResult(state_dict={}, best_step=-1, best_val_acc=-1.0)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        algo.load_state_dict(state["algorithm"])
        result.state_dict, result.best_step = state["best_state"], int(state["best_step"])
        result.best_val_acc = float(state["best_val_acc"])
        result.curve, result.val_curve = list(state["curve"]), list(state["val_curve"])
        start = result.resumed_from = int(state["step"])
        log.info("%s: resuming from step %d (%s)", description, start, checkpoint)

    log_every = max(1, cfg.steps // 200)
    seen, t0 = 0, time.perf_counter()
    with Progress(description, cfg.steps) as bar:
        bar.update(start)
        for step in range(start, cfg.steps):
            model.train()
            g = generator(seed, *distributed.rank_stream(stream, step))
            torch.manual_seed(generator(seed, stream, step, 1).initial_seed())  # dropout/drop-path in timm models
            lr = cfg.lr * math.cos(7 * math.pi * step / (16 * cfg.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            idx_l = labelled_batch(data, b, g).to(device)
            views = [augment.weak(xl[idx_l], g, policy)]
            if xu is not None:
                u = xu[torch.randint(len(xu), (n_u,), generator=g).to(device)]
                views += [augment.weak(u, g, policy), augment.strong(u, g, policy)]
            logits = model(normalize(torch.cat(views)))
            logits_x = logits[:b]
            logits_w, logits_s = (logits[b:].chunk(2) if xu is not None else (None, None))
            loss, stats = algo.loss(logits_x, yl[idx_l], logits_w, logits_s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _ema_update(ema, net, cfg.ema_decay)
            seen += sum(len(v) for v in views) * world

            if step % log_every == 0 or step == cfg.steps - 1:
                row = {"step": step, "lr": lr, **stats}
                result.curve.append(row)
                if on_log:
                    on_log(step, row)
            last = step == cfg.steps - 1
            if main and ((step + 1) % cfg.eval_every == 0 or last):
                recalibrate_batchnorm(ema, data.unlabelled_x, cfg.bn_recalibration_images, cfg.eval_batch_size,
                                      generator(seed, stream, step, 2), device)
                acc = accuracy(ema, data.val_x, data.val_y, cfg.eval_batch_size, device)
                result.val_curve.append({"step": step, "val_acc": acc})
                if on_log:
                    on_log(step, {"val_acc": acc})
                if acc > result.best_val_acc:
                    result.best_val_acc, result.best_step = acc, step
                    result.state_dict = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
                bar.info = f"val {acc:.3f} (best {result.best_val_acc:.3f})"
            if main and checkpoint is not None and not last and (step + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(checkpoint, {
                    "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                    "algorithm": algo.state_dict(), "step": step + 1, "best_state": result.state_dict,
                    "best_step": result.best_step, "best_val_acc": result.best_val_acc,
                    "curve": result.curve, "val_curve": result.val_curve})
            bar.update(1, bar.info)
    elapsed = time.perf_counter() - t0
    result.images_per_second = seen / elapsed if elapsed > 0 else 0.0
    return result
