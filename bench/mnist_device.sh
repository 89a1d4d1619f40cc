#!/usr/bin/env bash
# Run ON the GPU machine: the real-data check of the wide (D = 784) path.
# Carried: .devbin (bench/device_build.sh) and bench/out/ with
#   bench/out/mnist.shards  flashgmm shard --input shared/data/mnist/base.u8bin
#   bench/out/mnist_init    flashgmm fit ... --k 256 --init kmeans++ --seed 1 --max-iter 0 --device cpu
# Fits 10 EM steps from that model on the GPU in each precision mode; the
# CPU fit from the same model (run on the development VM) is the reference.
#   bash bench/mnist_device.sh OUTDIR
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
for p in default fast; do
  rm -rf /tmp/m_$p
  $B/flashgmm fit --data bench/out/mnist.shards --init bench/out/mnist_init --max-iter 10 --tol 0 \
    --device cuda --precision $p --out /tmp/m_$p > "$OUTD/mnist_$p.txt" 2>&1
  echo "rc=$?" >> "$OUTD/mnist_$p.txt"
done
for t in engine_gpu_test assign_test cuda_test; do
  timeout 200 $B/$t > "$OUTD/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" >> "$OUTD/tests.txt"
done
timeout 100 $B/engine_bench cuda 200000 1024 768 3 f32 fit > "$OUTD/engine_bench.txt" 2>&1
