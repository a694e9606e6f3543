import numpy as np

from dpt_repro.metrics.copies import copy_statistics, nearest


def test_nearest_matches_brute_force_across_batches():
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 256, (37, 6, 6, 1), dtype=np.uint8)
    keys = rng.integers(0, 256, (11, 6, 6, 1), dtype=np.uint8)
    dist, index = nearest(queries, keys, batch=8)
    brute = np.linalg.norm(queries.reshape(37, 1, -1) / 255.0 - keys.reshape(1, 11, -1) / 255.0, axis=-1)
    assert np.array_equal(index, brute.argmin(1))
    assert np.allclose(dist, brute.min(1), atol=1e-4)
    empty_dist, empty_index = nearest(queries[:0], keys)
    assert empty_dist.shape == empty_index.shape == (0,)


def test_copies_of_the_labelled_images_are_told_apart_from_new_images():
    rng = np.random.default_rng(1)
    labelled = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    unseen = rng.integers(0, 256, (200, 8, 8, 1), dtype=np.uint8)
    noise = rng.integers(-3, 4, (100, 8, 8, 1))
    copies = np.clip(labelled[rng.integers(0, 5, 100)].astype(int) + noise, 0, 255).astype(np.uint8)
    fresh = rng.integers(0, 256, (100, 8, 8, 1), dtype=np.uint8)
    copied = copy_statistics(copies, labelled, unseen)
    new = copy_statistics(fresh, labelled, unseen)
    assert copied["near_copy_share"] == 1.0 and new["near_copy_share"] < 0.05
    assert copied["median_generated"] < 0.1 * copied["median_unseen_real"]
    assert copied["labelled_images_nearest"] == 5 and copied["labelled_images"] == 5
