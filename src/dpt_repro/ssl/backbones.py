"""Classifier backbones by name: a compact CNN for 28x28 CPU runs, WRN-28-2, or any timm model.

Every backbone exposes `features(x)` (the penultimate embedding) and `forward(x)` (logits), so a trained
network can serve as a frozen encoder (the ImageNet protocol's linear probe).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dpt_repro.errors import UserError


class CompactCNN(nn.Module):
    """Three conv blocks and a linear head: ~0.1 s per FixMatch step (B=32, mu=7) on two CPU cores."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.LeakyReLU(0.1), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))

        self.body = nn.Sequential(block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width),
                                  nn.MaxPool2d(2), block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        if self.shortcut is None:
            return x + self.conv2(self.act(self.bn2(self.conv1(o))))
        src = o if self.activate_before_residual else x  # TorchSSL's quirk, kept for comparability
        return self.shortcut(src) + self.conv2(self.act(self.bn2(self.conv1(src))))


class WideResNet(nn.Module):
    """WRN-28-k as used by FixMatch/FreeMatch on 32x32 images (k=2: 1.47M parameters)."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 2):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                layers.append(_WideBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1],
                                         stride if j == 0 else 1, activate_before_residual=(i == 0 and j == 0)))
        layers += [nn.BatchNorm2d(widths[3], momentum=0.001), nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[3], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TimmBackbone(nn.Module):
    """Any timm model by name (with a pretrained tag, e.g. `vit_base_patch16_224.dino`), trained from scratch
    unless the user asks for pretrained weights: from a local file (`weights`) or the Hugging Face hub.

    Inputs arrive in [-1, 1] like every backbone's; a pretrained model renormalises them to the mean and std it
    was trained with. Those are buffers, saved with the weights, so a reloaded model needs no download."""

    def __init__(self, name: str, in_channels: int, num_classes: int, image_size: int, pretrained: bool = False,
                 weights: str = ""):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UserError(f"unknown timm model {name!r} (see timm.list_models())")
        kwargs = {"img_size": image_size} if "vit" in name or "deit" in name else {}
        if weights:
            if not Path(weights).is_file():
                raise UserError(f"pretrained weights for timm:{name} not found at {weights!r}")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            self.net = timm.create_model(name, pretrained=pretrained or bool(weights), num_classes=num_classes,
                                         in_chans=in_channels, **kwargs)
        except Exception as exc:  # offline hub lookups raise several error types
            hub = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or name
            raise UserError(f"backbone 'timm:{name}' with pretrained weights could not be built "
                            f"({type(exc).__name__}): download them once with `huggingface-cli download {hub}` "
                            "(and unset HF_HUB_OFFLINE), or point the section's `weights` at a local file") from None
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels  # identity on [-1, 1] inputs
        if pretrained or weights:
            cfg = self.net.pretrained_cfg
            mean, std = tuple(cfg.get("mean", mean))[:in_channels], tuple(cfg.get("std", std))[:in_channels]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def _renormalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0.5 + 0.5 - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(self._renormalise(x)), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._renormalise(x))


BACKBONES = ("cnn", "wrn28_2", "timm:<model name>")


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer (features -> logits), which the stage-3 probe replaces."""
    head = model.net.get_classifier() if isinstance(model, TimmBackbone) else model.head
    if not isinstance(head, nn.Linear):
        raise UserError(f"the probe needs a linear classifier head; {type(model).__name__} has {type(head).__name__}")
    return head


def build_backbone(name: str, in_channels: int, num_classes: int, image_size: int,
                   pretrained: bool = False, weights: str = "") -> nn.Module:
    if name == "cnn":
        return CompactCNN(in_channels, num_classes)
    if name == "wrn28_2":
        return WideResNet(in_channels, num_classes, 28, 2)
    if name.startswith("timm:") and len(name) > 5:
        return TimmBackbone(name[5:], in_channels, num_classes, image_size, pretrained, weights)
    raise UserError(f"unknown backbone {name!r} (valid: {', '.join(BACKBONES)})")
