"""Batched weak and strong augmentation on float tensors [N, C, H, W] in [0, 1].

Per-image RandAugment through PIL costs ~0.1 ms per op per image on CPU; here every image still draws its own
operations and magnitudes, but all images are transformed together: the geometric ops are fused into one
affine `grid_sample`, the colour ops are masked elementwise blends. Randomness comes only from the generator
passed in, so a resumed run draws exactly what an uninterrupted one would. Random parameters are drawn on
the CPU and moved to the images' device, so a GPU run draws the same augmentations as a CPU run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR = ("identity", "autocontrast", "brightness", "color", "contrast", "posterize", "sharpness", "solarize",
          "equalize")
OPS = GEOMETRIC + COLOUR


@dataclass(frozen=True)
class Policy:
    """What the views may do to an image. The defaults are FixMatch's, and what every view did before they became
    params: a mirrored image must still show its class for `hflip`/`vflip` (clothes, photos: yes; digits, text:
    no). A switched-off option draws nothing from the generator, so the other draws stay as they were."""

    hflip: bool = True                      # random left-right mirror
    vflip: bool = False                     # random up-down mirror (aerial, microscopy)
    shift: float = 0.125                    # pad-and-crop: up to this share of the side, each axis
    padding: str = "reflection"             # what a shift brings in: grid_sample's reflection | zeros | border
    ops: tuple[str, ...] = OPS              # RandAugment's pool (strong view)
    num_ops: int = 2                        # ops per image; 0: no RandAugment
    magnitude: tuple[float, float] = (0.0, 1.0)  # each op's magnitude, drawn in this range of its maximum
    cutout: float = 0.5                     # largest cutout side, as a share of the image; 0: no cutout


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _sign(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)


def _affine(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _flip_translate(n: int, size: int, g: torch.Generator, policy: Policy) -> torch.Tensor:
    """Affine matrices for the random flips and an integer pad-and-crop shift of up to `policy.shift` of size."""
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = _sign(n, g) if policy.hflip else torch.ones(n)
    theta[:, 1, 1] = _sign(n, g) if policy.vflip else torch.ones(n)
    max_shift = int(round(policy.shift * size))
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g).float()
    theta[:, :, 2] = shifts * 2.0 / size
    return theta


def weak(x: torch.Tensor, g: torch.Generator, policy: Policy = Policy()) -> torch.Tensor:
    """Flips and pad-and-crop (the FixMatch weak view)."""
    return _affine(x, _flip_translate(len(x), x.shape[-1], g, policy), policy.padding)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """a*(1-f) + b*f with a per-image factor, clamped to the image range (PIL ImageEnhance semantics)."""
    f = factor.to(a.device).view(-1, 1, 1, 1)
    return (b * f + a * (1 - f)).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel via the rank of each pixel (a batched CDF)."""
    n, c, h, w = x.shape
    q = (x * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).min(1, keepdim=True).values
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp(min=1)).clamp(0, 1)
    return lut.gather(1, q).view(n, c, h, w)


def _colour(name: str, x: torch.Tensor, m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One colour op on the whole batch, magnitude m in [0, 1] per image."""
    n = len(x)
    m = m.to(x.device)
    if name == "identity":
        return x
    if name == "autocontrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)
    if name in ("brightness", "color", "contrast", "sharpness"):
        factor = 1.0 + 0.9 * m * _sign(n, g).to(x.device)  # PIL enhance factor in [0.1, 1.9]
        if name == "brightness":
            return _blend(torch.zeros_like(x), x, factor)
        if name == "color":
            return _blend(_grey(x), x, factor)
        if name == "contrast":
            mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
            return _blend(mean.expand_as(x), x, factor)
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        kernel = kernel.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        return _blend(smooth, x, factor)
    if name == "posterize":
        bits = (8 - (m * 4).round()).view(-1, 1, 1, 1)  # keep 4..8 bits
        step = 2.0 ** (8 - bits)
        return torch.floor(x * 255 / step) * step / 255
    if name == "solarize":
        thr = (1.0 - m).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1.0 - x, x)
    if name == "equalize":
        return _equalize(x)
    raise ValueError(name)


def _geometric_theta(ops: torch.Tensor, size: int, g: torch.Generator,
                     magnitude: tuple[float, float]) -> torch.Tensor:
    """Compose the chosen geometric ops of each image into one affine matrix."""
    n = len(ops)
    theta = torch.eye(3).repeat(n, 1, 1)
    for k, name in enumerate(GEOMETRIC):
        on = (ops == k).any(1)
        if not on.any():
            continue
        m = _uniform(n, *magnitude, g) * _sign(n, g)
        a = torch.eye(3).repeat(n, 1, 1)
        if name == "rotate":
            ang = m * math.radians(30)
            a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = ang.cos(), -ang.sin(), ang.sin(), ang.cos()
        elif name == "shear_x":
            a[:, 0, 1] = 0.3 * m
        elif name == "shear_y":
            a[:, 1, 0] = 0.3 * m
        elif name == "translate_x":
            a[:, 0, 2] = 0.3 * m * 2
        else:
            a[:, 1, 2] = 0.3 * m * 2
        a[~on] = torch.eye(3)
        theta = a @ theta
    return theta


def cutout(x: torch.Tensor, g: torch.Generator, max_frac: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    """One square hole per image, side up to `max_frac` of the image, at a random centre."""
    n, _, h, w = x.shape
    side = (torch.rand(n, generator=g) * max_frac * min(h, w)).round().clamp(min=1).view(-1, 1, 1).to(x.device)
    cy = torch.randint(0, h, (n, 1, 1), generator=g).to(x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=g).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys - cy).abs() * 2 < side) & ((xs - cx).abs() * 2 < side)
    return torch.where(hole.unsqueeze(1), torch.full_like(x, fill), x)


def strong(x: torch.Tensor, g: torch.Generator, policy: Policy = Policy()) -> torch.Tensor:
    """Weak view, then RandAugment (`policy.num_ops` ops per image from `policy.ops`, each with a random
    magnitude), then cutout."""
    n, size = len(x), x.shape[-1]
    pool = torch.tensor([OPS.index(name) for name in policy.ops])
    ops = pool[torch.randint(0, len(pool), (n, policy.num_ops), generator=g)]
    base = _flip_translate(n, size, g, policy)
    base3 = torch.cat([base, torch.tensor([0.0, 0.0, 1.0]).expand(n, 1, 3)], 1)
    theta = (_geometric_theta(ops, size, g, policy.magnitude) @ base3)[:, :2]
    x = _affine(x, theta, policy.padding)
    for k, name in enumerate(COLOUR, start=len(GEOMETRIC)):
        on = (ops == k).any(1)
        if not on.any():
            continue
        m = _uniform(n, *policy.magnitude, g)
        x = torch.where(on.to(x.device).view(-1, 1, 1, 1), _colour(name, x, m, g), x)
    return cutout(x, g, policy.cutout) if policy.cutout > 0 else x
