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


def test_sklearn_digits_are_laid_out_as_mnist_and_split_by_class():
    from sklearn.datasets import load_digits

    raw = load_raw(BaseConfig(dataset="sklearn-digits"), PrepareConfig())
    assert raw.train_images.shape == (1438, 28, 28, 1) and raw.test_images.shape == (359, 28, 28, 1)
    assert np.bincount(raw.train_labels).min() == 139 and np.bincount(raw.test_labels).min() == 35
    assert raw.train_images[:, :4].max() == 0 and raw.train_images[:, 24:].max() == 0  # MNIST's 4-pixel border
    assert raw.train_images.max() == 255
    # the 20x20 digit, shrunk back to 8x8, is the original (up to the bilinear round trip)
    from PIL import Image

    originals = {d.tobytes(): int(t) for d, t in zip(np.round(load_digits().images * 255 / 16).astype(np.uint8),
                                                      load_digits().target)}
    back = np.asarray(Image.fromarray(raw.train_images[0, 4:24, 4:24, 0]).resize((8, 8), Image.BILINEAR), int)
    nearest = min(originals, key=lambda k: np.abs(np.frombuffer(k, np.uint8).reshape(8, 8) - back).sum())
    assert originals[nearest] == raw.train_labels[0]
    with pytest.raises(UserError, match=r"base.channels 3 does not fit base.dataset 'sklearn-digits' \(valid: 1\)"):
        load_raw(BaseConfig(dataset="sklearn-digits", channels=3), PrepareConfig())


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


@pytest.mark.parametrize("arrays, needle", [
    ({"images": np.zeros((200, 28, 28), np.uint8), "labels": np.arange(199) % 2}, "200 images but 199 labels"),
    ({"images": np.zeros((20, 28, 28), np.uint8), "labels": (np.arange(20) % 2)[:, None]},
     "labels must be one number per image (1-D), got shape (20, 1)"),
    ({"images": np.zeros((20, 28, 28), np.uint8), "labels": np.arange(20) % 2 + 0.5}, "labels must be integers"),
    ({"images": np.zeros((0, 28, 28), np.uint8), "labels": np.zeros(0, np.int64)}, "no images"),
    ({"images": np.zeros((20, 28, 28), np.uint8), "labels": np.arange(20) % 2,
      "test_images": np.zeros((4, 28, 28), np.uint8)}, "holds 'test_images' but no 'test_labels'"),
    ({"images": np.zeros((20, 28, 28), np.uint8), "labels": np.arange(20) % 2,
      "test_images": np.zeros((4, 28, 28), np.uint8), "test_labels": np.arange(5) % 2}, "4 images but 5 labels"),
])
def test_an_npz_source_whose_arrays_disagree_is_refused_before_any_shard(tmp_path, arrays, needle):
    np.savez(tmp_path / "d.npz", **arrays)
    base = BaseConfig(dataset="npz", data_path=str(tmp_path / "d.npz"), num_classes=2)
    with pytest.raises(UserError) as err:
        load_raw(base, PrepareConfig())
    assert needle in str(err.value)
    float_labels = {"images": np.zeros((20, 28, 28), np.uint8), "labels": (np.arange(20) % 2).astype(np.float32)}
    np.savez(tmp_path / "f.npz", **float_labels)  # integral floats are labels a user meant
    raw = load_raw(BaseConfig(dataset="npz", data_path=str(tmp_path / "f.npz"), num_classes=2), PrepareConfig())
    assert raw.train_labels.dtype == np.int64


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


def test_cifar10_python_batches_decode_to_hwc_images(cifar10_files):
    base = BaseConfig(dataset="cifar10", data_path=str(cifar10_files), image_size=32, channels=3)
    raw = load_raw(base, PrepareConfig())
    assert raw.train_images.shape == (50, 32, 32, 3) and raw.test_images.shape == (10, 32, 32, 3)
    assert raw.train_images[3, 5, 5].tolist() == [10, 20, 30]
    assert np.array_equal(raw.train_images[:, 0, 1, 0], raw.train_labels)
    assert raw.class_names[:2] == ["class0", "class1"]


def test_cifar10_without_its_files_says_what_to_download(tmp_path):
    base = BaseConfig(dataset="cifar10", data_path=str(tmp_path), image_size=32, channels=3)
    with pytest.raises(UserError, match="missing data_batch_1.*cifar-10-python.tar.gz"):
        load_raw(base, PrepareConfig())


def test_an_imagenet_style_tree_keeps_its_val_split_and_centre_crops(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(n):
                img = np.zeros((30, 60, 3), np.uint8)
                img[:, 15:45] = 200  # the centre square is bright; the crop must keep only it
                Image.fromarray(img).save(tmp_path / split / wnid / f"{wnid}_{i}.JPEG", quality=95)
    base = BaseConfig(dataset="imagefolder", data_path=str(tmp_path), num_classes=2, image_size=16, channels=3)
    raw = load_raw(base, PrepareConfig())
    assert raw.train_images.shape == (8, 16, 16, 3) and raw.test_images.shape == (4, 16, 16, 3)
    assert raw.class_names == ["n01440764", "n01443537"] and raw.test_labels.tolist() == [0, 0, 1, 1]
    assert raw.train_images.mean() > 180  # a plain resize would keep the dark sides (mean ~100)


def test_a_cifar10_batch_that_names_other_code_is_refused_unloaded(cifar10_files):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    with open(cifar10_files / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    base = BaseConfig(dataset="cifar10", data_path=str(cifar10_files), image_size=32, channels=3)
    with pytest.raises(UserError, match=r"data_batch_3 references posix.system.*not loaded"):
        load_raw(base, PrepareConfig())


def test_prepare_writes_an_image_tree_one_shard_at_a_time_with_the_whole_split_digest(tmp_path, monkeypatch):
    """An ImageNet-sized tree does not fit in memory: prepare reads and writes one shard at a time, and the
    manifest's digest is the one the whole arrays would give."""
    import json

    import yaml
    from PIL import Image

    from dpt_repro.config import load_config
    from dpt_repro.data import shards
    from dpt_repro.io import array_digest
    from dpt_repro.stages import prepare

    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(np.full((20, 24, 3), 30 * i + (c == "b"), np.uint8)).save(tmp_path / "tree" / c / f"{i}.png")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"dataset": "imagefolder", "data_path": str(tmp_path / "tree"),
                                               "num_classes": 2, "image_size": 16, "channels": 3},
                                      "prepare": {"shard_size": 3, "test_fraction": 0.3}}))
    cfg = load_config(params)
    seen = []
    add = shards.SplitWriter.add
    monkeypatch.setattr(shards.SplitWriter, "add", lambda self, x, y: (seen.append(len(x)), add(self, x, y))[1])
    monkeypatch.chdir(tmp_path)
    manifest = prepare.run(cfg, params)
    assert max(seen) == 3 and sum(seen) == 14
    raw = load_raw(cfg.base, cfg.prepare)
    assert manifest["splits"]["train"]["sha256"] == array_digest(raw.train_images, raw.train_labels)
    assert manifest["splits"]["train"]["shards"] == ["train-000.npz", "train-001.npz", "train-002.npz",
                                                     "train-003.npz"]
    written = json.loads((tmp_path / "data/prepared/imagefolder/manifest.json").read_text())
    assert written == manifest
