"""Stage-1 step rate: our batched augmentation against torchvision's per-image RandAugment (the peer).

Both sides run the same FixMatch step (B labelled + mu*B weak + mu*B strong views, one forward and backward
of the same backbone) on the same images, device and threads; only the augmentation differs. The peer is
what TorchSSL/USB do: torchvision RandAugment(2 ops) + random erasing (cutout), one image at a time.
Prints images per second for each and the ratio.

    python benchmarks/stage1_step_rate.py --backbone cnn --batch 10 --mu 7 --steps 30
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dpt_repro.config import BaseConfig, ClassifierConfig
from dpt_repro.data import augment
from dpt_repro.runtime import generator, setup
from dpt_repro.ssl.algorithms import build_algorithm
from dpt_repro.ssl.train import build_classifier, normalize


def peer_views(x_l: torch.Tensor, u: torch.Tensor):
    from torchvision.transforms import v2

    weak = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(x_l.shape[-1], padding=4, padding_mode="reflect")])
    strong = v2.Compose([weak, v2.RandAugment(num_ops=2), v2.RandomErasing(p=1.0, scale=(0.02, 0.25), value=0.5)])
    to_u8 = lambda t: (t * 255).to(torch.uint8)  # noqa: E731  RandAugment wants uint8 images
    return [torch.stack([weak(img) for img in x_l]), torch.stack([weak(img) for img in u]),
            torch.stack([strong(to_u8(img)).float() / 255 for img in u])]


def our_views(x_l: torch.Tensor, u: torch.Tensor, g: torch.Generator):
    return [augment.weak(x_l, g), augment.weak(u, g), augment.strong(u, g)]


def run(kind: str, args, device: torch.device) -> float:
    torch.manual_seed(0)
    cfg = ClassifierConfig(algorithm="fixmatch", backbone=args.backbone, batch_size=args.batch, mu=args.mu)
    model = build_classifier(cfg, 1, 10, args.size).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    algo = build_algorithm(cfg, 10)
    data = torch.rand(2000, 1, args.size, args.size)
    labels = torch.randint(0, 10, (2000,))
    source = data if kind == "peer" else data.to(device)  # the peer augments on the CPU, as DataLoaders do
    seen, start = 0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        g = generator(0, 9, step)
        idx = torch.randint(0, 2000, (args.batch,), generator=g)
        iu = torch.randint(0, 2000, (args.batch * args.mu,), generator=g)
        x_l, u = source[idx.to(source.device)], source[iu.to(source.device)]
        views = peer_views(x_l, u) if kind == "peer" else our_views(x_l, u, g)
        logits = model(normalize(torch.cat(views)).to(device))
        lx = logits[:args.batch]
        lw, ls = logits[args.batch:].chunk(2)
        loss, _ = algo.loss(lx, labels[idx].to(device), lw, ls)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += sum(len(v) for v in views)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="cnn")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--mu", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = setup(BaseConfig(device=args.device))
    peer = run("peer", args, device)
    ours = run("ours", args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print("| device | backbone | B | mu | peer img/s (torchvision per-image) | ours img/s (batched) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {name} | {args.backbone} | {args.batch} | {args.mu} | {peer:.0f} | {ours:.0f} | {ours / peer:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
