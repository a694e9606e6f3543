"""Raw dataset readers, chosen by `base.dataset`. Each returns uint8 images [N, H, W, C] and int64 labels.

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (offline) and is verified against the
official MD5s of the decompressed IDX files; torchvision's downloader is the fallback where it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from dpt_repro.config import BaseConfig, PrepareConfig
from dpt_repro.errors import UserError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# MD5 of the decompressed IDX files, as published by Zalando (Debian re-gzipped them, so .gz hashes differ).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


class SplitSource(NamedTuple):
    """One split of a raw source: its labels, and a reader of images[lo:hi]."""

    labels: np.ndarray
    read: Callable[[int, int], np.ndarray]


class RawStream(NamedTuple):
    """A raw source split by split, read in pieces: what `prepare` turns into shards."""

    splits: dict[str, SplitSource]
    class_names: list[str]
    source: str


class RawData(NamedTuple):
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str


def _read_idx(path: Path, name: str) -> np.ndarray:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:  # truncated or not gzip at all
        raise UserError(f"corrupt input: {path} cannot be decompressed ({type(exc).__name__}); reinstall "
                        "dataset-fashion-mnist or replace the file") from None
    digest = hashlib.md5(raw).hexdigest()
    if digest != FASHION_MNIST_MD5[name]:
        raise UserError(f"corrupt input: {path} has MD5 {digest}, expected {FASHION_MNIST_MD5[name]}")
    magic = int.from_bytes(raw[:4], "big")
    if magic == 2051:
        n, h, w = (int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in (1, 2, 3))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w, 1).copy()
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    raise UserError(f"corrupt input: {path} is not an IDX file (magic {magic})")


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name, folder / "FashionMNIST" / "raw" / name):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist(base: BaseConfig, prep: PrepareConfig) -> RawData:
    folder = Path(base.data_path) if base.data_path else FASHION_MNIST_DEBIAN
    found = {name: _find_idx(folder, name) for name in FASHION_MNIST_MD5}
    if not all(found.values()):
        if base.data_path:
            missing = [n for n, p in found.items() if p is None]
            raise UserError(f"base.data_path {folder} lacks Fashion-MNIST file {missing[0]}(.gz)")
        folder = _download_fashion_mnist()
        found = {name: _find_idx(folder, name) for name in FASHION_MNIST_MD5}
    arrays = {name: _read_idx(path, name) for name, path in found.items()}
    return RawData(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"],
                   arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"],
                   list(FASHION_MNIST_CLASSES), str(folder))


def _download_fashion_mnist() -> Path:
    """Fallback where the Debian package is absent: torchvision's downloader into data/raw."""
    target = Path("data/raw")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except Exception as exc:
        raise UserError("Fashion-MNIST not found: install the Debian package 'dataset-fashion-mnist' "
                        f"(make data) or allow torchvision to download it ({type(exc).__name__})") from None
    return target / "FashionMNIST" / "raw"


def _test_mask(labels: np.ndarray, prep: PrepareConfig) -> np.ndarray:
    """A stratified test split for sources that ship none; its seed is fixed so the test set never moves with
    base.seed."""
    rng = np.random.default_rng(0)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = max(1, int(round(len(idx) * prep.test_fraction)))
        test_idx.extend(rng.choice(idx, n_test, replace=False).tolist())
    mask = np.zeros(len(labels), bool)
    mask[test_idx] = True
    return mask


def _split_train_test(images: np.ndarray, labels: np.ndarray, prep: PrepareConfig):
    mask = _test_mask(labels, prep)
    return images[~mask], labels[~mask], images[mask], labels[mask]


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> np.ndarray:
    """An in-memory source's images and labels as the shards need them, or one line saying what is wrong;
    returns the labels as int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError(f"{where}: labels must be one number per image (1-D), got shape {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{where}: {len(images)} images but {len(labels)} labels")
    if not len(labels):
        raise UserError(f"{where}: no images")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
        raise UserError(f"{where}: labels must be integers, got {labels.dtype} (e.g. {labels[0]!r})")
    return labels.astype(np.int64)


def _check_classes(labels: np.ndarray, base: BaseConfig, where: str) -> None:
    present = set(np.unique(labels).tolist())
    missing = sorted(set(range(base.num_classes)) - present)
    if missing:
        raise UserError(f"{where}: class {missing[0]} has no images (base.num_classes={base.num_classes})")
    extra = sorted(present - set(range(base.num_classes)))
    if extra:
        raise UserError(f"{where}: label {extra[0]} is outside 0..{base.num_classes - 1} (base.num_classes)")


def _center_crop_resize(im, size: int):
    """ADM's ImageNet preprocessing (the DPT/U-ViT protocol): the short side to `size`, then a centre crop."""
    from PIL import Image

    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


def _class_files(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    files, labels = [], []
    for c, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in suffixes)
        if not found:
            raise UserError(f"{root / name}: class {name!r} has no images")
        files += found
        labels += [c] * len(found)
    return np.asarray(files, dtype=object), np.asarray(labels, np.int64)


def _image_reader(files: np.ndarray, base: BaseConfig) -> Callable[[int, int], np.ndarray]:
    """Reads files[lo:hi] when asked, so `prepare` holds one shard of a large tree in memory at a time."""
    from PIL import Image

    mode = "L" if base.channels == 1 else "RGB"

    def read(lo: int, hi: int) -> np.ndarray:
        images = []
        for f in files[lo:hi]:
            with Image.open(f) as im:
                im = _center_crop_resize(im.convert(mode), base.image_size)
                images.append(np.asarray(im, np.uint8).reshape(base.image_size, base.image_size, base.channels))
        return np.stack(images) if images else np.zeros((0, base.image_size, base.image_size, base.channels), np.uint8)

    return read


def image_folder(base: BaseConfig, prep: PrepareConfig) -> "RawStream":
    """torchvision's ImageFolder layout: one subfolder per class, centre-cropped to base.image_size. A root with
    `train/` and `val/` class trees (ImageNet's layout) keeps that split; otherwise a stratified test split.
    The images are read shard by shard when `prepare` writes them (ImageNet does not fit in memory)."""
    root = Path(base.data_path)
    if not base.data_path or not root.is_dir():
        raise UserError(f"base.data_path must be a folder with one subfolder per class, got {base.data_path!r}")
    has_val = (root / "train").is_dir() and (root / "val").is_dir()
    train_root = root / "train" if has_val else root
    classes = sorted(d.name for d in train_root.iterdir() if d.is_dir())
    if len(classes) != base.num_classes:
        raise UserError(f"{train_root} has {len(classes)} class folders, base.num_classes is {base.num_classes}")
    files, labels = _class_files(train_root, classes)
    if has_val:
        val_classes = sorted(d.name for d in (root / "val").iterdir() if d.is_dir())
        if val_classes != classes:
            raise UserError(f"{root / 'val'} class folders differ from {train_root}'s (e.g. "
                            f"{sorted(set(val_classes) ^ set(classes))[0]!r})")
        test_files, test_labels = _class_files(root / "val", classes)
    else:
        mask = _test_mask(labels, prep)
        files, labels, test_files, test_labels = files[~mask], labels[~mask], files[mask], labels[mask]
    return RawStream({"train": SplitSource(labels, _image_reader(files, base)),
                      "test": SplitSource(test_labels, _image_reader(test_files, base))}, classes, str(root))


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


# What a CIFAR-10 batch may reference: numpy arrays and their dtype (pickled by Python 2 or 3). Anything else
# (a pickle can name any callable) is refused, so a tampered file cannot run code.
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def _unpickle(path: Path) -> dict:
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in _CIFAR_GLOBALS:
                raise UserError(f"corrupt input: {path} references {module}.{name}, which a CIFAR-10 batch never "
                                "does; not loaded")
            return super().find_class(module, name)

    with open(path, "rb") as fh:
        return Restricted(fh, encoding="bytes").load()


def cifar10(base: BaseConfig, prep: PrepareConfig) -> RawData:
    """The CIFAR-10 python version (`cifar-10-python.tar.gz` unpacked, what torchvision downloads): pickled
    batches of 10,000 rows of 3,072 bytes (the R, G and B planes of a 32x32 image) with their labels."""
    root = Path(base.data_path)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [n for n in (*CIFAR10_TRAIN, "test_batch", "batches.meta") if not (folder / n).is_file()]
    if not base.data_path or missing:
        raise UserError(f"base.data_path {base.data_path!r} must hold CIFAR-10's python batches (missing "
                        f"{missing[0] if base.data_path else 'the folder'}); download cifar-10-python.tar.gz from "
                        "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there")

    def read(names) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(folder / n) for n in names]
        x = np.concatenate([b[b"data"] for b in batches]).astype(np.uint8)
        y = np.concatenate([np.asarray(b[b"labels"], np.int64) for b in batches])
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y

    train_x, train_y = read(CIFAR10_TRAIN)
    test_x, test_y = read(["test_batch"])
    names = [n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"]]
    return RawData(train_x, train_y, test_x, test_y, names, str(folder))


def npz_file(base: BaseConfig, prep: PrepareConfig) -> RawData:
    """An .npz with `images` [N,H,W(,C)] uint8 and `labels`; optional `test_images`/`test_labels`."""
    from dpt_repro.io import read_npz

    if not base.data_path:
        raise UserError("base.data_path must name an .npz file for base.dataset 'npz'")
    data = read_npz(base.data_path, "npz dataset")
    if "images" not in data or "labels" not in data:
        raise UserError(f"{base.data_path} must hold arrays 'images' and 'labels', has {sorted(data)}")

    def norm(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8:
            raise UserError(f"{base.data_path}: images must be uint8, got {x.dtype}")
        x = x[..., None] if x.ndim == 3 else x
        if x.shape[1:] != (base.image_size, base.image_size, base.channels):
            raise UserError(f"{base.data_path}: images have shape {x.shape[1:]}, params expect "
                            f"{(base.image_size, base.image_size, base.channels)}")
        return x

    x, y = norm(data["images"]), data["labels"]
    names = [str(i) for i in range(base.num_classes)]
    if "test_images" in data:
        if "test_labels" not in data:
            raise UserError(f"{base.data_path} holds 'test_images' but no 'test_labels'")
        return RawData(x, y, norm(data["test_images"]), data["test_labels"], names, base.data_path)
    _check_arrays(x, y, f"{base.data_path} images/labels")  # before the test split indexes them
    return RawData(*_split_train_test(x, y, prep), names, base.data_path)


def sklearn_digits(base: BaseConfig, prep: PrepareConfig) -> RawData:
    """scikit-learn's handwritten digits (`sklearn.datasets.load_digits`, the UCI optdigits set: 1,797 images of
    8x8 pixels in 17 grey levels, about 180 per class; no network needed), laid out as MNIST is: levels 0..16 scaled
    to 0..255, each digit resized (PIL bilinear) to 20/28 of `base.image_size` and centred on a black canvas
    (28x28: a 20x20 digit, 4 pixels of border). No test split ships: `prepare.test_fraction` of each class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    expected = {"base.num_classes": (base.num_classes, 10), "base.channels": (base.channels, 1)}
    for key, (value, want) in expected.items():
        if value != want:
            raise UserError(f"{key} {value} does not fit base.dataset 'sklearn-digits' (valid: {want})")
    if base.data_path:
        raise UserError(f"base.data_path {base.data_path!r}: base.dataset 'sklearn-digits' ships with scikit-learn "
                        "and reads no file (valid: \"\")")
    digits = load_digits()
    side = base.image_size
    inner, border = round(side * 20 / 28), (side - round(side * 20 / 28)) // 2
    images = np.zeros((len(digits.images), side, side, 1), np.uint8)
    for i, im in enumerate(digits.images):
        small = Image.fromarray(np.round(im * 255 / 16).astype(np.uint8))
        images[i, border:border + inner, border:border + inner, 0] = small.resize((inner, inner), Image.BILINEAR)
    names = [str(d) for d in digits.target_names]
    return RawData(*_split_train_test(images, digits.target.astype(np.int64), prep), names,
                   "sklearn.datasets.load_digits")


# Sources read whole (small: Fashion-MNIST, CIFAR-10, an .npz, scikit-learn's digits) and sources streamed file by file.
SOURCES: dict[str, Callable[[BaseConfig, PrepareConfig], RawData]] = {
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
    "npz": npz_file,
    "sklearn-digits": sklearn_digits,
}
STREAMED: dict[str, Callable[[BaseConfig, PrepareConfig], RawStream]] = {"imagefolder": image_folder}


def stream_raw(base: BaseConfig, prep: PrepareConfig) -> RawStream:
    """The source as labels and image readers per split; every class checked before any image is read."""
    if base.dataset in STREAMED:
        stream = STREAMED[base.dataset](base, prep)
    else:
        raw = SOURCES[base.dataset](base, prep)
        train_y = _check_arrays(raw.train_images, raw.train_labels, f"{raw.source} train images/labels")
        test_y = _check_arrays(raw.test_images, raw.test_labels, f"{raw.source} test images/labels")
        stream = RawStream({"train": SplitSource(train_y, lambda lo, hi: raw.train_images[lo:hi]),
                            "test": SplitSource(test_y, lambda lo, hi: raw.test_images[lo:hi])},
                           raw.class_names, raw.source)
    for name, split in stream.splits.items():
        _check_classes(split.labels, base, f"{base.dataset} {name} split")
    return stream


def load_raw(base: BaseConfig, prep: PrepareConfig) -> RawData:
    """The whole source in memory (small sources, tests)."""
    stream = stream_raw(base, prep)
    train, test = stream.splits["train"], stream.splits["test"]
    raw = RawData(train.read(0, len(train.labels)), train.labels, test.read(0, len(test.labels)), test.labels,
                  stream.class_names, stream.source)
    expected = (base.image_size, base.image_size, base.channels)
    if raw.train_images.shape[1:] != expected:
        raise UserError(f"{base.dataset} images are {raw.train_images.shape[1:]}, params expect {expected} "
                        "(base.image_size, base.channels)")
    return raw
