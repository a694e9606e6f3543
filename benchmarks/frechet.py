"""The Fréchet distance (FID, sFID, stage 2's FID curve) at the pipeline's sizes: the previous commit's
`metrics/fid.py` and this checkout's, side by side on the same covariances, alternately, in one process.

    python benchmarks/frechet.py --before 5501824          # ~2 min on a 2-core CPU

Sizes: pool3 (D = 2048) and sFID's spatial features (D = 7 x 17 x 17 = 2023); the generated side from 80 images
(the smoke profile: a singular covariance) and 2,000 (the default profile), the reference from 2,000 images.
Prints each timing, the ratio and both values (which must agree).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fid_module(rev: str | None):
    """`metrics/fid.py` at a git revision (None: this checkout's), imported under its own name."""
    if rev is None:
        path = ROOT / "src" / "dpt_repro" / "metrics" / "fid.py"
    else:
        source = subprocess.run(["git", "show", f"{rev}:src/dpt_repro/metrics/fid.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / f"fid_{rev}.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"fid_{rev or 'ours'}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def covariance(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated, non-negative features like pool3's: mean and covariance of n rows."""
    x = np.abs(rng.standard_normal((n, d)) @ (0.05 * rng.standard_normal((d, d))) + 0.3)
    return x.mean(0), np.cov(x, rowvar=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the previous code")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ways = {"before": fid_module(args.before), "ours": fid_module(None)}
    rng = np.random.default_rng(0)
    print("| D | generated rows | before s | ours s | ratio ours/before | before value | ours value |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for d in (2048, 2023):
        ref = covariance(rng, 2000, d)
        for n in (80, 2000):
            gen = covariance(rng, n, d)
            times: dict[str, list[float]] = {name: [] for name in ways}
            values = {}
            for _ in range(args.repeats):
                for name, module in ways.items():
                    start = time.perf_counter()
                    values[name] = module.frechet_distance(*gen, *ref)
                    times[name].append(time.perf_counter() - start)
            before, ours = min(times["before"]), min(times["ours"])
            print(f"| {d} | {n} | {before:.2f} | {ours:.2f} | {ours / before:.2f} | {values['before']:.6f} "
                  f"| {values['ours']:.6f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
