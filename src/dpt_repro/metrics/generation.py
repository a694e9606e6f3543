"""The generation metrics of ADM's evaluation suite (FID, sFID, Inception Score, precision, recall), plus
per-class FID, all from one Inception pass over an image set.

What ADM's `evaluations/evaluator.py` computes, and what differs here:
- sFID: the Fréchet distance of the first 7 channels of `mixed_6/conv` (17x17x7, flattened): as ADM.
- Inception Score: softmax of pool3 x the 2048x1008 weight of `softmax/logits/MatMul` (no bias), exp of the mean
  KL(p(y|x) || p(y)) per split, mean (and here also the std) over splits. The shipped network lacks that weight;
  the user supplies it (`eval.inception_logits_weights`, a .npy checked against `eval.inception_logits_sha256`),
  otherwise IS is absent. ADM cuts the samples in their order into sets of 5,000; the generated set here is
  class-major, so it is shuffled first (seed 0), then cut into floor(N / split) near-equal sets that cover all N
  (torch-fidelity's chunking; ADM's when the split divides N).
- Precision and recall (Kynkäänniemi et al., 2019), k = 3: a point's radius is the squared Euclidean distance to
  its k-th nearest neighbour other than itself in its own set; precision is the share of generated points inside
  some real point's radius (<=), recall the share of real points inside some generated point's radius. ADM
  computes distances in fp16 (fp32 on overflow); here float64, so the result does not depend on the hardware.
  Each side is a seeded uniform sample of at most `eval.pr_images` rows (ADM: 10k reference, 50k samples), and
  distances are computed in row blocks, so memory is bounded by the sample sizes.
- Class FID (not in ADM): the mean over classes of the FID between the images generated for class c and the
  reference images whose true label is c, each side capped at `eval.class_fid_images` per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from dpt_repro.errors import UserError
from dpt_repro.io import file_sha256
from dpt_repro.metrics import fid
from dpt_repro.runtime import Progress

PR_K = 3          # ADM's neighbourhood size
PR_SEED = 0       # the seeded sample of rows that precision/recall use
IS_SEED = 0       # the shuffle before the Inception Score's splits
LOGITS_SHAPE = (fid.POOL3_DIM, 1008)
BLOCK_ELEMENTS = 2 ** 24  # distance-matrix entries per block (128 MB in float64), whatever the sample sizes


def load_logits_weights(path: str, sha256: str) -> np.ndarray:
    """The 2048x1008 softmax weight of the TF Inception graph, from a user-supplied .npy checked by its hash."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"eval.inception_logits_weights: {path} not found")
    digest = file_sha256(file)
    if digest != sha256:
        raise UserError(f"eval.inception_logits_weights {path} has SHA-256 {digest}, but "
                        f"eval.inception_logits_sha256 is {sha256}")
    try:
        weights = np.load(file, allow_pickle=False)
    except ValueError as err:
        raise UserError(f"eval.inception_logits_weights {path} is not a .npy array: {err}") from None
    if weights.shape != LOGITS_SHAPE:
        raise UserError(f"eval.inception_logits_weights {path} has shape {weights.shape}, expected {LOGITS_SHAPE} "
                        "(the weight of softmax/logits/MatMul, pool3 x classes)")
    return weights.astype(np.float32)


class SetFeatures:
    """Everything the generation metrics need from one image set, accumulated batch by batch from the single
    Inception pass ([pool3 | spatial] rows): FID statistics and the KID sample of pool3, the sFID statistics of
    the spatial features, a seeded sample of pool3 rows for precision/recall, the pool3 rows of the first
    `class_images` images of each class for class FID, and (with softmax weights) the logits for IS."""

    def __init__(self, total: int, *, num_classes: int, pr_images: int, class_images: int,
                 logits_weights: np.ndarray | None = None, device="cpu"):
        self.pool3 = fid.StreamingStatistics(total, fid.KID_SAMPLE, device=device)
        self.spatial = fid.StreamingStatistics(total, 0, device=device)
        self.pr = fid.RowSample(total, pr_images, PR_SEED)
        self.class_images, self.num_classes = class_images, num_classes
        self.class_rows: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.class_counts = np.zeros(num_classes, np.int64)  # rows kept per class
        self.class_totals = np.zeros(num_classes, np.int64)  # images seen per class
        self.weights = logits_weights
        self.logits: list[np.ndarray] = []

    def update(self, features: np.ndarray, labels: np.ndarray) -> None:
        pool3 = features[:, :fid.POOL3_DIM]
        self.pool3.update(pool3)
        self.spatial.update(features[:, fid.POOL3_DIM:])
        self.pr.update(pool3)
        self.class_totals += np.bincount(labels, minlength=self.num_classes)
        for c in np.unique(labels):
            room = self.class_images - int(self.class_counts[c])
            rows = pool3[labels == c][:max(room, 0)]
            self.class_rows[c].append(rows.astype(np.float32))
            self.class_counts[c] += len(rows)
        if self.weights is not None:
            self.logits.append((pool3 @ self.weights.astype(np.float64)).astype(np.float32))

    def result(self) -> dict[str, np.ndarray]:
        mu, sigma, kid_rows = self.pool3.result()
        spatial_mu, spatial_sigma, _ = self.spatial.result()
        out = {"mu": mu, "sigma": sigma, "features": kid_rows, "spatial_mu": spatial_mu,
               "spatial_sigma": spatial_sigma, "pr_features": self.pr.result(),
               "class_features": np.concatenate([r for rows in self.class_rows for r in rows]
                                                or [np.zeros((0, fid.POOL3_DIM), np.float32)]),
               "class_labels": np.repeat(np.arange(self.num_classes), self.class_counts)}
        if self.weights is not None:
            out["logits"] = np.concatenate(self.logits)
        return out


def stream_features(batches: Iterable[tuple[np.ndarray, np.ndarray]], total: int, extractor: fid.FeatureExtractor,
                    accumulator: SetFeatures, *, batch_size: int, description: str) -> dict[str, np.ndarray]:
    """One Inception pass (pool3 and spatial features) over (images, labels) arrays read one at a time."""
    if not extractor.spatial:
        raise ValueError("stream_features needs an extractor with spatial=True")
    n = 0
    with Progress(description, total) as bar:
        for images, labels in batches:
            accumulator.update(fid.features_all_ranks(images, extractor, batch_size, bar), np.asarray(labels))
            n += len(images)
    if n != total:
        raise UserError(f"FID input had {n} images, expected {total}")
    return accumulator.result()


def sfid(generated: dict, reference: dict) -> float:
    return fid.frechet_distance(generated["spatial_mu"], generated["spatial_sigma"], reference["spatial_mu"],
                                reference["spatial_sigma"])


def inception_score(logits: np.ndarray, split_size: int, seed: int = IS_SEED) -> tuple[float, float, int]:
    """(mean, std over splits, number of splits) of exp(E_x KL(p(y|x) || p(y))), computed in float64."""
    n = len(logits)
    if not 1 <= split_size <= n:
        raise UserError(f"eval.inception_score_split is {split_size}, but the set has {n} images")
    x = np.asarray(logits, np.float64)[np.random.default_rng(seed).permutation(n)]
    log_p = x - x.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    p = np.exp(log_p)
    splits = n // split_size
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 terms are 0 (p log p -> 0)
            log_q = np.log(p[part].mean(0, keepdims=True))
            kl = np.where(p[part] > 0, p[part] * (log_p[part] - log_q), 0.0)
        scores.append(float(np.exp(kl.sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores)), splits


def _squared_distances(a, b):
    return ((a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]).clamp_min_(0.0)


def _block_rows(n_cols: int) -> int:
    """Rows per block of a distance matrix with `n_cols` columns, so that a block holds BLOCK_ELEMENTS entries."""
    return max(1, BLOCK_ELEMENTS // max(n_cols, 1))


def manifold_radii(features, k: int = PR_K):
    """The squared distance of each row to its k-th nearest other row (the row itself sits at 0, index 0)."""
    import torch

    step = _block_rows(len(features))
    return torch.cat([_squared_distances(features[s:s + step], features).kthvalue(k + 1, dim=1).values
                      for s in range(0, len(features), step)])


def _covered(queries, points, radii):
    """Per query: does it lie within the radius of some point?"""
    import torch

    step = _block_rows(len(points))
    return torch.cat([(_squared_distances(queries[s:s + step], points) <= radii[None, :]).any(1)
                      for s in range(0, len(queries), step)])


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = PR_K, device="cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) as ADM's evaluator computes them."""
    import torch

    for name, rows in (("reference", real), ("generated", generated)):
        if len(rows) < k + 1:
            raise UserError(f"precision/recall with k = {k} need at least {k + 1} {name} images, got {len(rows)}")
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64, device=device)
    g = torch.as_tensor(np.asarray(generated), dtype=torch.float64, device=device)
    precision = _covered(g, r, manifold_radii(r, k)).double().mean()
    recall = _covered(r, g, manifold_radii(g, k)).double().mean()
    return float(precision), float(recall)


def class_fid(generated: dict, reference: dict, num_classes: int) -> tuple[float, list[dict]]:
    """Mean over classes of the FID between the generated and the reference rows of each class, and the
    per-class values with their N."""
    per_class = []
    for c in range(num_classes):
        a = generated["class_features"][generated["class_labels"] == c].astype(np.float64)
        b = reference["class_features"][reference["class_labels"] == c].astype(np.float64)
        per_class.append({"class": c, "class_fid": fid.frechet_distance_of_rows(a, b), "n_generated": len(a),
                          "n_reference": len(b)})
    return float(np.mean([r["class_fid"] for r in per_class])), per_class


def check_class_counts(counts: np.ndarray, side: str, cap: int) -> None:
    """Class FID needs at least two images of every class on both sides (a covariance of one image is undefined)."""
    for c, n in enumerate(np.asarray(counts)):
        if min(int(n), cap) < 2:
            raise UserError(f"class_fid: class {c} has {int(n)} {side} images, needs at least 2")
