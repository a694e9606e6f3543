"""Near-copies of the labelled images among each experiment's generated images.

Claim 2 compares the pseudo-label generator with one trained on the labelled images alone. A generator trained on
50 images can reproduce them, and copies of real images can score a better FID than an under-trained generator's
new images. For each DVC experiment named, this reads its generated set, its labelled images and 2,000 other
train images at the experiment's commit (from the DVC cache; nothing in the workspace changes) and prints
`dpt_repro.metrics.copies.copy_statistics` as a Markdown table.

    python analysis/generated_copies.py washy-beak magic-cool medal-wave yolky-flux wired-brio
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dpt_repro.config import load_config, paths
from dpt_repro.data.shards import load_generated, select, split_count
from dpt_repro.io import read_json
from dpt_repro.metrics.copies import copy_statistics


def commit_of(name: str) -> str:
    """The commit of experiment `name` (its ref under refs/exps), or `name` itself when it is a git revision."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.split("\n")
    found = [line.split()[0] for line in refs if line.endswith("/" + name)]
    return found[0] if found else name


def analyse(name: str, unseen_count: int) -> dict:
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(".", rev=commit_of(name))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(fs.read_text("params.yaml"))
        cfg = load_config(root / "params.yaml")
        p = paths(cfg, root)
        for local in (p.prepared, p.split, p.generated):
            fs.get(str(local.relative_to(root)), str(local), recursive=local.suffix == "")
        split = read_json(p.split, "split")
        labelled_index = np.asarray(split["labelled"])
        labelled, _ = select(p.prepared, "train", labelled_index)
        rest = np.setdiff1d(np.arange(split_count(p.prepared, "train")),
                            np.concatenate([labelled_index, np.asarray(split["validation"])]))
        unseen_index = np.sort(np.random.default_rng(0).choice(rest, unseen_count, replace=False))
        unseen, _ = select(p.prepared, "train", unseen_index)
        generated, _ = load_generated(p.generated)
        stats = copy_statistics(generated, labelled, unseen)
    return {"experiment": name, "generator": cfg.stage2.labels, "lpc": cfg.base.labels_per_class,
            "seed": cfg.base.seed, "generated": len(generated), **stats}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", help="DVC experiment names or git revisions")
    ap.add_argument("--unseen", type=int, default=2000, help="unseen real train images for the reference")
    args = ap.parse_args()
    print("| experiment | generator | labels/class | seed | generated | median distance to nearest labelled: "
          "generated | : unseen real | near-copies (closer than 99 % of unseen real) | labelled images nearest |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.experiments:
        r = analyse(name, args.unseen)
        print(f"| {r['experiment']} | {r['generator']} | {r['lpc']} | {r['seed']} | {r['generated']} | "
              f"{r['median_generated']:.2f} | {r['median_unseen_real']:.2f} | {100 * r['near_copy_share']:.1f} % | "
              f"{r['labelled_images_nearest']} of {r['labelled_images']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
