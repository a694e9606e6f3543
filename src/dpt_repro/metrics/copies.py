"""Are generated images copies of the labelled images? Nearest-neighbour distances in pixel space.

A generator trained on a handful of labelled images can learn to reproduce them. Its samples then look real and
may score a good FID while adding nothing that the labelled images themselves do not. The test here: how close
each generated image comes to its nearest labelled image, against how close an unseen real image comes.
"""

from __future__ import annotations

import numpy as np

NEAR_COPY_QUANTILE = 0.01  # a near-copy is closer to a labelled image than 99 % of unseen real images are


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def nearest(queries: np.ndarray, keys: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance (pixels scaled to [0, 1]) from each query image to its nearest key image, and that key's
    index, computed in batches of queries as |q|^2 - 2 q.k + |k|^2."""
    k = _flat(keys)
    kk = (k * k).sum(1)
    dist, index = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]  # no queries (an empty shard): empty results
    for start in range(0, len(queries), batch):
        q = _flat(queries[start:start + batch])
        d2 = (q * q).sum(1)[:, None] - 2.0 * q @ k.T + kk[None, :]
        best = d2.argmin(1)
        index.append(best)
        dist.append(np.sqrt(np.maximum(d2[np.arange(len(q)), best], 0.0)))
    return np.concatenate(dist), np.concatenate(index)


def copy_statistics(generated: np.ndarray, labelled: np.ndarray, unseen: np.ndarray,
                    quantile: float = NEAR_COPY_QUANTILE) -> dict[str, float]:
    """Median nearest-labelled distance of generated and of unseen real images; the share of generated images
    closer to a labelled image than all but `quantile` of the unseen real ones (near-copies); and how many
    distinct labelled images the generated ones sit nearest to."""
    d_gen, nn = nearest(generated, labelled)
    d_real, _ = nearest(unseen, labelled)
    return summarise(d_gen, nn, d_real, len(labelled), quantile)


def summarise(d_gen: np.ndarray, nn: np.ndarray, d_real: np.ndarray, n_labelled: int,
              quantile: float = NEAR_COPY_QUANTILE) -> dict[str, float]:
    """`copy_statistics` from the `nearest` distances, for sets read in parts (one generated shard at a time)."""
    cut = float(np.quantile(d_real, quantile))
    return {"median_generated": float(np.median(d_gen)), "median_unseen_real": float(np.median(d_real)),
            "near_copy_share": float((d_gen < cut).mean()), "near_copy_cut": cut,
            "labelled_images_nearest": int(len(np.unique(nn))), "labelled_images": int(n_labelled)}
