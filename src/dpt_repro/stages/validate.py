"""validate: the Great Expectations gate on the pseudo-label table; a failure stops `dvc repro`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.errors import GateFailed, UserError
from dpt_repro.gates.pseudo_labels import summary_lines, validate_pseudo_labels
from dpt_repro.io import read_json, write_json

log = logging.getLogger("dpt_repro")


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    if not p.pseudo_labels.is_file():
        raise UserError(f"missing input: pseudo-labels ({p.pseudo_labels}); run pseudo-label first")
    table = pd.read_parquet(p.pseudo_labels)
    split = read_json(p.split, f"split for {cfg.run_key}")
    labelled = np.asarray(split["labelled"], np.int64)
    true_labelled = table.set_index("index")["true_label"].loc[labelled].to_numpy()
    prior = np.bincount(true_labelled, minlength=cfg.base.num_classes) / len(labelled)
    report = validate_pseudo_labels(table[["index", "pseudo_label", "confidence"]], cfg.base.num_classes, prior,
                                    cfg.gates, labelled, true_labelled)
    write_json(p.gate_pseudo, report)
    lines = summary_lines(report)
    for line in lines:
        log.info("gate pseudo_labels: %s", line)
    with tracking.stage_run(cfg, "validate", ("gates",), params_file) as run:
        run.metrics({"gate_pseudo_labels_passed": float(report["success"])})
        run.dict(report, "gate_pseudo_labels.json")
    if not report["success"]:
        failed = [line for line in lines if line.startswith("FAIL")]
        raise GateFailed("gate pseudo_labels failed:\n  " + "\n  ".join(failed))
    return report
