#!/usr/bin/env bash
# The float64 GPU path (cuda/estep_f64.cu; BENCHMARKS.md, section 6): the
# passes whose logits cancel beyond what the tensor cores keep.
#  - MNIST (60,000 x 784 uint8) from a k-means++ model, 10 EM steps and a
#    scoring pass on the GPU: at the default reg_covar of 1e-6 its blank
#    pixels make every pass ill-conditioned, so every pass runs in float64;
#  - engine_bench at K = 1024 on its default data, whose single-row
#    components send its E-steps and its top-10 assignment to float64.
# With "cpu", the same passes on the CPU back end, the comparison.
# The GPU tests run first. MNIST's shards and initial model are made once,
# under bench/out/, from $MNIST (default: shared/data/mnist/base.u8bin under
# the repository root, else ../shared/ beside it).
#   bash bench/fp64_device.sh [OUTDIR] [cpu]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
gpu_log fp64.txt "${1:-}"
need tools/flashgmm bench/engine_bench
F="$BIN/tools/flashgmm"
S="$ROOT/bench/out/mnist.shards" M0="$ROOT/bench/out/mnist_init"
if [ ! -f "$S/manifest.json" ] || [ ! -f "$M0/model.json" ]; then
  mnist_path
  rm -rf "$S" "$M0"
  mkdir -p "$ROOT/bench/out"
  "$F" shard --input "$MNIST" --out "$S" || exit 1
  "$F" fit --data "$S" --k 256 --init kmeans++ --seed 1 --max-iter 0 --device cpu --out "$M0" || exit 1
fi
gpu_header "$T"
gpu_tests "$OUTD" "$T"
grep -hE "^\[ +(OK|FAILED) +\] .*(Float64|IllConditioned)" "$OUTD"/*_test.log | tee -a "$T"
devices=cuda
[ "${2:-}" = cpu ] && devices="cuda cpu"
for dev in $devices; do
  rm -rf "$OUTD/mnist_$dev"
  echo "== MNIST, 10 EM steps, $dev" | tee -a "$T"
  timeout 300 "$F" fit --data "$S" --init "$M0" --max-iter 10 --tol 0 --device "$dev" \
    --out "$OUTD/mnist_$dev" 2>&1 | grep -v "^reader" | tee -a "$T"
  timeout 120 "$F" score --data "$S" --model "$OUTD/mnist_$dev" --device "$dev" 2>&1 |
    grep -v "^reader" | tee -a "$T"
  for args in "1000000 1024 128 3" "500000 1024 768 2"; do
    echo "== engine_bench $dev $args f32 fit" | tee -a "$T"
    timeout 600 "$BIN/bench/engine_bench" "$dev" $args f32 fit 2>&1 |
      grep -E "^(iter|fit:|step|cuda|cpu|init|engine_bench)" | cut -c1-260 | tee -a "$T"
  done
done
