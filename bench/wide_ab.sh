#!/usr/bin/env bash
# A/B of the wide (D > 128) kernels' tile shapes (cuda/estep_wide.cu,
# wide_cfg) in one run, so that the variants see the same GPU state: per
# binary, the per-kernel times (rows, logits, normalisation, statistics) of
# estep_bench at D = 768, then the engine's fit step at D = 768. Compares
# bazel-bin/bench/estep_bench with every estep_bench_v* beside it (builds of
# estep_wide.cu with -DWD_VARIANT=N), or with the binaries named in
# VARIANTS. The GPU tests run first.
#   bash bench/wide_ab.sh [OUTDIR]
set -uo pipefail
. "$(dirname "$0")/gpu_common.sh"
OUTD=${1:-$ROOT/bench/out/gpu}
mkdir -p "$OUTD"
L="$OUTD/wide_ab.txt"
: > "$L"
need bench/estep_bench bench/engine_bench
gpu_header "$L"
gpu_tests "$OUTD" "$L"
VARIANTS=${VARIANTS:-$(ls "$BIN"/bench/estep_bench_v* 2> /dev/null)}
[ -n "$VARIANTS" ] || echo "no estep_bench_v* under $BIN/bench: timing estep_bench alone" | tee -a "$L"
run() { echo "+ $*" >> "$L"; timeout 120 "$@" 2>&1 | grep -v "^wide plan" | tee -a "$L"; }
for v in "$BIN/bench/estep_bench" $VARIANTS; do
  run "$v" 1000000 1024 768 5 default 256
  run "$v" 1000000 1024 768 5 fast 256
  run "$v" 1000000 256 768 5 default 256
done
run "$BIN/bench/engine_bench" cuda 500000 1024 768 3 f32 fit
