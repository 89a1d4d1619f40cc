#!/usr/bin/env bash
# The GPU E-step table (BENCHMARKS.md, sections 4, 5 and 9). Per shape and
# precision mode: one full E-side of an EM step with the rows already in
# device memory (log-sum-exp, statistics, reductions; 8*N*K*D flops), the
# median of several steps, and the errors against float64 on the first
# rows (bazel-bin/bench/estep_bench). Then PyTorch's materialising step on
# the same shapes (bench/torch_reference.py), the comparison the kernels
# exist to beat, and the tensor-core instructions in the SASS, which show
# that the kernels timed are the tensor-core ones (HGMMA on sm_90a, HMMA in
# the wide kernels). With "tests", the GPU tests run first.
#   bash bench/estep_table.sh [OUTDIR] [tests]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
gpu_log estep_table.txt "${1:-}"
need bench/estep_bench
gpu_header "$T"
[ "${2:-}" = tests ] && gpu_tests "$OUTD" "$T"
run() { timeout 120 "$BIN/bench/estep_bench" "$@" 2>&1 | grep -v "plan for" | tee -a "$T"; }
for mode in default fast; do
  for K in 256 1024 4096 16384; do run 1000000 $K 128 5 $mode 1024; done
  run 1000000 1024 96 5 $mode 1024
done
for K in 256 1024 4096; do run 1000000 $K 768 5 default 256; done
run 1000000 1024 768 5 fast 256
run 1000000 1024 784 5 default 256
run 200000 1024 768 3 fp32 256
for K in 256 1024; do run 10000000 $K 128 3 default 1024; done
python3 "$ROOT/bench/torch_reference.py" 1000000 1024 128 2>&1 | tee -a "$T"
python3 "$ROOT/bench/torch_reference.py" 1000000 1024 768 2>&1 | tee -a "$T"
if command -v cuobjdump > /dev/null; then
  echo "SASS of estep_bench (tensor-core instructions):" | tee -a "$T"
  cuobjdump -sass "$BIN/bench/estep_bench" | grep -oE "(HGMMA|HMMA)\.[0-9A-Za-z.]+" |
    sort | uniq -c | tee -a "$T"
  echo "SASS of the wide kernels:" | tee -a "$T"
  cuobjdump -sass "$BIN/bench/estep_bench" | awk '/Function : /{f=($0 ~ /wide_(logits|stats)/)} f' |
    grep -oE "HMMA\.[0-9A-Za-z.]+" | sort | uniq -c | tee -a "$T"
fi
