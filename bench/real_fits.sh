#!/usr/bin/env bash
# Real fits on the GPU as a user runs them (BENCHMARKS.md, real fits): the
# CLI's step times and what ran (bf16, split, stiff pairs, float64), each
# fit against --precision fp64 from the same start in the same call.
#  - MNIST (60,000 x 784 uint8), K=256 from k-means++ (seed 1), 20 steps:
#    blank pixels make every pass stiff at the default reg_covar;
#  - bench/make_problem.py, 4M x 128 float32, K=1024 from k-means++, 20
#    steps, and the same fit whole (load, initialisation, steps, save) with
#    its wall time by phase;
#  - engine_bench's default data at 1M x 1024 x 128, whose k-means++ model
#    has single-row components (variance reg_covar everywhere).
# MNIST from $MNIST (default: shared/data/mnist/base.u8bin under the
# repository root, else ../shared/ beside it).
#   bash bench/real_fits.sh [OUTDIR]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
gpu_log real_fits.txt "${1:-}"
need tools/flashgmm bench/engine_bench
F="$BIN/tools/flashgmm"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
gpu_header "$T"
mnist_path

# fit_table NAME DATA INIT: 20 steps from INIT in each mode; the step lines
# and the closing line of each.
fit_table() {
  local name=$1 data=$2 init=$3 p
  for p in auto default fp64; do
    echo "== $name, --precision $p" | tee -a "$T"
    timeout 300 "$F" fit --data "$data" --init "$init" --max-iter 20 --tol 0 --device cuda \
      --precision "$p" --out "$W/$name-$p" 2>&1 | grep -E "^(iter|fitted)" | cut -c1-230 | tee -a "$T"
  done
}

"$F" fit --data "$MNIST" --k 256 --init kmeans++ --seed 1 --max-iter 0 --device cuda \
  --out "$W/mnist0" > /dev/null 2>&1 || exit 1
fit_table mnist "$MNIST" "$W/mnist0"

python3 "$ROOT/bench/make_problem.py" "$W/p4" 4000000 1024 128 > /dev/null || exit 1
"$F" fit --data "$W/p4/data.npy" --k 1024 --init kmeans++ --seed 1 --max-iter 0 --device cuda \
  --out "$W/p40" > /dev/null 2>&1 || exit 1
fit_table 4m "$W/p4/data.npy" "$W/p40"
# The whole fit as a user runs it: loading, k-means++, 20 steps, saving,
# with --verbose's wall time by phase.
echo "== 4m whole fit (--verbose)" | tee -a "$T"
timeout 300 "$F" fit --data "$W/p4/data.npy" --k 1024 --seed 1 --max-iter 20 --tol 0 \
  --device cuda --verbose --out "$W/4m-whole" 2>&1 | grep -E "^(fit:|init|wall time|fitted)" |
  tee -a "$T"

for p in auto default fp64; do
  echo "== engine_bench cuda 1000000 1024 128 3 f32 fit, $p" | tee -a "$T"
  FGMM_BENCH_PRECISION=$p timeout 300 "$BIN/bench/engine_bench" cuda 1000000 1024 128 3 f32 fit 2>&1 |
    grep -E "^(iter|step|fit:)" | cut -c1-230 | tee -a "$T"
done
