#!/usr/bin/env bash
# The full- and tied-covariance table (BENCHMARKS.md, section 17): one EM
# step of K=1024, D=128 on the GPU at N = 200,000 and 1,000,000 (phases,
# and the GPU's statistics against the CPU's float64 on 20,000 rows, from
# bazel-bin/bench/engine_bench), then, when FLASH_GMM_DIR names a checkout
# of github.com/IBM/Flash-GMM, its full-covariance E-step and PyTorch's
# materialising step on data of the same structure
# (bench/flash_gmm_peer.py) at N in PEER_SIZES (default: both). With
# "tests", the GPU tests run first.
#   bash bench/matrix_table.sh [OUTDIR] [tests]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
gpu_log matrix_table.txt "${1:-}"
need bench/engine_bench
gpu_header "$T"
[ "${2:-}" = tests ] && gpu_tests "$OUTD" "$T"
step() {  # COVARIANCE N STEPS
  echo "== $1 covariance, N=$2, $3 steps" | tee -a "$T"
  FGMM_BENCH_REG_COVAR=1e-3 FGMM_BENCH_COVARIANCE=$1 timeout 300 \
    "$BIN/bench/engine_bench" cuda "$2" 1024 128 "$3" 2>&1 | tee -a "$T"
}
step full 200000 3
step full 1000000 2
step tied 1000000 2
if [ -n "${FLASH_GMM_DIR:-}" ]; then
  for n in ${PEER_SIZES:-200000 1000000}; do
    echo "== Flash-GMM and PyTorch, N=$n" | tee -a "$T"
    timeout 300 python3 "$ROOT/bench/flash_gmm_peer.py" "$FLASH_GMM_DIR" full "$n" 1024 128 2>&1 |
      tee -a "$T"
  done
fi
