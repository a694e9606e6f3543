"""Shared fixtures; offline and telemetry-free environment for every test."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@pytest.fixture
def toy_images():
    """A small 10-class set whose classes differ in brightness (survives flips and shifts), 28x28 greyscale."""
    rng = np.random.default_rng(0)
    n_per, k = 30, 10
    labels = np.repeat(np.arange(k), n_per)
    noise = rng.integers(0, 16, size=(n_per * k, 28, 28, 1))
    images = (labels[:, None, None, None] * 25 + noise).astype(np.uint8)
    return images, labels
