#!/usr/bin/env bash
# Run ON the GPU machine after bench/device_build.sh: GPU tests, then A/B
# of the wide kernels' tile variants (per-kernel times, estep_bench_vN) and
# the engine's fit step at D = 768.
#   bash bench/wide_ab.sh OUTDIR
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
L="$OUTD/ab.txt"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$L"
for t in cuda_test engine_gpu_test assign_test; do
  timeout 300 $B/$t > "$OUTD/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" | tee -a "$L"
done
grep -E "FAILED|Failure" "$OUTD"/*_test.log | head -20 | tee -a "$L"
run() { echo "+ $*" >> "$L"; timeout 120 "$@" 2>&1 | grep -v "^wide plan" | tee -a "$L"; }
for v in estep_bench estep_bench_v1 estep_bench_v2 estep_bench_v3; do
  run $B/$v 1000000 1024 768 5 default 256
  run $B/$v 1000000 1024 768 5 fast 256
  run $B/$v 1000000 256 768 5 default 256
done
run $B/engine_bench cuda 500000 1024 768 3 f32 fit
