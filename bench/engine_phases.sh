#!/usr/bin/env bash
# Where a GPU EM step's time goes besides the kernels (BENCHMARKS.md,
# section 7): fgmm_fit steps through the engine, rows kept on the GPU after
# step 1, with each step's phases (setup, rows, finish, M-step) as
# bazel-bin/bench/engine_bench prints them. OLD=path/to/engine_bench times
# another build of it in the same run, for an A/B on the same machine state.
# Only well-conditioned fits: a pass above the engine's magnitude limit runs
# on the float64 kernels and would time those instead.
#   bash bench/engine_phases.sh [OUTDIR] [tests]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
gpu_log engine_phases.txt "${1:-}"
need bench/engine_bench
[ -z "${OLD:-}" ] || [ -x "$OLD" ] || { echo "OLD=$OLD: not an executable" >&2; exit 2; }
gpu_header "$T"
[ "${2:-}" = tests ] && gpu_tests "$OUTD" "$T"
fit() { # binary N K D iters
  echo "== $1 cuda $2 $3 $4 $5 f32 fit${FGMM_BENCH_REG_COVAR:+ (reg_covar $FGMM_BENCH_REG_COVAR)}" | tee -a "$T"
  timeout 150 "$1" cuda "$2" "$3" "$4" "$5" f32 fit 2>&1 | grep -E "^(iter|fit:|step|cuda|init)" | tee -a "$T"
}
for bin in "$BIN/bench/engine_bench" ${OLD:+"$OLD"}; do
  fit "$bin" 1000000 64 128 6
  fit "$bin" 500000 64 768 4
  # At K=1024 k-means++ on this data leaves components fitted to single rows
  # (variance reg_covar, logit terms of 2e11: float64 passes). A floor of 25
  # (the clusters' variance is 100) keeps the passes on the tensor cores.
  FGMM_BENCH_REG_COVAR=25 fit "$bin" 1000000 1024 128 6
  FGMM_BENCH_REG_COVAR=25 fit "$bin" 500000 1024 768 4
done
