"""`evaluate`'s wall time before and after the generation metrics of issue 29 (sFID, IS, precision/recall,
class FID, near-copies), side by side on the same inputs, on this machine's CPU.

One workspace: this checkout's tracked files in a temporary folder, the smoke profile's models, and the default
profile's evaluate sizes (`sample.images_per_class` 200, i.e. 2,000 generated images; `eval.fid_ref_images`
2,000). `dvc repro stage3 fid_reference` builds the inputs with this checkout's code (its reference file holds
a superset of the previous format's arrays, so both versions read it). Then `python -m dpt_repro.cli evaluate`
runs with the previous commit's `src/` (`git archive`) and with ours, alternately, `--repeats` times each, and
the script prints both wall times, their ratio and both FIDs (which must agree: same reference, same pass).

    python benchmarks/evaluate_metrics.py --before a664e82            # ~35 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACKED = ["dvc.yaml", "params.yaml", "configs", "src", ".dvc/config", ".dvcignore", ".gitignore", "pyproject.toml"]
SIZES = ["sample.images_per_class=200", "eval.fid_ref_images=2000"]
NEW_KEYS = ("pr_images", "class_fid_images", "inception_score_split", "inception_logits_weights",
            "inception_logits_sha256")  # eval keys the previous code does not know (its loader refuses them)


def sh(args, cwd, pythonpath=None, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def workspace(root: Path) -> Path:
    repo = root / "repo"
    for item in TRACKED:
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    sh(["git", "init", "-q"], repo)
    sh(["dpt-repro", "profile", "smoke"], repo)
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for item in SIZES:
        key, value = item.split("=")
        section, name = key.split(".")
        params[section][name] = int(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    params["eval"] = {k: v for k, v in params["eval"].items() if k not in NEW_KEYS}
    (repo / "params-before.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "bench"], repo)
    t0 = time.perf_counter()
    sh(["dvc", "repro", "stage3", "fid_reference"], repo)
    print(f"inputs built in {time.perf_counter() - t0:.0f} s", flush=True)
    return repo


def previous_src(root: Path, rev: str) -> Path:
    out = root / "before"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def timed_evaluate(repo: Path, src: Path, params: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "dpt_repro.cli", "evaluate", "--params", params], repo, pythonpath=src)
    return time.perf_counter() - t0, json.loads((repo / "metrics" / "eval.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the git revision before the change")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep the workspace here (for benchmarks/generation_check.py)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dpt-eval-bench-"))
    repo = workspace(root)
    versions = {"before": (previous_src(root, args.before), "params-before.yaml"),
                "ours": (repo / "src", "params.yaml")}
    times: dict[str, list[float]] = {name: [] for name in versions}
    results = {}
    for _ in range(args.repeats):
        for name, (src, params) in versions.items():
            seconds, results[name] = timed_evaluate(repo, src, params)
            times[name].append(seconds)
            print(f"{name}: {seconds:.1f} s", flush=True)
    best = {name: min(t) for name, t in times.items()}
    print(json.dumps({"wall_s": times, "ratio_ours_over_before": best["ours"] / best["before"],
                      "fid": {name: r["fid"] for name, r in results.items()},
                      "kid": {name: r["kid"] for name, r in results.items()},
                      "new_metrics": {k: results["ours"].get(k) for k in ("sfid", "inception_score", "precision",
                                                                          "recall", "class_fid", "near_copy_share")},
                      "hardware": results["ours"]["hardware"], "sizes": SIZES}, indent=2))
    if args.keep:
        shutil.copytree(repo, args.keep, symlinks=True)
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
