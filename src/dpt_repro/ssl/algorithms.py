"""Semi-supervised algorithms: each a small unit that overrides only its loss on one training step.

Adding an algorithm means writing one class here and decorating it with `@register("name")`; the training
loop in `ssl/train.py` calls `loss(...)` and never branches on the algorithm.
"""

from __future__ import annotations

import abc
from typing import Callable

import torch
import torch.nn.functional as F

from dpt_repro import distributed
from dpt_repro.config import ClassifierConfig
from dpt_repro.errors import UserError

ALGORITHMS: dict[str, type["Algorithm"]] = {}


def register(name: str) -> Callable[[type["Algorithm"]], type["Algorithm"]]:
    def wrap(cls: type["Algorithm"]) -> type["Algorithm"]:
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return wrap


def build_algorithm(cfg: ClassifierConfig, num_classes: int) -> "Algorithm":
    if cfg.algorithm not in ALGORITHMS:
        raise UserError(f"unknown algorithm {cfg.algorithm!r} (valid: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[cfg.algorithm](cfg, num_classes)


class Algorithm(abc.ABC):
    """One semi-supervised method: its loss on a step and any state it keeps between steps."""

    name = "base"
    uses_unlabelled = True

    def __init__(self, cfg: ClassifierConfig, num_classes: int):
        self.cfg = cfg
        self.num_classes = num_classes

    @abc.abstractmethod
    def loss(self, logits_x: torch.Tensor, y: torch.Tensor, logits_w: torch.Tensor | None,
             logits_s: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one step and scalar statistics to log (loss, mask rate, threshold...)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Algorithm state that a resumed run must restore (e.g. FreeMatch's running thresholds)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())


@register("supervised")
class Supervised(Algorithm):
    """The labelled images only: the reference that shows what the unlabelled data adds."""

    uses_unlabelled = False

    def loss(self, logits_x, y, logits_w, logits_s):
        sup = F.cross_entropy(logits_x, y)
        return sup, {"loss": sup.item(), "sup_loss": sup.item()}


@register("fixmatch")
class FixMatch(Algorithm):
    """Sohn et al. 2020: hard pseudo-labels from the weak view where confidence >= a fixed threshold."""

    def threshold(self, probs: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        return torch.full_like(pseudo, self.cfg.threshold, dtype=probs.dtype)

    def update_state(self, probs: torch.Tensor) -> None:
        """Hook for algorithms whose threshold adapts to the unlabelled predictions."""

    def extra_loss(self, mask: torch.Tensor, logits_s: torch.Tensor) -> torch.Tensor | None:
        return None

    def loss(self, logits_x, y, logits_w, logits_s):
        sup = F.cross_entropy(logits_x, y)
        probs = logits_w.detach().float().softmax(-1)
        self.update_state(probs)
        conf, pseudo = probs.max(-1)
        thr = self.threshold(probs, pseudo)
        mask = (conf >= thr).float()
        unsup = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
        total = sup + self.cfg.lambda_u * unsup
        stats = {"sup_loss": sup.item(), "unsup_loss": unsup.item(), "mask_rate": mask.mean().item(),
                 "threshold": thr.mean().item()}
        extra = self.extra_loss(mask, logits_s)
        if extra is not None:
            total = total + self.cfg.fairness_weight * extra
            stats["fairness_loss"] = extra.item()
        stats["loss"] = total.item()
        return total, stats


@register("freematch")
class FreeMatch(FixMatch):
    """Wang et al. 2023: self-adaptive global and class-wise thresholds (SAT); the fairness term (SAF) only
    when `fairness_weight` > 0, as the official DPT CIFAR-10 config leaves it out (ent_loss_ratio 0)."""

    momentum = 0.999

    def __init__(self, cfg: ClassifierConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.time_p = torch.tensor(1.0 / num_classes)
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes)

    def update_state(self, probs: torch.Tensor) -> None:
        m = self.momentum
        self.time_p, self.p_model, self.label_hist = (t.to(probs.device) for t in
                                                      (self.time_p, self.p_model, self.label_hist))
        conf, pseudo = probs.max(-1)
        hist = torch.bincount(pseudo, minlength=self.num_classes).float()
        # Averaged over the ranks of a data-parallel run (equal batches), so every rank keeps the same state.
        batch = distributed.all_mean(torch.cat([conf.mean()[None], probs.mean(0), hist / hist.sum()]))
        k = self.num_classes
        self.time_p = m * self.time_p + (1 - m) * batch[0]
        self.p_model = m * self.p_model + (1 - m) * batch[1:1 + k]
        self.label_hist = m * self.label_hist + (1 - m) * batch[1 + k:]

    def threshold(self, probs, pseudo):
        local = self.p_model / self.p_model.max()
        return self.time_p * local[pseudo]

    def extra_loss(self, mask, logits_s):
        if self.cfg.fairness_weight <= 0 or mask.sum() == 0:
            return None
        probs_s = logits_s[mask.bool()].softmax(-1)
        hist_s = torch.bincount(probs_s.argmax(-1), minlength=self.num_classes).to(probs_s.dtype)
        hist_s = hist_s / hist_s.sum()
        mod_model = self.p_model * torch.nan_to_num(1 / self.label_hist, posinf=0.0)
        mod_model = mod_model / mod_model.sum()
        mod_mean = probs_s.mean(0) * torch.nan_to_num(1 / hist_s, posinf=0.0)
        mod_mean = mod_mean / mod_mean.sum()
        return (mod_model * torch.log(mod_mean + 1e-12)).sum()

    def state_dict(self):
        return {"time_p": self.time_p, "p_model": self.p_model, "label_hist": self.label_hist}
