# shellcheck shell=bash
# Sourced by the GPU benchmark scripts (bench/estep_table.sh,
# engine_phases.sh, fp64_device.sh, matrix_table.sh).
#
# The binaries are those of
#   bazel build --config=sm90 -c opt --dynamic_mode=off //...
# statically linked, so they run without Bazel or the build's libraries
# beside them. $BIN (default: <repository root>/bazel-bin) holds their
# bench/, tests/ and tools/ directories.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/bazel-bin}

# need PATH...: stops, saying what to build, when a binary under $BIN is
# missing (better than timing nothing).
need() {
  local b
  for b in "$@"; do
    [ -x "$BIN/$b" ] && continue
    echo "$BIN/$b: not found; build it with" \
         "'bazel build --config=sm90 -c opt --dynamic_mode=off //...' or set BIN" >&2
    exit 2
  done
}

# mnist_path: MNIST's base.u8bin into $MNIST, default shared/data/mnist/
# under the repository root, else ../shared/ beside it; stops when absent.
mnist_path() {
  MNIST=${MNIST:-$ROOT/shared/data/mnist/base.u8bin}
  [ -f "$MNIST" ] || MNIST=$ROOT/../shared/data/mnist/base.u8bin
  [ -f "$MNIST" ] || { echo "MNIST not found; set MNIST=path/to/base.u8bin" >&2; exit 2; }
}

# gpu_log FILE [OUTDIR]: OUTD (default bench/out/gpu) made, and T, the
# script's log OUTD/FILE, started empty.
gpu_log() {
  OUTD=${2:-$ROOT/bench/out/gpu}
  mkdir -p "$OUTD"
  T="$OUTD/$1"
  : > "$T"
}

# gpu_header LOG: the GPU and host the figures belong to.
gpu_header() {
  { nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
    echo "host cores: $(nproc)"; } | tee -a "$1"
}

# gpu_tests OUTDIR LOG: the GPU test binaries, one log each in OUTDIR and
# one line of results per binary in LOG, then any failure lines. Figures
# from a build that fails its tests are not worth recording.
gpu_tests() {
  local t
  need tests/cuda_test tests/engine_gpu_test tests/assign_test tests/dist_gpu_test
  for t in cuda_test engine_gpu_test assign_test dist_gpu_test; do
    # A GPU test that skips here would hide a broken device or build.
    FGMM_REQUIRE_GPU=1 timeout 300 "$BIN/tests/$t" > "$1/$t.log" 2>&1
    echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$1/$t.log" | tr '\n' ' ')" | tee -a "$2"
  done
  grep -hE "FAILED|Failure" "$1"/cuda_test.log "$1"/engine_gpu_test.log "$1"/assign_test.log "$1"/dist_gpu_test.log |
    head -20 | tee -a "$2"
}
