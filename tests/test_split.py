import numpy as np
import pytest

from dpt_repro.errors import UserError
from dpt_repro.stages.split import draw_split


def labels(n_per=50, k=10):
    return np.repeat(np.arange(k), n_per)[np.random.default_rng(1).permutation(n_per * k)]


def test_split_is_deterministic_exact_and_disjoint():
    y = labels()
    lab, val = draw_split(y, 10, 2, 5, seed=3)
    lab2, val2 = draw_split(y, 10, 2, 5, seed=3)
    assert np.array_equal(lab, lab2) and np.array_equal(val, val2)
    assert np.array_equal(np.bincount(y[lab], minlength=10), np.full(10, 2))
    assert np.array_equal(np.bincount(y[val], minlength=10), np.full(10, 5))
    assert not set(lab) & set(val)
    other, _ = draw_split(y, 10, 2, 5, seed=4)
    assert not np.array_equal(lab, other)


def test_split_is_nested_across_labels_per_class_with_a_fixed_validation_split():
    y = labels()
    lab1, val1 = draw_split(y, 10, 1, 5, seed=0)
    lab5, val5 = draw_split(y, 10, 5, 5, seed=0)
    assert set(lab1) <= set(lab5)
    assert np.array_equal(val1, val5)


def test_too_many_labels_is_refused_with_the_values():
    with pytest.raises(UserError, match="labels_per_class 48 plus base.val_per_class 5 is above what class 0 has"):
        draw_split(labels(), 10, 48, 5, seed=0)


def test_a_validation_split_that_eats_the_unlabelled_images_is_refused_with_the_value_to_use():
    y = labels(n_per=180)  # sklearn digits' size: about 180 images per class, 144 after a 20 % test split
    y = y[~((y == 3) & (np.cumsum(y == 3) > 139))]  # class 3 keeps 139
    with pytest.raises(UserError) as err:
        draw_split(y, 10, 1, 100, seed=0)
    assert str(err.value) == ("base.val_per_class 100 leaves class 3 38 of its 139 train images outside the labels and "
                              "the validation split, fewer than it validates on: use base.val_per_class: 13 (10 % of "
                              "the smallest class, 139 images; at most 69 passes)")
    for val in (13, 69):
        lab, vals = draw_split(y, 10, 1, val, seed=0)
        assert len(vals) == 10 * val and len(lab) == 10
    with pytest.raises(UserError, match="base.val_per_class 70 leaves class 3 68 of"):
        draw_split(y, 10, 1, 70, seed=0)
    draw_split(labels(n_per=6000, k=2), 2, 1, 100, seed=0)  # Fashion-MNIST's size keeps the default
