#!/usr/bin/env bash
# Run ON the GPU machine after bench/device_build.sh: GPU tests, then A/B
# of the wide kernels' pipeline variants (per-kernel times) and of the
# Hopper kernel B's row tile (64, the default, against 32) at several widths.
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
for v in estep_bench estep_bench_s2m2 estep_bench_s4; do
  run $B/$v 1000000 1024 768 5 default 256
  run $B/$v 1000000 1024 768 5 fast 256
done
for shape in "1000000 1024 96" "1000000 1024 64" "1000000 256 128" "1000000 4096 128"; do
  run $B/estep_bench $shape 5 default 1024
  run env FGMM_BENCH_BM=32 $B/estep_bench $shape 5 default 1024
done
run $B/estep_bench 1000000 1024 128 5 fast 1024
run env FGMM_BENCH_BM=32 $B/estep_bench 1000000 1024 128 5 fast 1024
