"""Stage-1 accuracy grid: test top-1 of each algorithm at several labels-per-class settings and seeds.

Runs the same library code as `dpt-repro stage1` (split, shared training loop, checkpoint selection on the
validation split) and then scores the selected EMA weights on the test split, which no training step sees.
Prints a Markdown table (mean and spread over seeds) and writes it, with every raw row, to --out.

    python benchmarks/stage1_grid.py --algorithms supervised,fixmatch,freematch --lpc 1,2,5 --seeds 0,1,2
    python benchmarks/stage1_grid.py --full-supervision -S stage1.steps=6000   # the all-labels reference
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dpt_repro.config import load_config, paths
from dpt_repro.io import write_json


def summary_table(rows: list[dict]) -> str:
    """Mean and spread of test top-1 over seeds, per algorithm and labels per class, as Markdown."""
    table = ["| algorithm | labels/class | test top-1 (mean ± std) | seeds | steps | s/run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for algorithm, lpc in dict.fromkeys((r["algorithm"], r["labels_per_class"]) for r in rows):
        group = [r for r in rows if r["algorithm"] == algorithm and r["labels_per_class"] == lpc]
        accs = [100 * r["test_top1"] for r in group]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        table.append(f"| {algorithm} | {lpc} | {statistics.mean(accs):.1f} ± {spread:.1f} | {len(accs)} | "
                     f"{group[0]['steps']} | {statistics.mean(r['seconds'] for r in group):.0f} |")
    return "\n".join(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--algorithms", default="supervised,fixmatch,freematch")
    ap.add_argument("--lpc", default="1,2,5")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--full-supervision", action="store_true", help="train on every train label (reference)")
    ap.add_argument("-S", "--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--tag", default="default", help="profile name recorded in every row")
    ap.add_argument("--out", default="reports/stage1_grid.json")
    ap.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="keep a resumable checkpoint per run here (long runs: rerun the same command to resume)")
    args = ap.parse_args()

    # torch and the training code load here, so `summary_table` imports in a moment (analysis/fold_grid_rows.py)
    from dpt_repro.data.shards import load_split
    from dpt_repro.runtime import configure_logging, hardware, setup
    from dpt_repro.ssl.train import accuracy, build_classifier, train_classifier, validate_batch_sizes
    from dpt_repro.stages.classifier import classifier_data
    from dpt_repro.stages.split import draw_split

    configure_logging()
    cfg = load_config(args.params, args.set)
    device = setup(cfg.base)
    images, labels = load_split(paths(cfg).prepared, "train")
    test_x, test_y = load_split(paths(cfg).prepared, "test")
    rows = []
    settings = [("supervised", -1)] if args.full_supervision else [
        (a, int(n)) for a in args.algorithms.split(",") for n in args.lpc.split(",")]
    for algorithm, lpc in settings:
        for seed in (int(s) for s in args.seeds.split(",")):
            c = replace(cfg.stage1, algorithm=algorithm)
            per_class = lpc if lpc > 0 else int(np.bincount(labels).min()) - cfg.base.val_per_class
            lab, val = draw_split(labels, cfg.base.num_classes, per_class, cfg.base.val_per_class, seed)
            data = classifier_data(images, labels, {"labelled": lab.tolist(), "validation": val.tolist()})
            validate_batch_sizes(c, data, "stage1")
            start = time.perf_counter()
            name = f"{algorithm}-lpc{per_class}-seed{seed}"
            checkpoint = args.checkpoint_dir / f"{name}.pt" if args.checkpoint_dir else None
            result = train_classifier(c, data, num_classes=cfg.base.num_classes, seed=seed, stream=1,
                                      device=device, checkpoint=checkpoint, description=name)
            model = build_classifier(c, images.shape[3], cfg.base.num_classes, images.shape[1])
            model.load_state_dict(result.state_dict)
            top1 = accuracy(model.to(device), test_x, test_y, 1000, device)
            rows.append({"profile": args.tag, "algorithm": algorithm, "labels_per_class": per_class, "seed": seed, "test_top1": top1,
                         "val_acc": result.best_val_acc, "steps": c.steps, "batch_size": c.batch_size, "mu": c.mu,
                         "seconds": round(time.perf_counter() - start, 1),
                         "images_per_second": round(result.images_per_second, 1)})
            print(json.dumps(rows[-1]), flush=True)

    text = summary_table(rows)
    print(text)
    write_json(args.out, {"command": " ".join(sys.argv), "hardware": hardware(device), "rows": rows, "table": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
