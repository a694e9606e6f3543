"""A failed pseudo-label or generated-image check says what to do next; docs/troubleshooting.md is that text."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from dpt_repro.cli import app
from dpt_repro.config import GatesConfig
from dpt_repro.gates import advice, suites
from dpt_repro.gates.core import run_gate

ROOT = Path(__file__).resolve().parents[1]
K = 10


def test_the_troubleshooting_page_is_generated_from_the_advice():
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert page == advice.troubleshooting_markdown(), \
        "docs/troubleshooting.md is stale: python -m dpt_repro.gates.advice docs/troubleshooting.md"
    for gate in ("pseudo_labels", "generated"):
        for item in advice.ADVICE[gate]:
            assert f"### {item.title}" in page


def failed_checks(report: dict) -> list[dict]:
    return [c for c in report["checks"] if not c["success"]]


def test_every_check_of_the_two_gates_has_its_advice():
    """Each expectation and check the suites build finds an entry (most of them failed here, on crafted data)."""
    n = 2000
    broken = pd.DataFrame({"index": np.arange(n), "pseudo_label": np.r_[np.full(n - 1, 3), 12],
                           "confidence": np.r_[np.full(n - 1, 0.1), 1.5].astype(np.float32)})
    report = run_gate("pseudo_labels", *suites.pseudo_labels(broken, K, np.full(K, 0.1), GatesConfig(),
                                                             np.arange(0, 100, 10), np.arange(K)))
    images = np.zeros((K * 6 - 1, 8, 8, 1), np.float32)
    images[0, 0, 0, 0] = np.nan
    labels = np.repeat(np.arange(K), 6)[1:]
    generated = run_gate("generated", *suites.generated(images, labels, (labels + 1) % K, K, 6, (8, 8, 1),
                                                        GatesConfig()))
    for gate, rep in (("pseudo_labels", report), ("generated", generated)):
        missing = [advice.check_id(c) for c in rep["checks"] if advice.advice_for(gate, c) is None]
        assert not missing, f"{gate}: no advice for {missing}"
        assert len(failed_checks(rep)) >= 5


def test_the_override_values_let_the_observed_values_through():
    kl = {"table": "table", "expectation": "expect_column_kl_divergence_to_be_less_than", "observed": 0.495,
          "expected": {"column": "pseudo_label", "threshold": 0.25}, "success": False}
    item = advice.advice_for("pseudo_labels", kl)
    assert advice.override_values(item, kl) == [("pseudo_max_kl", 0.5)]
    kl["observed"] = 0.5
    assert advice.override_values(item, kl) == [("pseudo_max_kl", 0.51)]  # the check is strict
    shares = {"table": "class_shares", "expectation": "expect_column_values_to_be_between", "observed": "2 unexpected",
              "unexpected": [0.00024, 0.61], "expected": {"column": "share", "min_value": 0.001, "max_value": 0.5},
              "success": False}
    assert advice.override_values(advice.advice_for("pseudo_labels", shares), shares) == [
        ("pseudo_min_share", 0.00024), ("pseudo_max_share", 0.62)]


def write_failing_pseudo_labels(root: Path) -> None:
    """A stage 1 that put most images in class 0: the KL and share checks fail, the rest pass."""
    rng = np.random.default_rng(0)
    n = 1000
    pseudo = np.where(rng.random(n) < 0.6, 0, rng.integers(0, K, n))
    labelled = np.arange(K) * 10
    pseudo[labelled] = np.arange(K)  # one labelled image per class, pseudo-labelled right
    true = pseudo.copy()
    table = root / "data" / "pseudo_labels" / "lpc1-seed0" / "pseudo_labels.parquet"
    table.parent.mkdir(parents=True)
    pd.DataFrame({"index": np.arange(n), "pseudo_label": pseudo, "confidence": np.full(n, 0.9, np.float32),
                  "true_label": true}).to_parquet(table)
    split = root / "data" / "splits" / "lpc1-seed0" / "split.json"
    split.parent.mkdir(parents=True)
    split.write_text('{"labelled": %s, "validation": []}' % labelled.tolist())


def test_a_failing_gate_prints_the_next_steps_and_the_override_that_lets_it_through(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_failing_pseudo_labels(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "pseudo_labels"])
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert "gate pseudo_labels failed" in err and "What to do next:" in err
    assert "* The pseudo-labels' class shares are far from the labelled set's prior (KL divergence)" in err
    assert "-S base.labels_per_class=2" in err and "-S stage1.steps=3000" in err
    assert "-S stage1.algorithm=fixmatch" in err
    assert f"Data Docs: {(tmp_path / 'reports' / 'gates' / 'pseudo_labels').resolve().as_uri()}/index.html" in err
    assert (tmp_path / "reports" / "gates" / "pseudo_labels" / "index.html").is_file()
    assert "Traceback" not in result.output
    overrides = re.findall(r"`-S (gates\.\w+=[0-9.e-]+)`", err)
    assert {o.split("=")[0] for o in overrides} == {"gates.pseudo_max_kl", "gates.pseudo_max_share"}
    let_through = runner.invoke(app, ["validate", "pseudo_labels", *[a for o in overrides for a in ("-S", o)]])
    assert let_through.exit_code == 0, let_through.stderr
    assert (tmp_path / "metrics" / "gates" / "pseudo_labels.passed").is_file()
