#!/usr/bin/env bash
# Where an EM step's time goes through the engine, run ON the GPU machine:
# the GPU tests, then fgmm_fit steps (rows cached on the GPU after step 1)
# with each step's phases (setup, rows, finish, M-step; engine_bench prints
# them), for the current binaries and, when .devbin/engine_bench_old.xz
# exists (engine_bench of an earlier commit), for that one in the same call.
# Only well-conditioned fits: a pass the engine hands to the CPU
# (FGMM_GPU_MAGNITUDE) would time the CPU.
#   bash bench/engine_phases.sh OUTDIR [tests]
set -uo pipefail
OUTD=${1:-.}
B=/tmp/b
T="$OUTD/engine_phases.txt"
mkdir -p $B && tar xJf .devbin/bins.tar.xz -C $B
[ -f .devbin/engine_bench_old.xz ] && xz -dc .devbin/engine_bench_old.xz > $B/engine_bench_old &&
  chmod +x $B/engine_bench_old
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$T"
nproc | sed 's/^/host cores: /' | tee -a "$T"
if [ "${2:-}" = tests ]; then
  for t in cuda_test engine_gpu_test assign_test; do
    timeout 300 $B/$t > "$OUTD/$t.log" 2>&1
    echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/$t.log" | tr '\n' ' ')" | tee -a "$T"
  done
fi
fit() { # binary N K D iters
  echo "== $1 cuda $2 $3 $4 $5 f32 fit${FGMM_BENCH_REG_COVAR:+ (reg_covar $FGMM_BENCH_REG_COVAR)}" | tee -a "$T"
  timeout 150 $B/$1 cuda $2 $3 $4 $5 f32 fit 2>&1 | grep -E "^(iter|fit:|step|cuda|init)" | tee -a "$T"
}
for bin in engine_bench engine_bench_old; do
  [ -x $B/$bin ] || continue
  fit $bin 1000000 64 128 6
  fit $bin 500000 64 768 4
  # K=1024 on this data makes single-point components (variance reg_covar)
  # that send every pass to the CPU; a floor of 25 (the clusters' variance
  # is 100) keeps them on the GPU.
  FGMM_BENCH_REG_COVAR=25 fit $bin 1000000 1024 128 6
  FGMM_BENCH_REG_COVAR=25 fit $bin 500000 1024 768 4
done
