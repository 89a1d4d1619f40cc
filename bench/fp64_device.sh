#!/usr/bin/env bash
# Run ON the GPU machine: the float64 path (cuda/estep_f64.cu) that takes
# the passes the tensor cores cannot form. Carried: .devbin
# (bench/device_build.sh) and bench/out/mnist.shards, bench/out/mnist_init
# (see bench/mnist_device.sh). The GPU tests; 10 EM steps on MNIST from the
# kmeans++ model (every pass ill-conditioned: blank pixels at reg_covar
# 1e-6) and a scoring pass; engine_bench at K = 1024 on its default data,
# whose single-row components send its passes (assignment too) to float64.
#   bash bench/fp64_device.sh OUTDIR
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
T="$OUTD/fp64.txt"
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$T"
for t in cuda_test engine_gpu_test assign_test; do
  timeout 300 $B/$t > "$OUTD/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" | tee -a "$T"
done
grep -E "FAILED|Failure|blank pixels|float64|Float64" "$OUTD"/*_test.log | head -40 | tee -a "$T"
rm -rf /tmp/m_gpu
timeout 120 $B/flashgmm fit --data bench/out/mnist.shards --init bench/out/mnist_init --max-iter 10 \
  --tol 0 --device cuda --out /tmp/m_gpu 2>&1 | grep -v "^reader" | tee -a "$T"
timeout 60 $B/flashgmm score --data bench/out/mnist.shards --model /tmp/m_gpu --device cuda 2>&1 |
  grep -v "^reader" | tee -a "$T"
for args in "1000000 1024 128 3" "500000 1024 768 2"; do
  echo "== engine_bench cuda $args f32 fit" | tee -a "$T"
  timeout 200 $B/engine_bench cuda $args f32 fit 2>&1 | grep -E "^(iter|fit:|step|cuda|init)" | cut -c1-260 | tee -a "$T"
done
