import numpy as np
import pytest

from dpt_repro.config import BaseConfig, PrepareConfig
from dpt_repro.data.shards import load_split, write_split
from dpt_repro.data.sources import FASHION_MNIST_DEBIAN, load_raw
from dpt_repro.errors import UserError


def test_fashion_mnist_decodes_and_verifies():
    if not FASHION_MNIST_DEBIAN.is_dir():
        pytest.fail("dataset-fashion-mnist is not installed; run `make data`")
    raw = load_raw(BaseConfig(), PrepareConfig())
    assert raw.train_images.shape == (60000, 28, 28, 1) and raw.test_images.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(raw.train_labels), np.full(10, 6000))
    assert abs(raw.train_images.mean() / 255 - 0.2860) < 1e-3


def test_image_folder_source_resizes_and_splits(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((40, 30, 3), 20 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    base = BaseConfig(dataset="imagefolder", data_path=str(tmp_path), num_classes=2, image_size=16, channels=3)
    raw = load_raw(base, PrepareConfig(test_fraction=0.2))
    assert raw.train_images.shape == (16, 16, 16, 3) and raw.test_images.shape == (4, 16, 16, 3)
    assert raw.class_names == ["cat", "dog"]


def test_npz_source_with_a_missing_class_is_refused(tmp_path):
    images = np.zeros((20, 28, 28), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.repeat([0, 1], 10))
    base = BaseConfig(dataset="npz", data_path=str(tmp_path / "d.npz"), num_classes=3)
    with pytest.raises(UserError, match="class 2 has no images"):
        load_raw(base, PrepareConfig())


def test_shards_roundtrip_and_detect_tampering(tmp_path):
    import json

    images = np.random.default_rng(0).integers(0, 255, (25, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(25) % 5
    entry = write_split(tmp_path, "train", images, labels, shard_size=10)
    assert entry["shards"] == ["train-000.npz", "train-001.npz", "train-002.npz"]
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": entry}}))
    x, y = load_split(tmp_path, "train", verify=True)
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    np.savez_compressed(tmp_path / "train-001.npz", images=images[10:20] ^ 1, labels=labels[10:20])
    with pytest.raises(UserError, match="does not match its manifest checksum"):
        load_split(tmp_path, "train", verify=True)
