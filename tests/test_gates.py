import numpy as np
import pandas as pd
import pytest

from dpt_repro.config import GatesConfig
from dpt_repro.gates.pseudo_labels import summary_lines, validate_pseudo_labels

K = 10
PRIOR = np.full(K, 1 / K)
LABELLED = np.arange(0, 100, 10)


def table(pseudo, confidence=None):
    n = len(pseudo)
    conf = np.full(n, 0.8, np.float32) if confidence is None else confidence
    return pd.DataFrame({"index": np.arange(n), "pseudo_label": pseudo, "confidence": conf})


def run(t, gates=GatesConfig(), labelled_true=None):
    truth = t["pseudo_label"].to_numpy()[LABELLED] if labelled_true is None else labelled_true
    return validate_pseudo_labels(t, K, PRIOR, gates, LABELLED, truth)


def failed(report):
    return {c["expectation"] for c in report["checks"] if not c["success"]}


def good_labels(n=2000):
    return np.random.default_rng(0).integers(0, K, n)


def test_good_table_passes():
    report = run(table(good_labels()))
    assert report["success"], summary_lines(report)


def test_collapsed_classifier_fails_on_missing_classes_and_kl():
    report = run(table(np.zeros(2000, np.int64)))
    assert not report["success"]
    assert {"expect_column_distinct_values_to_equal_set", "expect_column_kl_divergence_to_be_less_than"} <= failed(report)
    kl = next(c for c in report["checks"] if c["expectation"].endswith("kl_divergence_to_be_less_than"))
    assert kl["observed"] == pytest.approx(np.log(K), rel=1e-6)
    assert any("FAIL" in line and "threshold" in line for line in summary_lines(report))


def test_skewed_distribution_fails_kl_only():
    y = good_labels()
    y[: int(0.6 * len(y))] = 3
    assert failed(run(table(y))) == {"expect_column_kl_divergence_to_be_less_than"}


def test_confidence_out_of_range_and_wrong_classes_fail():
    y = good_labels()
    conf = np.full(len(y), 0.5, np.float32)
    conf[7] = 1.5
    assert "expect_column_values_to_be_between" in failed(run(table(y, conf)))
    y2 = y.copy()
    y2[5] = 12
    assert "expect_column_values_to_be_in_set" in failed(run(table(y2)))


def test_disagreement_with_labelled_images_fails():
    y = good_labels()
    wrong = (y[LABELLED] + 1) % K
    assert failed(run(table(y), labelled_true=wrong)) == {"labelled_agreement_at_least"}
