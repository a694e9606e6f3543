"""stage3: the classifier retrained from scratch on real labelled + generated images (labelled with the class
they were generated for) and the real unlabelled images (the official CIFAR-10 protocol).

`stage3.generated_share` sets the generated images' share of each labelled batch (-1: as in the pool);
0 is the baseline that retrains without them, separating the effect of retraining from that of the images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import load_generated
from dpt_repro.io import require_inputs, write_json
from dpt_repro.ssl.train import ClassifierData
from dpt_repro.stages.classifier import (classifier_data, fit_probe_and_save, load_classifier, probe_data,
                                         real_data, train_and_save)

STREAM = 3


def probe(cfg: Config, data: ClassifierData, encoder, conf: dict) -> dict:
    """The frozen stage-1 encoder with a logistic-regression head fitted on labelled + generated images (on the
    labelled images alone when `generated_share` is 0, the baseline)."""
    return fit_probe_and_save(cfg, "stage3", encoder, conf["classifier"], data, paths(cfg).stage3, {
        "stage3": asdict(cfg.stage3),
        "weights": "stage-1 encoder (frozen) + logistic-regression head"})


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.prepared, p.split, p.generated, p.stage1)
    c = cfg.stage3
    gen_x, gen_y = load_generated(p.generated, c.generated_per_class)
    if c.protocol == "probe":  # every input is read before tracking starts
        data = probe_data(cfg, *((None, None) if c.generated_share == 0 else (gen_x, gen_y)))
        encoder, conf = load_classifier(p.stage1, "stage-1 classifier")
    else:
        data = classifier_data(*real_data(cfg), gen_x, gen_y, c.generated_share)
    with tracking.stage_run(cfg, "stage3", ("stage3",), params_file) as run:
        run.datasets(prepared=p.prepared, split=p.split, generated=p.generated)
        if c.protocol == "probe" and not distributed.is_main():
            return {}  # the probe is a small fit on one process
        if c.protocol == "probe":
            run.datasets(stage1=p.stage1)
            metrics = probe(cfg, data, encoder, conf)
        else:
            result = train_and_save(cfg, "stage3", data, STREAM, p.stage3, run)
            if not distributed.is_main():
                return {}
            metrics = {"val_acc": result.best_val_acc, "best_step": result.best_step,
                       "images_per_second": round(result.images_per_second, 1),
                       "generated_share_per_batch": c.generated_share}
        metrics["generated_share_of_labelled"] = round(data.n_generated / len(data.labelled_x), 4)
        run.metrics(metrics)
        uri = run.classifier_model(p.stage3, data.val_x.shape[1:])
        run.register(uri, tracking.CLASSIFIER_REGISTRY_NAME, "val_acc", metrics["val_acc"], cfg,
                     higher_is_better=True)
    write_json(p.metrics / "stage3.json", metrics)
    return metrics
