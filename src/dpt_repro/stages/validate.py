"""validate GATE: run one data-quality gate on what a stage hands to the next; a failure stops `dvc repro`.

Writes `metrics/gates/<gate>.json` (a DVC metric) and GX Data Docs under `reports/gates/<gate>/`, and logs
both to MLflow. Thresholds live in the `gates` section of params.yaml. A pass also writes the marker
`metrics/gates/<gate>.passed`, which the next stage depends on: its content never changes, so editing a threshold
re-runs the gate but not the expensive stage behind it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dpt_repro import tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import generated_count, iter_split, load_generated, load_manifest, select, split_labels
from dpt_repro.errors import GateFailed, UserError
from dpt_repro.gates import advice, suites
from dpt_repro.gates.core import run_gate, summary_lines
from dpt_repro.stages.split import read_split
from dpt_repro.io import atomic_dir, atomic_path, read_parquet, require_inputs, write_json

log = logging.getLogger("dpt_repro")


def _shape(cfg: Config) -> tuple[int, int, int]:
    return (cfg.base.image_size, cfg.base.image_size, cfg.base.channels)


def _prepared(cfg: Config):
    p = paths(cfg)
    splits = {name: iter_split(p.prepared, name) for name in ("train", "test")}  # shard by shard
    return suites.prepared(splits, load_manifest(p.prepared), cfg.base.num_classes, _shape(cfg))


def _split(cfg: Config):
    p = paths(cfg)
    train_y = split_labels(p.prepared, "train")
    split = read_split(cfg)
    return suites.split(np.asarray(split["labelled"], np.int64), np.asarray(split["validation"], np.int64), train_y,
                        lambda idx: select(p.prepared, "train", idx)[0],
                        (x for x, _ in iter_split(p.prepared, "test")), cfg.base.num_classes,
                        cfg.base.labels_per_class, cfg.base.val_per_class)


def _pseudo_labels(cfg: Config):
    p = paths(cfg)
    table = read_parquet(p.pseudo_labels, "pseudo-labels")
    split = read_split(cfg)
    labelled = np.asarray(split["labelled"], np.int64)
    true_labelled = table.set_index("index")["true_label"].reindex(labelled)
    if true_labelled.isna().any():
        raise UserError(f"pseudo-labels {p.pseudo_labels} lack labelled images of split {p.split}; rerun pseudo-label")
    true_labelled = true_labelled.to_numpy().astype(np.int64)
    prior = np.bincount(true_labelled, minlength=cfg.base.num_classes) / len(labelled)
    return suites.pseudo_labels(table[["index", "pseudo_label", "confidence"]], cfg.base.num_classes, prior,
                                cfg.gates, labelled, true_labelled)


def _generated(cfg: Config):
    from dpt_repro.runtime import setup
    from dpt_repro.ssl.train import predict_proba
    from dpt_repro.stages.classifier import load_classifier

    p = paths(cfg)
    images, labels = load_generated(p.generated)
    device = setup(cfg.base)
    model, _ = load_classifier(p.stage1, "stage-1 classifier")
    predicted = np.zeros(len(labels), np.int64)
    if images.dtype == np.uint8 and images.shape[1:] == _shape(cfg):
        predicted = predict_proba(model.to(device), images, cfg.pseudo.batch_size, device).argmax(1)
    return suites.generated(images, labels, predicted, cfg.base.num_classes, cfg.sample.images_per_class,
                            _shape(cfg), cfg.gates)


def _mix(cfg: Config):
    p = paths(cfg)
    split = read_split(cfg)
    cap = cfg.stage3.generated_per_class
    used = min(cap, cfg.sample.images_per_class) if cap else cfg.sample.images_per_class
    n_generated = generated_count(p.generated, cap)  # exactly what stage 3 reads
    return suites.mix(len(split["labelled"]), n_generated, cfg.base.labels_per_class, used,
                      cfg.base.num_classes, cfg.gates.mix_tolerance)


BUILDERS = {"prepared": _prepared, "split": _split, "pseudo_labels": _pseudo_labels, "generated": _generated,
            "mix": _mix}
INPUTS = {"prepared": ("prepared",), "split": ("prepared", "split"), "pseudo_labels": ("pseudo_labels", "split"),
          "generated": ("generated", "stage1"), "mix": ("split", "generated")}


def run(cfg: Config, params_file: Path, gate: str = "pseudo_labels") -> dict:
    if gate not in BUILDERS:
        raise UserError(f"unknown gate {gate!r} (valid: {', '.join(BUILDERS)})")
    p = paths(cfg)
    require_inputs(*(getattr(p, name) for name in INPUTS[gate]))
    tables, checks = BUILDERS[gate](cfg)
    docs = p.gate_docs / gate
    with atomic_dir(docs) as tmp:
        report = run_gate(gate, tables, checks, docs_dir=tmp, extra={"run_key": cfg.run_key})
    write_json(p.gates / f"{gate}.json", report)
    marker = p.gates / f"{gate}.passed"
    marker.unlink(missing_ok=True)
    lines = summary_lines(report)
    for line in lines:
        log.info("gate %s: %s", gate, line)
    with tracking.stage_run(cfg, f"gate_{gate}", ("gates",), params_file) as run:
        run.metrics({f"gate_{gate}_passed": float(report["success"]),
                     f"gate_{gate}_failed_checks": float(sum(not c["success"] for c in report["checks"]))})
        run.datasets(**{name: getattr(p, name) for name in INPUTS[gate]})
        run.dict(report, f"gate_{gate}.json")
        run.artifacts(docs, f"data_docs_{gate}")
        if not report["success"]:  # raised inside the run, so MLflow marks the gate's run FAILED
            failed = [line for line in lines if line.startswith("FAIL")]
            message = f"gate {gate} failed ({len(failed)} of {len(lines)} checks):\n  " + "\n  ".join(failed)
            if gate in advice.ADVICE:
                values = advice.context(cfg.base, cfg.stage1, cfg.stage2, cfg.sample)
                message += "\n" + "\n".join(advice.next_steps(gate, report, values, docs))
            raise GateFailed(message)
    with atomic_path(marker) as tmp:
        tmp.write_text("passed\n")
    return report
