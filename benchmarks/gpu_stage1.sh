#!/usr/bin/env bash
# Stage-1 checks on a GPU machine, as one prepared script: the step-rate benchmark, the long-profile accuracy
# grid (3 algorithms x 1/2/5 labels per class x seeds, one process per cell in parallel on the one GPU) and the
# full-supervision reference. Expects the prepared Fashion-MNIST shards in .gpu/prepared and writes to $OUT.
#   bash benchmarks/gpu_stage1.sh  [deadline seconds, default 420]
set -u
deadline=${1:-420}
out=${OUT:-/tmp/out}
logs=/tmp/stage1-logs
mkdir -p "$out" "$logs" data/prepared
[ -d data/prepared/fashion-mnist ] || cp -r .gpu/prepared data/prepared/fashion-mnist
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 benchmarks/stage1_step_rate.py --device cuda --batch 64 --mu 7 --steps 40 | tee "$out/step_rate.md"
python3 benchmarks/stage1_step_rate.py --device cuda --batch 64 --mu 7 --steps 20 --backbone wrn28_2 --size 32 \
  | tail -n 1 | tee -a "$out/step_rate.md"
long=(-S stage1.steps=4000 -S stage1.batch_size=10 -S stage1.mu=14 -S stage1.ema_decay=0.999 -S stage1.eval_every=500)
for algorithm in supervised fixmatch freematch; do
  for lpc in 1 2 5; do
    timeout "$deadline" python3 benchmarks/stage1_grid.py --algorithms $algorithm --lpc $lpc --seeds 0,1,2 \
      --tag long "${long[@]}" --out "$logs/long-$algorithm-$lpc.json" > "$logs/log-long-$algorithm-$lpc.txt" 2>&1 &
    timeout "$deadline" python3 benchmarks/stage1_grid.py --algorithms $algorithm --lpc $lpc --seeds 0,1,2 \
      --tag default --out "$logs/default-$algorithm-$lpc.json" > "$logs/log-default-$algorithm-$lpc.txt" 2>&1 &
  done
done
timeout "$deadline" python3 benchmarks/stage1_grid.py --full-supervision --seeds 0 --tag full -S stage1.steps=4000 \
  -S stage1.batch_size=128 -S stage1.eval_every=500 -S stage1.ema_decay=0.999 \
  --out "$logs/grid-full.json" > "$logs/log-full.txt" 2>&1 &
wait
cat "$logs"/log-*.txt | grep '^{' > "$out/rows.jsonl"
tar -czf "$out/logs.tar.gz" -C "$logs" .
wc -l "$out/rows.jsonl"
