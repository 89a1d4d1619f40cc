#!/usr/bin/env bash
# Out-of-core EM (BENCHMARKS.md, section 3): the CPU engine on shard
# directories larger than the machine's RAM, streamed from disk every step
# (--cache-budget 0). The goal is a step no slower than 1.1 x the larger of
# reading the data and computing on it. For each size it measures,
# separately and from a cold page cache:
#   read time     the reader alone (bench/reader_bench): 2 passes just
#                 before the fit and 2 just after (O_DIRECT: every pass reads
#                 the disk, whose speed drifts), median of 4;
#   compute time  one EM step of the same engine on rows already in memory
#                 (bench/engine_bench on SUB rows, scaled by N/SUB: the step
#                 is linear in N);
#   EM step       the fit's own per-step times (3 steps) and its peak RSS
#                 (/usr/bin/time -v).
# Data is generated straight into shards (bench/gen_shards, never committed)
# under ${BENCH_DIR:-bench/out/ooc}. Needs root for drop_caches.
# The fits run with FIT_FLAGS (default --pin-threads: each engine thread on
# its own core, the setting for streaming on a small machine; FIT_FLAGS=
# for the scheduler's placement).
# usage: bash bench/out_of_core.sh [K] [SIZES_GIB...]   (default 16, sizes 8 32)
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-16}; shift || true
SIZES=${*:-8 32}
D=128 SUB=4194304
DIR=${BENCH_DIR:-bench/out/ooc}
FIT_FLAGS=${FIT_FLAGS---pin-threads}
mkdir -p "$DIR"
bazel build -c opt --dynamic_mode=off //tools:flashgmm //bench:engine_bench //bench:gen_shards \
    //bench:reader_bench >&2
B=bazel-bin
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

cold
comp1=$($B/bench/engine_bench cpu $SUB $K $D 3 | sed -n 's/.*: \([0-9.]*\) s\/step.*/\1/p')
{
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, K=$K D=$D float32, CPU engine, cache budget 0, fit flags: ${FIT_FLAGS:-none}"
echo "compute: $comp1 s per EM step for $SUB in-memory rows (engine_bench)"
for G in $SIZES; do
  N=$(( G * 1073741824 / (D * 4) ))
  S="$DIR/gauss${G}g"
  [ -f "$S/manifest.json" ] || $B/bench/gen_shards "$S" $N $D 16 1 1
  cold
  $B/bench/reader_bench "$S" 0 16 direct 2 > "$DIR/read$G.txt"
  comp=$(echo "$comp1 * $N / $SUB" | bc -l)
  rm -rf "$DIR/model$G"
  cold
  /usr/bin/time -v $B/tools/flashgmm fit --data "$S" --k $K --max-iter 3 --tol 0 --cache-budget 0 $FIT_FLAGS \
      --out "$DIR/model$G" > "$DIR/fit$G.out" 2> "$DIR/fit$G.log"
  $B/bench/reader_bench "$S" 0 16 direct 2 >> "$DIR/read$G.txt"
  read_s=$(sed -n 's/^pass [0-9]: \([0-9.]*\) s.*/\1/p' "$DIR/read$G.txt" | sort -n | sed -n 2,3p |
           awk '{s += $1} END {print s / 2}')
  steps=$(sed -n 's/^iter .*  \([0-9.]*\)s  .*/\1/p' "$DIR/fit$G.log" | tr '\n' ' ')
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$DIR/fit$G.log")
  med=$(echo $steps | tr ' ' '\n' | sort -n | sed -n 2p)
  mx=$(echo "if ($read_s > $comp) $read_s else $comp" | bc -l)
  printf "%3d GiB (%d rows): read %.1f s, compute %.1f s, EM steps %s s -> median %.1f s = %.3f x max(read, compute); peak RSS %.0f MiB\n" \
    "$G" "$N" "$read_s" "$comp" "$steps" "$med" "$(echo "$med / $mx" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  # The disk's speed can drift by up to 40% within minutes, so each EM step
  # is also timed right after a read-alone pass of the same data:
  # PAIRS x (cold cache, one reader pass; cold cache, one EM step from the
  # fitted model). Ratio per pair: step / max(that read, compute).
  ratios=""
  for i in $(seq 1 ${PAIRS:-3}); do
    cold
    r=$($B/bench/reader_bench "$S" 0 16 direct 1 | sed -n 's/^pass 1: \([0-9.]*\) s.*/\1/p')
    rm -rf "$DIR/step$G"
    cold
    $B/tools/flashgmm fit --data "$S" --init "$DIR/model$G" --max-iter 1 --tol 0 --cache-budget 0 $FIT_FLAGS \
        --out "$DIR/step$G" > /dev/null 2> "$DIR/step$G.log"
    st=$(sed -n 's/^iter .*  \([0-9.]*\)s  .*/\1/p' "$DIR/step$G.log")
    m2=$(echo "if ($r > $comp) $r else $comp" | bc -l)
    q=$(echo "$st / $m2" | bc -l)
    ratios="$ratios $(printf %.3f $q)"
    printf "      pair %d: read %.2f s, EM step %.2f s -> %.3f\n" "$i" "$r" "$st" "$q"
  done
  printf "      paired ratios:%s -> median %s\n" "$ratios" "$(echo $ratios | tr ' ' '\n' | sort -n | sed -n "$(( (${PAIRS:-3} + 1) / 2 ))p")"
done
} | tee "$DIR/results.txt"
