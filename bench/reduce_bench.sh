#!/usr/bin/env bash
# The per-step reduction of the statistics (bench/reduce_bench.c) over the
# MPI reducer with R = 1, 2, 3 ranks on this machine, as a table.
#
# usage: bash bench/reduce_bench.sh [OUTDIR]
#   OUTDIR (default reduce_out) receives raw.txt (reduce_bench's lines)
#   and table.md. Environment: RANKS ("1 2 3"), KS ("1024,16384,65536"),
#   D (128), REPS (10), WARMUP (2), BIN (bazel-bin/bench); TABLE_ONLY=1
#   rebuilds table.md from an existing raw.txt.
set -euo pipefail

BIN=${BIN:-bazel-bin/bench}
OUT=${1:-reduce_out}
RANKS=${RANKS:-"1 2 3"}
KS=${KS:-1024,16384,65536}
D=${D:-128}
REPS=${REPS:-10}
WARMUP=${WARMUP:-2}

if [[ ! -x $BIN/reduce_bench ]]; then
    echo "reduce_bench.sh: $BIN/reduce_bench is missing; build it with" >&2
    echo "  bazel build -c opt //bench:reduce_bench" >&2
    exit 1
fi
command -v mpirun >/dev/null || { echo "reduce_bench.sh: mpirun not found (Open MPI)" >&2; exit 1; }

mkdir -p "$OUT"
[[ ${TABLE_ONLY:-0} == 1 ]] || : >"$OUT/raw.txt"
[[ ${TABLE_ONLY:-0} == 1 ]] || for r in $RANKS; do
    echo "R=$r ..." >&2
    mpirun --allow-run-as-root --oversubscribe -np "$r" "$BIN/reduce_bench" \
        --k "$KS" --d "$D" --reps "$REPS" --warmup "$WARMUP" | tee -a "$OUT/raw.txt"
done

{
    echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo
    echo "| R | K | MB per rank | MB received per rank | total median (min) s | serialize s | gather median (min) s | sum median (min) s | gather GB/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    awk '$1 == "reduce" {
        delete v
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "| %d | %d | %.1f | %.1f | %.4f (%.4f) | %.4f | %.4f (%.4f) | %.4f (%.4f) | %s |\n",
            v["ranks"], v["k"], v["bytes_per_rank"] / 1e6, v["recv_bytes"] / 1e6,
            v["total_median_s"], v["total_min_s"], v["serialize_median_s"],
            v["gather_median_s"], v["gather_min_s"], v["sum_median_s"], v["sum_min_s"],
            (v["ranks"] > 1 ? sprintf("%.2f", v["gather_recv_GBps"]) : "-")
    }' "$OUT/raw.txt"
} >"$OUT/table.md"
cat "$OUT/table.md"
