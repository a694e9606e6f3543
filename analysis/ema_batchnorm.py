"""Validation accuracy of stage-1 checkpoints three ways: the live model, the EMA as trained (BatchNorm statistics
copied from the live model, as FixMatch does) and the EMA with its own statistics (`recalibrate_batchnorm`).

Reads the resumable checkpoints that `benchmarks/stage1_grid.py --checkpoint-dir` keeps, named
`<algorithm>-lpc<N>-seed<S>.pt`, rebuilds each run's validation split from the params file and prints a
Markdown table. It shows how much a short run's EMA loses to statistics that belong to newer weights.
`--per-class` adds a second table: the validation recall of each class for the EMA with its own statistics,
which shows which classes a run's remaining errors sit in.

    python analysis/ema_batchnorm.py --params params.yaml ckpt/freematch-lpc2-seed0.pt ckpt/fixmatch-lpc2-seed0.pt
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from dpt_repro.config import load_config, paths
from dpt_repro.data.shards import load_manifest, load_split
from dpt_repro.io import load_checkpoint
from dpt_repro.runtime import generator, setup
from dpt_repro.ssl.train import accuracy, build_classifier, predict_proba, recalibrate_batchnorm
from dpt_repro.stages.classifier import classifier_data
from dpt_repro.stages.split import draw_split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", type=int, default=5000, help="unlabelled images for the recomputed statistics")
    ap.add_argument("--per-class", action="store_true", help="also print each class's validation recall")
    ap.add_argument("-S", "--set", action="append", default=[], help="section.key=value override")
    args = ap.parse_args()

    cfg = load_config(args.params, args.set)
    device = setup(cfg.base)
    images, labels = load_split(paths(cfg).prepared, "train")
    k, bs = cfg.base.num_classes, cfg.stage1.eval_batch_size
    recalls = {}
    print(f"| run | step | live model | EMA, statistics copied | EMA, statistics recomputed ({args.images} images) |")
    print("| --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        match = re.fullmatch(r"(\w+)-lpc(\d+)-seed(\d+)", path.stem)
        if not match:
            raise SystemExit(f"{path}: expected a name <algorithm>-lpc<N>-seed<S>.pt")
        algorithm, lpc, seed = match[1], int(match[2]), int(match[3])
        lab, val = draw_split(labels, k, lpc, cfg.base.val_per_class, seed)
        data = classifier_data(images, labels, {"labelled": lab.tolist(), "validation": val.tolist()})
        state = load_checkpoint(path)
        model = build_classifier(replace(cfg.stage1, algorithm=algorithm), images.shape[3], k,
                                 images.shape[1]).to(device)
        row = []
        for key in ("model", "ema"):
            model.load_state_dict(state[key])
            row.append(accuracy(model, data.val_x, data.val_y, bs, device))
        recalibrate_batchnorm(model, data.unlabelled_x, args.images, bs, generator(seed, 0), device)
        correct = predict_proba(model, data.val_x, bs, device).argmax(1) == data.val_y
        row.append(float(correct.mean()))
        recalls[path.stem] = [float(correct[data.val_y == c].mean()) for c in range(k)]
        print(f"| {path.stem} | {int(state['step'])} | " + " | ".join(f"{a:.3f}" for a in row) + " |", flush=True)
    if args.per_class:
        names = load_manifest(paths(cfg).prepared)["class_names"]
        print("\n| run (validation recall, EMA with recomputed statistics) | " + " | ".join(names) + " |")
        print("| --- " * (k + 1) + "|")
        for run, recall in recalls.items():
            print(f"| {run} | " + " | ".join(f"{r:.2f}" for r in recall) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
