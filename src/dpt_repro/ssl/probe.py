"""DPT's ImageNet protocol for stage 3: a frozen encoder and an L2-regularised logistic regression on its
features, fitted on the labelled plus generated images. The L2 weight is chosen on the validation split.

The fitted regression is folded into the encoder's own linear head, so the result is an ordinary classifier
of the stage-1 architecture that every later step (evaluate, the MLflow model) loads as it loads any other.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpt_repro.ssl.backbones import classifier_head
from dpt_repro.ssl.train import ClassifierData, normalize, to_float

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # on standardised features; wide enough for 10 to 10^5 labelled images


@torch.inference_mode()
def encode(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    feats = [model.features(normalize(to_float(images[s:s + batch_size])).to(device)).float().cpu()
             for s in range(0, len(images), batch_size)]
    return torch.cat(feats).double()


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, cross-entropy + l2/2 |W|^2 on standardised features, by L-BFGS from
    zero (deterministic); returns (W, b) for the raw features."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std
    w = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + 0.5 * l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = w.detach() / std
    return w_raw, b.detach() - w_raw @ mean


def fit_probe(encoder: torch.nn.Module, data: ClassifierData, num_classes: int, batch_size: int,
              device: torch.device) -> tuple[dict, dict]:
    """Fit one regression per L2 weight, keep the best on validation; returns (state_dict, record)."""
    f_train = encode(encoder, data.labelled_x, batch_size, device)
    f_val = encode(encoder, data.val_x, batch_size, device)
    y_train, y_val = torch.from_numpy(data.labelled_y), torch.from_numpy(data.val_y)
    curve, best = [], None
    for l2 in L2_GRID:
        w, b = fit_logistic(f_train, y_train, num_classes, l2)
        val_acc = float(((f_val @ w.T + b).argmax(1) == y_val).double().mean())
        curve.append({"l2": l2, "val_acc": val_acc})
        if best is None or val_acc > best[0]:
            best = (val_acc, l2, w, b)
    val_acc, l2, w, b = best
    head = classifier_head(encoder)
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight))
        head.bias.copy_(b.to(head.bias))
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    return state, {"val_acc": val_acc, "l2": l2, "l2_curve": curve, "fitted_on": int(len(data.labelled_x))}
