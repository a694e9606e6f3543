"""FID of one trained generator at several guidance scales and class priors, paired by seed.

The guidance scale trades sample fidelity for diversity, and with pseudo-labels the classes the generator was
trained on are not balanced (a stage 1 that calls many pullovers "coat" makes a large "coat" class). This samples
the EMA weights of a stage-2 checkpoint (`benchmarks/stage2_long.py --out`) at each guidance scale, with the
classes either uniform (as the sample stage draws them, `n` per class) or in proportion to the pseudo-labels the
generator was trained on (its own estimate of the data distribution), and scores each set with the evaluate
stage's FID network against the same train images. Image `i` of class `c` has the same seed in every setting, so
the settings differ only in what they set. The reference statistics of `--ref-images` train images are computed
once and cached in `--out`, or read from a `dpt-repro fid-reference` output (`--reference`, e.g. all 60,000 train
images); each generated set's statistics are cached there too (named by checkpoint digest and setting), so the
same command with another reference rescores them in seconds. `-S sample.steps=N` sets the sampler's steps.

    python analysis/guidance_sweep.py --checkpoint reports/stage2_long_cpu/checkpoint.pt \\
        --pseudo-labels data/pseudo_labels/lpc5-seed0/pseudo_labels.parquet -S stage2.profile=small28 \\
        -S stage2.steps=30000 -S stage2.batch_size=64 -S stage2.checkpoint_every=500 -S stage2.fid_every=0 \\
        --guidance 0.5 0.75 1.0 1.25 1.5 2.0 --images 2000 --ref-images 10000 --out reports/guidance_sweep

(the `-S` settings of the training run: `stage2.profile` builds the UNet the EMA weights are loaded into).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from dpt_repro.config import config_from_tree, paths, profile_params, read_params_file
from dpt_repro.data.shards import select, split_count
from dpt_repro.diffusion.sample import image_seed, sample_all_ranks
from dpt_repro.diffusion.train import ema_unet_from_checkpoint, make_scheduler
from dpt_repro.errors import UserError
from dpt_repro.io import file_sha256, read_npz, write_json, write_npz
from dpt_repro.metrics import fid
from dpt_repro.runtime import configure_logging, hardware, setup
from dpt_repro.stages.fid_reference import reference_indices
from dpt_repro.stages.stage2 import read_pseudo_labels


def class_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """`total` split over classes in proportion to `weights` (largest remainder, so the counts sum to `total`)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: total - counts.sum()]] += 1
    return counts


def plan(counts: np.ndarray, base_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and seeds, class-major; image i of class c has the sample stage's seed for (c, i)."""
    labels = np.repeat(np.arange(len(counts)), counts)
    seeds = np.array([image_seed(base_seed, int(c), i) for c, n in enumerate(counts) for i in range(n)], np.int64)
    return labels, seeds


def reference_statistics(cfg, extractor, n_ref: int, cache: Path):
    """Statistics of `n_ref` train images (the evaluate stage's subset), from `cache` when an earlier call left them."""
    if cache.is_file():
        z = read_npz(cache, "cached reference statistics")
        return z["mu"], z["sigma"], z["kept"]
    folder = paths(cfg).prepared
    images, _ = select(folder, "train", reference_indices(split_count(folder, "train"), n_ref))
    mu, sigma, kept = fid.stream_statistics(iter([images]), n_ref, extractor, batch_size=cfg.eval.batch_size,
                                            description="train statistics")
    write_npz(cache, mu=mu, sigma=sigma, kept=kept)
    return mu, sigma, kept


def stage_reference(cfg, path: Path):
    """Statistics of a `dpt-repro fid-reference` output (e.g. all 60,000 train images), checked against the
    protocol the generated images are scored with, and how many images it holds."""
    ref, meta = fid.load_reference(path, cfg.eval.fid_resize, cfg.eval.fid_precision)
    return ref["mu"], ref["sigma"], ref["features"].astype(np.float64), int(meta["n"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="long", help="configs/<profile>.yaml over params ('' for params alone)")
    ap.add_argument("--checkpoint", required=True, help="a stage-2 training checkpoint of this configuration")
    ap.add_argument("--pseudo-labels", required=True, help="the parquet the generator was trained on")
    ap.add_argument("--guidance", type=float, nargs="+", required=True)
    ap.add_argument("--priors", nargs="+", default=["uniform"], choices=["uniform", "pseudo"])
    ap.add_argument("--images", type=int, default=2000, help="generated images per setting")
    ap.add_argument("--ref-images", type=int, default=10000)
    ap.add_argument("--reference", help="a `dpt-repro fid-reference` output to score against (overrides --ref-images)")
    ap.add_argument("-S", "--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--out", default="reports/guidance_sweep")
    args = ap.parse_args()

    configure_logging()
    cfg = config_from_tree(profile_params(args.params, args.profile) if args.profile
                           else read_params_file(args.params), args.set)
    device = setup(cfg.base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k, c, s = cfg.base.num_classes, cfg.stage2, cfg.sample
    shape = (cfg.base.image_size, cfg.base.image_size, cfg.base.channels)
    unet, step = ema_unet_from_checkpoint(Path(args.checkpoint), c, shape, k)
    checkpoint_digest = file_sha256(Path(args.checkpoint))
    unet = unet.to(device)
    n_train = split_count(paths(cfg).prepared, "train")
    pseudo = np.bincount(read_pseudo_labels(Path(args.pseudo_labels), n_train), minlength=k)

    extractor = fid.FeatureExtractor(device, cfg.eval.fid_resize, cfg.eval.fid_precision)
    protocol = f"{cfg.eval.fid_resize}-{cfg.eval.fid_precision}"
    if args.reference:
        ref_mu, ref_sigma, ref_kept, n_ref = stage_reference(cfg, Path(args.reference))
    else:
        n_ref = args.ref_images
        cache = out / f"reference-{n_ref}-{protocol}.npz"
        ref_mu, ref_sigma, ref_kept = reference_statistics(cfg, extractor, n_ref, cache)
    rows = []
    for prior in args.priors:
        counts = class_counts(args.images, np.ones(k) if prior == "uniform" else pseudo.astype(float))
        labels, seeds = plan(counts, cfg.base.seed)
        for w in args.guidance:
            # The generated set's statistics are kept too, so another reference rescores them without sampling.
            key = {"checkpoint": checkpoint_digest, "prior": prior, "guidance_scale": w, "scheduler": s.scheduler,
                   "steps": s.steps, "images": args.images, "seed": cfg.base.seed, "protocol": protocol,
                   "mixed_precision": c.mixed_precision}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            cache = out / f"generated-{prior}-w{w:g}-{s.scheduler}-{s.steps}steps-{digest}.npz"
            t0, cached = time.perf_counter(), cache.is_file()  # a cached row's seconds are not its sampling time
            if cached:
                z = read_npz(cache, "cached statistics of generated images")
                mu, sigma, kept = z["mu"], z["sigma"], z["kept"]
            else:
                images = sample_all_ranks(unet, dict(make_scheduler(c).config), labels, seeds,
                                          batch_size=s.batch_size, image_shape=shape, guidance_scale=w,
                                          steps=s.steps, null_class=k, device=device, scheduler=s.scheduler,
                                          mixed_precision=c.mixed_precision)
                mu, sigma, kept = fid.stream_statistics(iter([images]), len(images), extractor,
                                                        batch_size=cfg.eval.batch_size)
                write_npz(cache, mu=mu, sigma=sigma, kept=kept, key=np.array(json.dumps(key)))
            row = {"prior": prior, "guidance_scale": w, "fid": fid.frechet_distance(mu, sigma, ref_mu, ref_sigma),
                   "kid": fid.kid(kept, ref_kept, cfg.eval.kid_subset_size),
                   "seconds": round(time.perf_counter() - t0), "from_cache": cached}
            rows.append(row)
            print(f"prior {prior:8s} w {w:5.2f}  FID {row['fid']:7.2f}  KID {row['kid']:.4f}", flush=True)
    write_json(out / "sweep.json", {
        "checkpoint": args.checkpoint, "checkpoint_sha256": checkpoint_digest, "step": step,
        "reference": args.reference or f"{n_ref} train images", "pseudo_labels": args.pseudo_labels,
        "pseudo_label_counts": pseudo.tolist(), "images": args.images, "sampler": s.scheduler, "steps": s.steps,
        "fid_protocol": fid.protocol(cfg.eval.fid_resize, args.images, "train split", n_ref,
                                     cfg.eval.fid_precision),
        "hardware": hardware(device), "command": " ".join(sys.argv), "rows": rows})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
