"""evaluate: test top-1 of stage 1 and stage 3 and the DPT gain; FID and KID of the generated images.

The only stage that uses test labels to score a model (the gates read the test split for integrity checks).
Every FID is written with its protocol beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import (generated_count, iter_generated, iter_split, load_generated_manifest,
                                   load_manifest)
from dpt_repro.io import read_parquet, require_inputs, write_json
from dpt_repro.metrics import fid
from dpt_repro.metrics.classification import plot_confusion, summary
from dpt_repro.runtime import hardware, setup
from dpt_repro.ssl.train import predict_proba_all_ranks
from dpt_repro.stages.classifier import load_classifier, write_csv


def run(cfg: Config, params_file: Path) -> dict:
    p = paths(cfg)
    require_inputs(p.prepared, p.stage1, p.stage3, p.pseudo_labels, p.generated, p.fid_ref)
    e = cfg.eval
    device = setup(cfg.base)
    k = cfg.base.num_classes
    # every input opened before the minutes of compute, so a damaged one is reported at once
    models = {stage: load_classifier(folder, f"{stage} classifier")[0].to(device)
              for stage, folder in (("stage1", p.stage1), ("stage3", p.stage3))}
    table = read_parquet(p.pseudo_labels, "pseudo-labels", ["pseudo_label", "true_label"])
    manifest = load_generated_manifest(p.generated)
    per_class = min(e.fid_images_per_class or manifest["images_per_class"], manifest["images_per_class"])
    n_generated = per_class * k
    generated_count(p.generated, per_class)  # reads each shard's index: a damaged shard fails here
    ref, ref_meta = fid.load_reference(p.fid_ref, e.fid_resize, e.fid_precision)
    preds: dict[str, list] = {stage: [] for stage in models}
    labels = []
    for images, shard_labels in iter_split(p.prepared, "test"):  # one shard in memory (ImageNet val is 10 GB)
        labels.append(shard_labels)
        for stage, model in models.items():
            preds[stage].append(predict_proba_all_ranks(model, images, cfg.pseudo.batch_size, device).argmax(1))
    test_y = np.concatenate(labels)
    preds = {stage: np.concatenate(parts) for stage, parts in preds.items()}
    results = {stage: summary(test_y, preds[stage], k) for stage in preds}

    extractor = fid.FeatureExtractor(device, e.fid_resize, e.fid_precision)
    mu, sigma, gen_feats = fid.stream_statistics((x for x, _ in iter_generated(p.generated, per_class)), n_generated,
                                                 extractor, batch_size=e.batch_size, description="fid generated")
    if not distributed.is_main():
        return {}
    fid_value = fid.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    kid_value = fid.kid(gen_feats.astype(np.float64), ref["features"].astype(np.float64), e.kid_subset_size)
    metrics = {
        "top1_stage1": results["stage1"]["accuracy"], "top1_stage3": results["stage3"]["accuracy"],
        "dpt_gain": results["stage3"]["accuracy"] - results["stage1"]["accuracy"],
        "pseudo_label_accuracy": float((table.pseudo_label == table.true_label).mean()),
        "fid": fid_value, "kid": kid_value, "labels_per_class": cfg.base.labels_per_class, "seed": cfg.base.seed,
        "hardware": hardware(device),
        "fid_protocol": {**fid.protocol(e.fid_resize, n_generated, f"{cfg.base.dataset} {ref_meta['split']}",
                                        ref_meta["n"], e.fid_precision),
                         "guidance_scale": cfg.sample.guidance_scale, "weights": "unet_ema",
                         "sampler_steps": cfg.sample.steps},
    }
    write_json(p.metrics / "eval.json", metrics)
    names = load_manifest(p.prepared)["class_names"]
    write_csv(p.plots / "stage3_test_predictions.csv",
              [{"actual": names[a], "predicted": names[b]} for a, b in zip(test_y, preds["stage3"])])
    plot_confusion(np.asarray(results["stage3"]["confusion_matrix"]), names, p.plots / "confusion_stage3.png",
                   f"stage-3 classifier on test, {cfg.run_key}")
    with tracking.stage_run(cfg, "evaluate", ("eval",), params_file) as run:
        run.datasets(prepared=p.prepared, generated=p.generated, fid_reference=p.fid_ref)
        run.metrics({k_: v for k_, v in metrics.items() if isinstance(v, float)})
        run.dict(metrics, "eval.json")
        run.artifact(p.plots / "confusion_stage3.png")
        if p.samples_png.is_file():
            run.artifact(p.samples_png)
    return metrics
