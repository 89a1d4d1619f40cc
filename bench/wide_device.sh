#!/usr/bin/env bash
# Run ON the GPU machine (binaries from bench/device_build.sh, carried in
# .devbin/): the GPU tests, then the wide-row (D > 128) E-step shapes of
# issue 4 against the SIMT fp32 kernels they replace and PyTorch's
# materialising step, and the Hopper kernel B row-tile A/B (32 vs 64).
#   bash bench/wide_device.sh OUTDIR
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUTD/wide.txt"
for t in cuda_test engine_gpu_test assign_test; do
  timeout 300 $B/$t > "$OUTD/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" | tee -a "$OUTD/wide.txt"
done
grep -E "FAILED|Failure|error" "$OUTD"/cuda_test.log | head -20 | tee -a "$OUTD/wide.txt"
run() { echo "+ $*" >> "$OUTD/wide.txt"; timeout 150 "$@" 2>&1 | tee -a "$OUTD/wide.txt"; }
run $B/estep_bench 1000000 1024 768 5 default 1024
run $B/estep_bench 1000000 1024 768 5 fast 1024
run $B/estep_bench 1000000 1024 784 5 default 1024
run $B/estep_bench 1000000 256 768 5 default 1024
run $B/estep_bench 1000000 4096 768 3 default 512
run $B/estep_bench 200000 1024 768 3 fp32 512
for i in 1 2; do
  run $B/estep_bench 1000000 1024 128 9 default 2048
  run env FGMM_BENCH_BM=64 $B/estep_bench 1000000 1024 128 9 default 2048
done
run python3 $B/torch_reference.py 1000000 1024 768
run $B/engine_bench cuda 500000 1024 768 3 f32 fit
