"""What stage 1 and stage 3 share: load the split, train with the shared loop, save, and reload a classifier."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dpt_repro import distributed
from dpt_repro.config import ClassifierConfig, Config, paths
from dpt_repro.data.shards import load_split, select
from dpt_repro.errors import UserError
from dpt_repro.io import atomic_dir, atomic_path, corrupt_input, load_weights, read_json, save_weights, write_json
from dpt_repro.runtime import setup
from dpt_repro.stages.split import read_split
from dpt_repro.ssl.train import ClassifierData, TrainResult, build_classifier, fingerprint, train_classifier
from dpt_repro.ssl.train import validate_batch_sizes


def real_data(cfg: Config) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train images, their labels (hidden from training except at labelled indices) and the split."""
    p = paths(cfg)
    images, labels = load_split(p.prepared, "train")
    split = read_split(cfg)
    if len(split["labelled"]) and max(split["labelled"] + split["validation"]) >= len(images):
        raise UserError(f"split {p.split} indexes past the {len(images)} prepared train images; rerun split")
    return images, labels, split


def classifier_data(images: np.ndarray, labels: np.ndarray, split: dict, generated_x: np.ndarray | None = None,
                    generated_y: np.ndarray | None = None, generated_share: float = -1.0) -> ClassifierData:
    """Labelled: the split's labelled images (+ generated ones, after them); unlabelled: train minus validation."""
    lab = np.asarray(split["labelled"], np.int64)
    val = np.asarray(split["validation"], np.int64)
    unlabelled = np.setdiff1d(np.arange(len(images)), val)
    lx, ly = images[lab], labels[lab]
    n_generated = 0 if generated_x is None else len(generated_x)
    if n_generated:
        lx, ly = np.concatenate([lx, generated_x]), np.concatenate([ly, generated_y])
    return ClassifierData(lx, ly, images[unlabelled], images[val], labels[val], n_generated, generated_share)


def probe_data(cfg: Config, generated_x: np.ndarray | None = None,
               generated_y: np.ndarray | None = None) -> ClassifierData:
    """The labelled (+ generated) and validation images alone, for the probe protocol, which needs no
    unlabelled images; read shard by shard, since an ImageNet train split does not fit in memory."""
    split = read_split(cfg)
    lab, val = split["labelled"], split["validation"]
    x, y = select(paths(cfg).prepared, "train", np.asarray(lab + val, np.int64))
    lx, ly = x[:len(lab)], y[:len(lab)]
    n_generated = 0 if generated_x is None else len(generated_x)
    if n_generated:
        lx, ly = np.concatenate([lx, generated_x]), np.concatenate([ly, generated_y])
    return ClassifierData(lx, ly, x[:0], x[len(lab):], y[len(lab):], n_generated)


def fit_probe_and_save(cfg: Config, section: str, encoder, classifier: dict, data: ClassifierData, out_dir: Path,
                       record: dict) -> dict:
    """A frozen encoder and a logistic-regression head fitted on `data`'s labelled images (the L2 weight chosen
    on validation), saved as an ordinary classifier; DPT's ImageNet protocol for stages 1 and 3."""
    from dpt_repro.ssl.probe import fit_probe

    device = setup(cfg.base)
    state, fit = fit_probe(encoder.to(device), data, cfg.base.num_classes, getattr(cfg, section).eval_batch_size,
                           device)
    save_classifier(out_dir, state, classifier, cfg, data, {
        "section": section, **record, "protocol": "probe", "best_val_acc": fit["val_acc"], "l2": fit["l2"],
        "selection": "L2 weight by validation accuracy"}, {"l2_curve": fit["l2_curve"]})
    for name, fields in (("train_curve", ["step", "loss"]), ("val_curve", ["step", "val_acc"])):
        write_csv(paths(cfg).plots / section / f"{name}.csv", [], fields=fields)  # no training steps: empty curves
    return {"val_acc": fit["val_acc"], "probe_l2": fit["l2"]}


def train_and_save(cfg: Config, section: str, data: ClassifierData, stream: int, out_dir: Path, run) -> TrainResult:
    c: ClassifierConfig = getattr(cfg, section)
    validate_batch_sizes(c, data, section)
    fp = fingerprint(c, cfg.base.seed, stream, data)
    ckpt = Path("checkpoints") / section / cfg.run_key / f"{fp}.pt"
    device = setup(cfg.base)
    result = train_classifier(c, data, num_classes=cfg.base.num_classes, seed=cfg.base.seed, stream=stream,
                              device=device, checkpoint=ckpt, description=section,
                              on_log=lambda step, row: run.metrics(row, step=step))
    if not distributed.is_main():
        return result
    save_classifier(out_dir, result.state_dict, asdict(c), cfg, data, {
        "section": section, "weights": "ema", "selection": "best validation accuracy of the EMA weights",
        "best_step": result.best_step, "best_val_acc": result.best_val_acc, "fingerprint": fp,
        "unlabelled_images": int(len(data.unlabelled_x))}, {"train_curve": result.curve, "val_curve": result.val_curve})
    for name, rows in (("train_curve", result.curve), ("val_curve", result.val_curve)):
        write_csv(paths(cfg).plots / section / f"{name}.csv", rows)
    ckpt.unlink(missing_ok=True)
    return result


def save_classifier(out_dir: Path, state_dict: dict, classifier: dict, cfg: Config, data: ClassifierData,
                    record: dict, curves: dict[str, list[dict]]) -> None:
    """Weights, the config that rebuilds the network (`load_classifier`) and the record of how it was made."""
    with atomic_dir(out_dir) as tmp:
        save_weights(tmp / "model.safetensors", state_dict)
        write_json(tmp / "config.json", {
            "classifier": classifier, "channels": int(data.labelled_x.shape[3]),
            "image_size": int(data.labelled_x.shape[1]), "num_classes": cfg.base.num_classes,
            "labelled_images": int(len(data.labelled_x)), **record})
        for name, rows in curves.items():
            write_csv(tmp / f"{name}.csv", rows)


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    keys: list[str] = list(fields or [])
    for row in rows:
        keys += [k for k in row if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def load_classifier(model_dir: Path, what: str):
    """Rebuild a saved classifier from its config.json and safetensors weights."""
    conf = read_json(Path(model_dir) / "config.json", f"{what} config",
                     ("classifier", "channels", "num_classes", "image_size"))
    known = {f.name for f in dataclasses.fields(ClassifierConfig)}  # stage 3's record also holds its mix
    if not isinstance(conf["classifier"], dict):
        raise corrupt_input(Path(model_dir) / "config.json", f"{what} config", "has no classifier mapping")
    c = ClassifierConfig(**{k: v for k, v in conf["classifier"].items() if k in known})
    c = dataclasses.replace(c, pretrained=False, weights="")  # the saved weights replace any pretrained ones
    model = build_classifier(c, conf["channels"], conf["num_classes"], conf["image_size"])
    try:
        model.load_state_dict(load_weights(Path(model_dir) / "model.safetensors", f"{what} weights"))
    except RuntimeError as exc:
        raise UserError(f"{what} weights in {model_dir} do not match its config ({str(exc).splitlines()[0]})") from None
    return model.eval(), conf

