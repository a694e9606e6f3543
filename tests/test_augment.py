"""The views as params (data/augment.py's Policy): the defaults draw exactly what the hard-coded views drew, and
each option does what its name says."""

from __future__ import annotations

import dataclasses
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dpt_repro.config import AUGMENT_OPS, ClassifierConfig
from dpt_repro.data import augment
from dpt_repro.runtime import generator
from dpt_repro.ssl.train import augmentation, to_float

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "5980710"  # the last commit with the hard-coded views (flip on, shift 0.125, all 14 ops, cutout 0.5)


def views_before():
    """data/augment.py as it was at BEFORE, imported from git."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:src/dpt_repro/data/augment.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {BEFORE} is not in this checkout's git history (a shallow clone?)")
    module = types.ModuleType("augment_before")
    exec(compile(source, "augment_before.py", "exec"), module.__dict__)  # noqa: S102 (our own file, from git)
    return module


def fashion_mnist_images(n: int = 256) -> torch.Tensor:
    from dpt_repro.config import BaseConfig, PrepareConfig
    from dpt_repro.data.sources import fashion_mnist

    raw = fashion_mnist(BaseConfig(), PrepareConfig())
    return to_float(raw.train_images[:n])


def cifar10_shaped_images(n: int = 256) -> torch.Tensor:
    """Real CIFAR-10 is not on this machine (no network): 32x32 RGB images of smooth random colour fields."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    return torch.nn.functional.interpolate(to_float(coarse), size=32, mode="bilinear", align_corners=False)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to grid_sample's rounding (an identity or a mirror through it is exact to ~1e-7)."""
    return torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("images", [fashion_mnist_images, cifar10_shaped_images], ids=["fashion-mnist", "cifar10"])
def test_default_params_draw_the_same_views_as_before_they_were_params(images):
    old, x = views_before(), images()
    policy = augmentation(ClassifierConfig())
    assert policy == augment.Policy()
    for step in range(5):
        assert torch.equal(augment.weak(x, generator(0, 1, step), policy), old.weak(x, generator(0, 1, step)))
        assert torch.equal(augment.strong(x, generator(0, 1, step), policy), old.strong(x, generator(0, 1, step)))
    zeros = dataclasses.replace(policy, padding="zeros")
    assert torch.equal(augment.strong(x, generator(0, 2, 0), zeros), old.strong(x, generator(0, 2, 0),
                                                                                padding="zeros"))


def test_op_names_in_config_match_augment():
    assert AUGMENT_OPS == augment.OPS


def test_flips_shift_and_cutout_follow_the_policy():
    x = torch.rand(64, 1, 28, 28)
    g = lambda: generator(0, 1, 3)  # noqa: E731
    still = augment.Policy(hflip=False, shift=0.0)
    assert same(augment.weak(x, g(), still), x)  # no flip, no shift: the image itself
    mirrored = augment.weak(x, g(), augment.Policy(shift=0.0))
    flipped = [same(m, xi.flip(-1)) for m, xi in zip(mirrored, x)]
    assert 16 < sum(flipped) < 48 and all(f or same(m, xi) for f, m, xi in zip(flipped, mirrored, x))
    upside = augment.weak(x, g(), augment.Policy(hflip=False, vflip=True, shift=0.0))
    assert all(same(u, xi) or same(u, xi.flip(-2)) for u, xi in zip(upside, x))
    assert not same(upside, x)
    no_ops = augment.Policy(hflip=False, shift=0.0, num_ops=0, cutout=0.0)
    assert same(augment.strong(x, g(), no_ops), x)
    holes = augment.strong(torch.zeros(64, 1, 28, 28), g(), dataclasses.replace(no_ops, cutout=0.5))
    assert holes.eq(0.5).any(dim=(1, 2, 3)).all()  # every image has its grey square


def test_the_op_pool_and_magnitude_range_bind():
    x = torch.rand(64, 1, 28, 28)
    plain = augment.Policy(hflip=False, shift=0.0, cutout=0.0)
    zero_magnitude = dataclasses.replace(plain, ops=("rotate", "shear_x", "brightness"), magnitude=(0.0, 0.0))
    assert torch.allclose(augment.strong(x, generator(0, 1, 4), zero_magnitude), x, atol=1e-5)
    solarized = augment.strong(x, generator(0, 1, 4), dataclasses.replace(plain, ops=("solarize",), num_ops=1,
                                                                           magnitude=(1.0, 1.0)))
    assert torch.allclose(solarized, 1 - x, atol=1e-5)  # threshold 1 - m = 0: every pixel inverted
