"""Peak memory of pseudo-labelling and FID statistics at two dataset sizes: ours (streamed shard by shard)
against the in-memory way (load the whole split; for FID, keep every feature row and call np.cov, as
clean-fid's folder path does). Each measurement runs in a fresh process and reads its peak RSS.

    python benchmarks/memory.py                      # pseudo-labels at 10k and 60k images, FID at 1000 and 4000

The datasets are Fashion-MNIST train images tiled to the size asked for, written as .npz shards
(`--shard` images each) in a temporary folder, as `prepare` writes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_dataset(folder: Path, n: int, shard: int) -> None:
    from dpt_repro.config import BaseConfig, PrepareConfig
    from dpt_repro.data.shards import write_split
    from dpt_repro.data.sources import fashion_mnist
    from dpt_repro.io import write_json

    raw = fashion_mnist(BaseConfig(), PrepareConfig())
    reps = -(-n // len(raw.train_images))
    images = np.concatenate([raw.train_images] * reps)[:n]
    labels = np.concatenate([raw.train_labels] * reps)[:n]
    write_json(folder / "manifest.json", {"splits": {"train": write_split(folder, "train", images, labels, shard)},
                                          "class_names": raw.class_names})


def child(kind: str, way: str, folder: Path) -> dict:
    """One measurement; runs in its own process so ru_maxrss is this workload's peak."""
    from dpt_repro.config import BaseConfig, ClassifierConfig
    from dpt_repro.data.shards import iter_split, load_split, split_count
    from dpt_repro.metrics import fid
    from dpt_repro.runtime import setup
    from dpt_repro.ssl.train import build_classifier, predict_proba
    from dpt_repro.stages.pseudo_label import predict_split

    device = setup(BaseConfig(device="cpu"))  # threads and allocator as every stage sets them
    t0 = time.perf_counter()
    if kind == "pseudo":
        model = build_classifier(ClassifierConfig(), 1, 10, 28).eval()
        if way == "ours":
            n = len(predict_split(model, folder, "train", 1000, device))
        else:
            images, _ = load_split(folder, "train")
            n = len(predict_proba(model, images, 1000, device))
    else:
        extractor = fid.FeatureExtractor(device)
        if way == "ours":
            fid.stream_statistics((x for x, _ in iter_split(folder, "train")), split_count(folder, "train"),
                                  extractor, batch_size=50)
        else:
            images, _ = load_split(folder, "train")
            fid.statistics(fid.extract_features(images, extractor, batch_size=50))
        n = split_count(folder, "train")
    return {"seconds": time.perf_counter() - t0, "images": n,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pseudo-sizes", type=int, nargs=2, default=[10_000, 60_000])
    ap.add_argument("--fid-sizes", type=int, nargs=2, default=[1_000, 4_000])
    ap.add_argument("--shard", type=int, default=5_000, help="images per shard (FID runs use a tenth)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "WAY", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], Path(args.child[2]))))
        return

    rows = []
    for kind, sizes, shard in (("pseudo", args.pseudo_sizes, args.shard), ("fid", args.fid_sizes, args.shard // 10)):
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                make_dataset(Path(tmp), n, shard)
                for way in ("in-memory", "ours"):
                    out = subprocess.run([sys.executable, __file__, "--child", kind, way, tmp], capture_output=True,
                                         text=True, check=True)
                    rows.append({"kind": kind, "way": way, "n": n, **json.loads(out.stdout.splitlines()[-1])})
                    print(f"{kind:7s} {way:10s} n={n:6d}  peak {rows[-1]['peak_mb']:7.0f} MB  "
                          f"{rows[-1]['seconds']:6.1f} s", flush=True)
    print("\n| workload | way | peak MB (small n) | peak MB (large n) | growth MB |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("pseudo", "fid"):
        for way in ("in-memory", "ours"):
            small, large = [r for r in rows if r["kind"] == kind and r["way"] == way]
            print(f"| {kind} (n={small['n']} → {large['n']}) | {way} | {small['peak_mb']:.0f} | "
                  f"{large['peak_mb']:.0f} | {large['peak_mb'] - small['peak_mb']:+.0f} |")


if __name__ == "__main__":
    main()
