"""Fault injection: each gate passes good data and fails crafted bad data, naming the check, the observed value
and the threshold."""

import numpy as np
import pandas as pd
import pytest

from dpt_repro.config import GatesConfig
from dpt_repro.gates import suites
from dpt_repro.gates.core import run_gate, summary_lines
from dpt_repro.io import array_digest

K = 10
SHAPE = (8, 8, 1)


def run(name, built):
    tables, checks = built
    return run_gate(name, tables, checks)


def failed(report):
    return {c["expectation"] for c in report["checks"] if not c["success"]}


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


# prepared -----------------------------------------------------------------------------------------------------

def prepared_inputs(n=200):
    x, y = images(n), np.arange(n) % K
    entry = {"count": n, "sha256": array_digest(x, y), "class_counts": np.bincount(y, minlength=K).tolist()}
    return {"train": [(x, y)]}, {"splits": {"train": entry}}


def test_prepared_gate_passes_good_shards_and_catches_tampering():
    splits, manifest = prepared_inputs()
    assert run("prepared", suites.prepared(splits, manifest, K, SHAPE))["success"]
    x, y = splits["train"][0]
    x2 = x.copy()
    x2[3, 0, 0, 0] ^= 1
    report = run("prepared", suites.prepared({"train": [(x2[:150], y[:150]), (x2[150:], y[150:])]}, manifest, K,
                                             SHAPE))  # in two shards, as the gate reads them
    assert failed(report) == {"train_checksum_matches_manifest"}


def test_prepared_gate_catches_float_nan_and_out_of_range_images_and_a_missing_class():
    splits, manifest = prepared_inputs()
    x, y = splits["train"][0]
    bad = x.astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    bad[1, 0, 0, 0] = 300.0
    y2 = np.where(y == 4, 5, y)
    report = run("prepared", suites.prepared({"train": [(bad, y2)]}, manifest, K, SHAPE))
    assert {"train_dtype_is_uint8", "expect_column_values_to_be_between",
            "expect_column_distinct_values_to_equal_set", "train_class_counts_match_manifest"} <= failed(report)
    between = [c for c in report["checks"] if c["expectation"] == "expect_column_values_to_be_between"
               and not c["success"]]
    assert {c["expected"]["column"] for c in between} == {"pixel_max", "nan_count"}


# split --------------------------------------------------------------------------------------------------------

def split_inputs():
    y = np.arange(300) % K
    labelled = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(K)])
    validation = np.concatenate([np.flatnonzero(y == c)[2:5] for c in range(K)])
    return labelled, validation, y, images(300), images(50, seed=9)


def test_split_gate_passes_a_good_split():
    lab, val, y, x, test = split_inputs()
    assert run("split", suites.split(lab, val, y, x.__getitem__, [test], K, 2, 3))["success"]


def test_split_gate_catches_overlap_wrong_counts_bad_indices_and_test_leakage():
    lab, val, y, x, test = split_inputs()
    overlapping = val.copy()
    overlapping[0] = lab[0]
    report = run("split", suites.split(lab, overlapping, y, x.__getitem__, [test], K, 2, 3))
    assert "expect_column_values_to_be_unique" in failed(report)
    report = run("split", suites.split(lab[:-1], val, y, x.__getitem__, [test], K, 2, 3))
    bad_count = next(c for c in report["checks"] if c["table"] == "per_class" and not c["success"])
    assert bad_count["expected"] == {"column": "labelled", "min_value": 2, "max_value": 2}
    report = run("split", suites.split(np.append(lab[:-1], 999), val, y, x.__getitem__, [test], K, 2, 3))
    assert not report["success"]
    leaky_test = np.concatenate([test, x[lab[:1]]])
    report = run("split", suites.split(lab, val, y, x.__getitem__, [leaky_test], K, 2, 3))
    assert failed(report) == {"no_labelled_or_validation_image_in_test"}


# pseudo-labels ------------------------------------------------------------------------------------------------

PRIOR = np.full(K, 1 / K)
LABELLED = np.arange(0, 100, 10)


def pseudo_table(pseudo, confidence=None):
    n = len(pseudo)
    conf = np.full(n, 0.8, np.float32) if confidence is None else confidence
    return pd.DataFrame({"index": np.arange(n), "pseudo_label": pseudo, "confidence": conf})


def run_pseudo(t, gates=GatesConfig(), labelled_true=None):
    truth = t["pseudo_label"].to_numpy()[LABELLED] if labelled_true is None else labelled_true
    return run("pseudo_labels", suites.pseudo_labels(t, K, PRIOR, gates, LABELLED, truth))


def good_labels(n=2000):
    return np.random.default_rng(0).integers(0, K, n)


def test_good_pseudo_labels_pass():
    report = run_pseudo(pseudo_table(good_labels()))
    assert report["success"], summary_lines(report)


def test_a_collapsed_classifier_fails_with_the_observed_value_and_threshold():
    report = run_pseudo(pseudo_table(np.zeros(2000, np.int64)))
    assert {"expect_column_distinct_values_to_equal_set", "expect_column_kl_divergence_to_be_less_than"} <= failed(report)
    kl = next(c for c in report["checks"] if c["expectation"].endswith("kl_divergence_to_be_less_than"))
    assert kl["observed"] == pytest.approx(np.log(K), rel=1e-6)
    line = next(x for x in summary_lines(report) if "kl_divergence" in x)
    assert line.startswith("FAIL") and "observed 2.302" in line and "'threshold': 0.25" in line


def test_a_skewed_distribution_fails_kl_and_share():
    y = good_labels()
    y[: int(0.6 * len(y))] = 3
    assert failed(run_pseudo(pseudo_table(y))) == {"expect_column_kl_divergence_to_be_less_than",
                                                   "expect_column_values_to_be_between"}


def test_bad_confidences_wrong_classes_and_disagreement_fail():
    y = good_labels()
    conf = np.full(len(y), 0.5, np.float32)
    conf[7] = 1.5
    assert "expect_column_values_to_be_between" in failed(run_pseudo(pseudo_table(y, conf)))
    assert "expect_column_mean_to_be_between" in failed(run_pseudo(pseudo_table(y, np.full(len(y), 0.2))))
    y2 = y.copy()
    y2[5] = 12
    assert "expect_column_values_to_be_in_set" in failed(run_pseudo(pseudo_table(y2)))
    wrong = (y[LABELLED] + 1) % K
    assert failed(run_pseudo(pseudo_table(y), labelled_true=wrong)) == {"labelled_agreement_at_least"}


# generated ----------------------------------------------------------------------------------------------------

def generated_inputs(per_class=6):
    labels = np.repeat(np.arange(K), per_class)
    return images(len(labels), seed=3), labels


def test_generated_gate_passes_good_images():
    x, y = generated_inputs()
    assert run("generated", suites.generated(x, y, y.copy(), K, 6, SHAPE, GatesConfig()))["success"]


def test_generated_gate_catches_counts_duplicates_nan_and_images_unlike_their_class():
    x, y = generated_inputs()
    report = run("generated", suites.generated(x[:-1], y[:-1], y[:-1], K, 6, SHAPE, GatesConfig()))
    per_class = next(c for c in report["checks"] if c["table"] == "per_class")
    assert not per_class["success"] and per_class["expected"]["min_value"] == 6
    dup = x.copy()
    dup[1] = dup[0]
    assert failed(run("generated", suites.generated(dup, y, y, K, 6, SHAPE, GatesConfig()))) == {
        "expect_column_values_to_be_unique"}
    nan = x.astype(np.float32)
    nan[2, 1, 1, 0] = np.nan
    assert {"generated_dtype_is_uint8", "expect_column_values_to_be_between"} <= failed(
        run("generated", suites.generated(nan, y, y, K, 6, SHAPE, GatesConfig())))
    unlike = (y + 1) % K
    report = run("generated", suites.generated(x, y, unlike, K, 6, SHAPE, GatesConfig()))
    assert failed(report) == {"expect_column_mean_to_be_between"}


def test_mix_gate_checks_the_configured_share():
    assert run("mix", suites.mix(10, 2000, 1, 200, K, 0.001))["success"]
    report = run("mix", suites.mix(10, 1000, 1, 200, K, 0.001))
    assert failed(report) == {"expect_table_row_count_to_equal", "expect_column_mean_to_be_between"}
    share = next(c for c in report["checks"] if c["expectation"] == "expect_column_mean_to_be_between")
    assert share["observed"] == pytest.approx(1000 / 1010)


def test_data_docs_are_written(tmp_path):
    x, y = generated_inputs()
    tables, checks = suites.generated(x, y, y, K, 6, SHAPE, GatesConfig())
    report = run_gate("generated", tables, checks, docs_dir=tmp_path / "docs")
    assert report["success"] and (tmp_path / "docs" / "index.html").is_file()
