#!/usr/bin/env bash
# Builds the GPU host's binaries (--config=sm90: Hopper kernels, statically
# linked) and packs them, stripped, into .devbin/bins.tar.xz with the
# layout of bazel-bin (bench/, tests/, tools/), for a host without Bazel:
#   mkdir -p /tmp/b && tar xJf .devbin/bins.tar.xz -C /tmp/b
#   BIN=/tmp/b bash bench/estep_table.sh OUTDIR tests
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(tools/flashgmm tests/cuda_test tests/engine_gpu_test tests/assign_test tests/core_test
         tests/dist_gpu_test
         bench/estep_bench bench/engine_bench bench/assign_bench bench/reduce_bench)
labels=()
for t in "${TARGETS[@]}"; do labels+=("//${t%/*}:${t#*/}"); done
bazel build --config=sm90 --noshow_progress "${labels[@]}"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for t in "${TARGETS[@]}"; do
  mkdir -p "$stage/${t%/*}"
  strip -o "$stage/$t" "bazel-bin/$t"
done
mkdir -p .devbin
tar cJf .devbin/bins.tar.xz -C "$stage" .
ls -la .devbin/bins.tar.xz
