#!/usr/bin/env bash
# Issue 4's kernel table, run ON the GPU machine (it has no Bazel): the
# binaries come from bench/device_build.sh, packed in .devbin/bins.tar.xz.
#   bash bench/estep_table.sh OUTDIR [tests]
# With "tests", the GPU test binaries run first (logs in OUTDIR). Rows
# already in device memory; one full E-side of an EM step per timing
# (log-sum-exp, statistics, reductions); 8*N*K*D flops per step. Then the
# PyTorch reference (materialises N x K) on the same shapes, in the same
# call, and the tensor-core instructions in the SASS.
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
T="$OUTD/estep_table.txt"
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$T"
if [ "${2:-}" = tests ]; then
  for t in cuda_test engine_gpu_test assign_test; do
    timeout 300 $B/$t > "$OUTD/$t.log" 2>&1
    echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" | tee -a "$T"
  done
fi
run() { timeout 120 $B/estep_bench "$@" 2>&1 | grep -v "plan for" | tee -a "$T"; }
for mode in default fast; do
  for K in 256 1024 4096 16384; do run 1000000 $K 128 5 $mode 1024; done
  run 1000000 1024 96 5 $mode 1024
done
for K in 256 1024 4096; do run 1000000 $K 768 5 default 256; done
run 1000000 1024 768 5 fast 256
run 1000000 1024 784 5 default 256
run 200000 1024 768 3 fp32 256
for K in 256 1024; do run 10000000 $K 128 3 default 1024; done
python3 $B/torch_reference.py 1000000 1024 128 2>&1 | tee -a "$T"
python3 $B/torch_reference.py 1000000 1024 768 2>&1 | tee -a "$T"
if command -v cuobjdump > /dev/null; then
  echo "SASS of estep_bench (tensor-core instructions):" | tee -a "$T"
  cuobjdump -sass $B/estep_bench | grep -oE "(HGMMA|HMMA)\.[0-9A-Za-z.]+" | sort | uniq -c | tee -a "$T"
  echo "SASS of the wide kernels:" | tee -a "$T"
  cuobjdump -sass $B/estep_bench | awk '/Function : /{f=($0 ~ /wide_(logits|stats)/)} f' |
    grep -oE "HMMA\.[0-9A-Za-z.]+" | sort | uniq -c | tee -a "$T"
fi
