"""Stage 2 on a long profile, measured end to end: FID of guided samples against the whole train split.

Trains the generator of a profile (`configs/long.yaml` by default) on every train image with the pseudo-labels of
a finished stage 1 (the pseudo-label stage's parquet), samples `sample.images_per_class` images per class with the
EMA weights as the sample stage does, and scores them with the evaluate stage's FID network and resize against the
statistics of all train images. A wall-clock budget stops training at the last checkpoint written before it ran
out (every `stage2.checkpoint_every` steps), so a run on a shared or slower machine still ends with a number; the
result names the steps that were trained; `--resume` continues such a run from its checkpoint (the budget then
counts that call's training), so a long profile can be trained over several calls. `--stop-at-step N` stops at
step N's checkpoint instead, whatever the machine's speed, and keeps that checkpoint (for
`analysis/guidance_sweep.py`). The generated images are saved, so the FID can be recomputed anywhere.

    python benchmarks/stage2_long.py --pseudo-labels data/pseudo_labels/lpc5-seed0/pseudo_labels.parquet \\
        -S base.device=cuda -S eval.fid_precision=bfloat16 --budget-s 300 --out reports/stage2_long
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dpt_repro.config import config_from_tree, paths, profile_params, read_params_file
from dpt_repro.data.shards import iter_split, load_split, select, split_count
from dpt_repro.diffusion.sample import class_plan, sample_all_ranks
from dpt_repro.diffusion.train import ema_unet_from_checkpoint, make_scheduler, train_diffusion
from dpt_repro.io import load_checkpoint, write_json
from dpt_repro.metrics import fid
from dpt_repro.runtime import configure_logging, hardware, setup
from dpt_repro.stages.fid_reference import reference_indices
from dpt_repro.stages.stage2 import read_pseudo_labels, training_fid


class StopTraining(Exception):
    """Raised from the trainer's log callback once the budget is spent or the stop step is passed."""


def profile_config(params: str, profile: str, overrides: list[str]):
    """params.yaml with configs/<profile>.yaml laid over it (as `dpt-repro profile` does), then the overrides."""
    return config_from_tree(profile_params(params, profile) if profile else read_params_file(params), overrides)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="long", help="configs/<profile>.yaml over params ('' for params alone)")
    ap.add_argument("--pseudo-labels", required=True, help="the pseudo-label stage's parquet (index, pseudo_label)")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="wall-clock seconds of training (the training FID included)")
    ap.add_argument("--ref-images", type=int, default=0, help="reference train images (0: all of them)")
    ap.add_argument("--stop-at-step", type=int, default=0,
                    help="end training at this step's checkpoint (a multiple of stage2.checkpoint_every; 0: off)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the checkpoint a budget-stopped run left in --out (training spread over calls)")
    ap.add_argument("-S", "--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--out", default="reports/stage2_long")
    args = ap.parse_args()

    configure_logging()
    cfg = profile_config(args.params, args.profile, args.set)
    device = setup(cfg.base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k, c, s = cfg.base.num_classes, cfg.stage2, cfg.sample
    stop_step = args.stop_at_step
    if stop_step and (stop_step % c.checkpoint_every or stop_step >= c.steps
                      or max(1, c.steps // 200) >= c.checkpoint_every):
        print(f"error: --stop-at-step {stop_step} must be a multiple of stage2.checkpoint_every "
              f"({c.checkpoint_every}) below stage2.steps ({c.steps}), with a log step (steps / 200) shorter than "
              f"checkpoint_every", file=sys.stderr)
        return 2

    images, true_labels = load_split(paths(cfg).prepared, "train")
    labels = read_pseudo_labels(Path(args.pseudo_labels), len(images))

    def on_log(step: int, row: dict) -> None:
        # The trainer logs step s before it saves checkpoint s + 1: at the first log past the stop step (and
        # before the next checkpoint), the last checkpoint is the stop step's.
        if time.perf_counter() > stop_at or (stop_step and step > stop_step):
            raise StopTraining(step)

    checkpoint = out / "checkpoint.pt"
    if not args.resume:
        checkpoint.unlink(missing_ok=True)  # a fresh run: the budget measures this run's training alone
    first_step = int(load_checkpoint(checkpoint)["step"]) if checkpoint.is_file() else 0
    t0 = time.perf_counter()
    stop_at = t0 + args.budget_s
    try:
        result = train_diffusion(c, images, labels, num_classes=k, seed=cfg.base.seed, device=device,
                                 checkpoint=checkpoint, on_log=on_log,
                                 on_eval=training_fid(cfg, device, None) if c.fid_every else None)
        ema_unet, steps, fid_curve, rate = result.ema_unet, c.steps, result.fid_curve, result.images_per_second
    except StopTraining:
        if not checkpoint.is_file():
            raise SystemExit(f"the budget of {args.budget_s} s ran out before the first checkpoint")
        ema_unet, steps = ema_unet_from_checkpoint(checkpoint, c, images.shape[1:], k)
        if stop_step and steps != stop_step:
            raise SystemExit(f"the checkpoint in {out} is at step {steps}, not --stop-at-step {stop_step}")
        fid_curve = list(load_checkpoint(checkpoint).get("fid_curve", []))
        rate = (steps - first_step) * c.batch_size / (time.perf_counter() - t0)  # evaluations included: a lower bound
    train_s = time.perf_counter() - t0

    ema_unet = ema_unet.to(device)
    gen_labels, _, seeds = class_plan(k, s.images_per_class, cfg.base.seed)
    t1 = time.perf_counter()
    generated = sample_all_ranks(ema_unet, dict(make_scheduler(c).config), gen_labels, seeds,
                                 batch_size=s.batch_size, image_shape=images.shape[1:],
                                 guidance_scale=s.guidance_scale, steps=s.steps, null_class=k, device=device,
                                 scheduler=s.scheduler, mixed_precision=c.mixed_precision)
    sample_s = time.perf_counter() - t1
    np.savez_compressed(out / "generated.npz", images=generated, labels=gen_labels)

    extractor = fid.FeatureExtractor(device, cfg.eval.fid_resize, cfg.eval.fid_precision)
    folder, bs = paths(cfg).prepared, cfg.eval.batch_size
    n_ref = args.ref_images or split_count(folder, "train")
    reference = (iter([select(folder, "train", reference_indices(split_count(folder, "train"), n_ref))[0]])
                 if args.ref_images else (x for x, _ in iter_split(folder, "train")))
    ref_mu, ref_sigma, ref_kept = fid.stream_statistics(reference, n_ref, extractor, batch_size=bs,
                                                        description="train statistics")
    gen_mu, gen_sigma, gen_kept = fid.stream_statistics(iter([generated]), len(generated), extractor, batch_size=bs)
    row = {
        "fid": fid.frechet_distance(gen_mu, gen_sigma, ref_mu, ref_sigma),
        "kid": fid.kid(gen_kept, ref_kept, cfg.eval.kid_subset_size),
        "steps_trained": steps, "steps_planned": c.steps, "resumed_from_step": first_step,
        "train_seconds": round(train_s, 1),
        "train_images_per_second": round(rate, 1), "sample_seconds": round(sample_s, 1),
        "pseudo_labels": args.pseudo_labels, "pseudo_label_accuracy": float((labels == true_labels).mean()),
        "fid_protocol": fid.protocol(cfg.eval.fid_resize, len(generated), "train split", n_ref,
                                     cfg.eval.fid_precision),
        "fid_during_training": fid_curve, "stage2": asdict(c), "sample": asdict(s), "profile": args.profile,
        "hardware": hardware(device), "torch": torch.__version__, "command": " ".join(sys.argv),
    }
    write_json(out / "result.json", row)
    if steps == c.steps:
        checkpoint.unlink(missing_ok=True)
    print(f"FID {row['fid']:.2f} (KID {row['kid']:.4f}) of {len(generated)} guided samples against {n_ref} train "
          f"images, after {steps} of {c.steps} steps ({train_s:.0f} s of training), {row['hardware']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
