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
