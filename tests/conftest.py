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
    """A small 10-class set whose classes differ in brightness and stripe position, 28x28 greyscale."""
    rng = np.random.default_rng(0)
    n_per, k = 30, 10
    images = rng.integers(0, 40, size=(n_per * k, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(k), n_per)
    for i, c in enumerate(labels):
        images[i, 2 * c:2 * c + 4, :, 0] = 200
    return images, labels
