#!/usr/bin/env bash
# Issue 4's kernel table, run ON the GPU machine (it has no Bazel): the
# binaries come from bench/device_build.sh, packed in .devbin/bins.tar.xz.
#   bash bench/estep_table.sh OUTDIR
# Rows already in device memory; one full E-side of an EM step per timing
# (log-sum-exp, statistics, reductions); 8*N*K*D flops per step. Then the
# PyTorch reference (materialises N x K) on the same shape, in the same call.
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
run() { timeout 120 $B/estep_bench "$@" 2>&1 | tee -a "$OUTD/estep_table.txt"; }
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUTD/estep_table.txt"
for mode in default fast; do
  for K in 256 1024 4096 16384; do run 1000000 $K 128 5 $mode 2048; done
  run 1000000 1024 96 5 $mode 2048
done
run 1000000 1024 768 3 default 1024
run 1000000 1024 128 3 fp32 1024
for K in 256 1024 4096; do run 10000000 $K 128 3 default 1024; done
python3 $B/torch_reference.py 1000000 1024 128 2>&1 | tee -a "$OUTD/estep_table.txt"
