"""The generation metrics against independent implementations, on the same features: torch-fidelity 0.4.0's
precision/recall (`calculate_precision_recall_full`) and Inception Score (`isc_features_to_metric`), and plain
NumPy/SciPy for sFID and class FID (np.cov + clean-fid's `scipy.linalg.sqrtm` Fréchet distance).

The features: a workspace's `fid_reference` output (the precision/recall sample of real train images and the
per-class rows) and one Inception pass over the first `--per-class` generated images of each class. The shipped
Inception has no softmax layer, so the IS check multiplies pool3 by a seeded Gaussian 2048x1008 matrix (scaled
so the scores land in the tens): it checks the computation on the same logits, not the TF weights. torch-fidelity
is not a dependency of the package; install it aside:

    pip install --no-deps --target /tmp/torch_fidelity_pkg torch-fidelity==0.4.0
    python benchmarks/generation_check.py WORKSPACE --torch-fidelity /tmp/torch_fidelity_pkg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dpt_repro.config import load_config, paths
from dpt_repro.data.shards import iter_generated
from dpt_repro.io import read_npz
from dpt_repro.metrics import fid, generation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path, help="a repository where fid_reference and sample have run")
    ap.add_argument("--torch-fidelity", type=Path, required=True, help="where torch-fidelity 0.4.0 is installed")
    ap.add_argument("--per-class", type=int, default=50, help="generated images per class to extract")
    args = ap.parse_args()
    sys.path.insert(0, str(args.torch_fidelity))
    from cleanfid.fid import frechet_distance as scipy_frechet
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    cfg = load_config(args.workspace / "params.yaml")
    p = paths(cfg, args.workspace)
    k = cfg.base.num_classes
    ref = read_npz(p.fid_ref, "FID reference")
    extractor = fid.FeatureExtractor(torch.device("cpu"), cfg.eval.fid_resize, spatial=True)
    n = args.per_class * k
    acc = generation.SetFeatures(n, num_classes=k, pr_images=n, class_images=args.per_class)
    gen = generation.stream_features(iter_generated(p.generated, args.per_class), n, extractor, acc,
                                     batch_size=cfg.eval.batch_size, description="generated")
    out: dict = {"n_generated": n, "n_reference": len(ref["pr_features"])}

    real, fake = ref["pr_features"].astype(np.float64), gen["pr_features"].astype(np.float64)
    copier = np.repeat(real[:n // 20], 20, axis=0)
    for name, g in (("generated", fake), ("copier", copier)):
        ours = generation.precision_recall(real, g)
        theirs = calculate_precision_recall_full(torch.from_numpy(g), torch.from_numpy(real), neighborhood=3)
        theirs32 = calculate_precision_recall_full(torch.from_numpy(g).float(), torch.from_numpy(real).float(), 3)
        out[f"precision_recall_{name}"] = {"ours": ours, "torch_fidelity_float64": theirs,
                                           "torch_fidelity_float32": theirs32, "equal": list(ours) == list(theirs)}

    weights = np.random.default_rng(0).normal(0, 0.05, size=generation.LOGITS_SHAPE)
    logits = fake @ weights  # pr_images = n: the PR sample is every generated pool3 row, in order
    split = n // 5
    mean, std, splits = generation.inception_score(logits, split)
    shuffled = logits[np.random.default_rng(generation.IS_SEED).permutation(n)]
    theirs = isc_features_to_metric(torch.from_numpy(shuffled), splits=splits, shuffle=False)
    out["inception_score"] = {"ours": [mean, std], "splits": splits,
                              "torch_fidelity": [theirs["inception_score_mean"], theirs["inception_score_std"]],
                              "relative_difference": abs(mean / theirs["inception_score_mean"] - 1)}

    out["sfid"] = {"ours": generation.sfid(gen, ref),
                   "scipy_sqrtm": float(scipy_frechet(gen["spatial_mu"], gen["spatial_sigma"], ref["spatial_mu"],
                                                      ref["spatial_sigma"]))}
    ours_class, per_class = generation.class_fid(gen, ref, k)
    numpy_class = []
    for c in range(k):
        a = gen["class_features"][gen["class_labels"] == c].astype(np.float64)
        b = ref["class_features"][ref["class_labels"] == c].astype(np.float64)
        numpy_class.append(float(scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                               np.cov(b, rowvar=False))))
    out["class_fid"] = {"ours": ours_class, "numpy_scipy": float(np.mean(numpy_class)),
                        "max_relative_difference_per_class": max(abs(r["class_fid"] / v - 1)
                                                                 for r, v in zip(per_class, numpy_class))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
