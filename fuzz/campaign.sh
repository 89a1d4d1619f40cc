#!/usr/bin/env bash
# A libFuzzer campaign over the fuzz targets (fuzz/fuzz.h), with
# AddressSanitizer and UndefinedBehaviorSanitizer: builds each target with
# clang (Debian's `clang`), writes its seeds, fuzzes it for SECONDS, and
# prints per target the executions, the coverage reached, and the crashes
# (saved as fuzz/out/crash-<target>-*; replay one with the plain binary,
# bazel-bin/fuzz/<target> FILE, and keep it in fuzz/regressions/<target>/).
# Targets run side by side, FUZZ_JOBS at a time (default: every core),
# each in libFuzzer's fork mode with FUZZ_FORK workers when that is > 1.
# FUZZ_STATIC=1 links jansson and OpenBLAS statically, for a host without
# them; FUZZ_BUILD_ONLY=1 stops after building and writing the seeds, and
# FUZZ_PREBUILT=1 fuzzes with binaries and seeds built before (a host
# without clang). An earlier campaign's corpus in FUZZ_OUT is carried on.
#
# usage: bash fuzz/campaign.sh SECONDS [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:?usage: campaign.sh SECONDS [TARGET...]}
shift
ALL=(dataset_npy dataset_bin dataset_vecs model shards journal assignments)
TARGETS=("${@:-${ALL[@]}}")
OUT=${FUZZ_OUT:-fuzz/out}
JOBS=${FUZZ_JOBS:-$(nproc)}
CC=${CC:-clang}
mkdir -p "$OUT/obj" "$OUT/bin" "$OUT/corpus" "$OUT/seeds"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
CFLAGS="-std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -march=x86-64-v3 -I. $SAN"
LIBS="-l:liburing.a -l:libzstd.a -l:libxxhash.a -ljansson -lopenblas -lm -lpthread -ldl"
if [ "${FUZZ_STATIC:-}" = 1 ]; then
  LIBS="-no-pie -l:liburing.a -l:libzstd.a -l:libxxhash.a -l:libjansson.a -l:libopenblas.a"
  LIBS+=" -l:libgfortran.a -l:libquadmath.a -lm -lpthread -ldl"
fi
FORK=${FUZZ_FORK:-1}

if [ "${FUZZ_PREBUILT:-}" != 1 ]; then
# The product's C sources, instrumented for coverage once (no CUDA).
objs=()
for src in core/*.c io/*.c cpu/*.c backends/registry.c fuzz/fuzz.c; do
  obj="$OUT/obj/$(echo "$src" | tr / _).o"
  $CC $CFLAGS -fsanitize=fuzzer-no-link -DFUZZ_LIBFUZZER -c "$src" -o "$obj"
  objs+=("$obj")
done
build() {  # name source defines...
  local name=$1 src=$2; shift 2
  $CC $CFLAGS -fsanitize=fuzzer "$@" "$src" "${objs[@]}" $LIBS -o "$OUT/bin/$name"
}
for t in "${TARGETS[@]}"; do
  case $t in
    dataset_npy) build "$t" fuzz/dataset.c -DFUZZ_FORMAT=0 ;;
    dataset_bin) build "$t" fuzz/dataset.c -DFUZZ_FORMAT=1 ;;
    dataset_vecs) build "$t" fuzz/dataset.c -DFUZZ_FORMAT=2 ;;
    journal) build "$t" fuzz/shards.c -DFUZZ_JOURNAL ;;
    *) build "$t" "fuzz/$t.c" ;;
  esac
  FGMM_FUZZ_SEEDS="$OUT/seeds/$t" "$OUT/bin/$t" > /dev/null 2>&1
  mkdir -p "$OUT/corpus/$t"
done
fi
[ "${FUZZ_BUILD_ONLY:-}" = 1 ] && exit 0

run() {
  local t=$1
  local fork=()
  [ "$FORK" -gt 1 ] && fork=(-fork="$FORK" -ignore_crashes=1)
  mkdir -p "$OUT/corpus/$t"
  "$OUT/bin/$t" "${fork[@]}" "$OUT/corpus/$t" "$OUT/seeds/$t" -max_total_time="$SECONDS_PER_TARGET" \
    -max_len=70000 -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$OUT/crash-$t-" > "$OUT/$t.log" 2>&1 || true
}
active=0
for t in "${TARGETS[@]}"; do
  run "$t" &
  active=$((active + 1))
  if [ "$active" -ge "$JOBS" ]; then wait -n; active=$((active - 1)); fi
done
wait

printf '%-14s %12s %8s %8s %8s\n' target executions cov features crashes
for t in "${TARGETS[@]}"; do
  log="$OUT/$t.log"
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1 || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
  crashes=$(find "$OUT" -maxdepth 1 -name "crash-$t-*" | wc -l)
  # fork mode prints no final stats: its last status line counts the runs.
  [ -n "$execs" ] || execs=$(echo "$last" | grep -o '^#[0-9]*' | tr -d '#')
  printf '%-14s %12s %8s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
done
