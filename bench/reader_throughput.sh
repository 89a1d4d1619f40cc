#!/usr/bin/env bash
# Shard reader throughput (BENCHMARKS.md, section 2): decoded rows per
# second from a shard directory (io_uring, O_DIRECT, decompression threads)
# against the plain ways of reading the same rows, each with a cold page
# cache: `zstd -d -c` of the rows compressed at the same level into
# /dev/null, and the uncompressed file read by dd, buffered and O_DIRECT.
# The reader should beat both. GB/s are of decoded row bytes for all.
#
# Needs root for `echo 3 > /proc/sys/vm/drop_caches` (each run starts cold).
# Data (never committed) goes to ${BENCH_DIR:-bench/out/reader}:
#   mnist80.u8bin  the 60,000 MNIST training images ($MNIST), 80
#                  times over (3.76 GB): real, compressible uint8 rows;
#   gauss.fbin     4.3 GB of float32 rows from a 64-component Gaussian
#                  mixture: the incompressible case.
# usage: bash bench/reader_throughput.sh [THREADS] [QUEUE_DEPTH]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2} QD=${2:-16}
D=${BENCH_DIR:-bench/out/reader}
MNIST=${MNIST:-../shared/data/mnist/base.u8bin}
mkdir -p "$D"
bazel build -c opt --dynamic_mode=off //tools:flashgmm //bench:reader_bench >&2
B=bazel-bin
PY=/usr/bin/python3

if [ ! -f "$D/mnist80.u8bin" ]; then
  $PY - "$MNIST" "$D/mnist80.u8bin" <<'PY'
import numpy as np, sys
src = open(sys.argv[1], "rb").read()
n, d = np.frombuffer(src[:8], dtype=np.uint32)
rows = src[8:]
with open(sys.argv[2] + ".tmp", "wb") as f:
    f.write(np.array([n * 80, d], dtype=np.uint32).tobytes())
    for _ in range(80):
        f.write(rows)
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
PY
fi
if [ ! -f "$D/gauss.fbin" ]; then
  $PY - "$D/gauss.fbin" <<'PY'
import numpy as np, sys, os
n, d, k = 8_388_608, 128, 64
rng = np.random.default_rng(0)
mu = rng.normal(0, 3, (k, d)).astype(np.float32)
with open(sys.argv[1] + ".tmp", "wb") as f:
    f.write(np.array([n, d], dtype=np.uint32).tobytes())
    for s in range(0, n, 1 << 20):
        lab = rng.integers(0, k, 1 << 20)
        f.write((mu[lab] + rng.standard_normal((1 << 20, d), dtype=np.float32)).tobytes())
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
PY
fi

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

{
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | sed -n 's/^Model name: *//p'), threads=$T queue_depth=$QD"
printf "%-14s %10s %8s | %12s %12s %12s %12s\n" dataset "GB rows" ratio "dd buffered" "dd O_DIRECT" "zstd -d" "flashgmm"
for f in mnist80.u8bin gauss.fbin; do
  X="$D/$f"
  [ -f "$X.shards/manifest.json" ] || { rm -rf "$X.shards"; $B/tools/flashgmm shard --input "$X" --out "$X.shards" --level 3 >&2; }
  [ -f "$X.zst" ] || zstd -q -3 -T0 -f "$X" -o "$X.zst"
  bytes=$(( $(stat -c %s "$X") - 8 ))
  ratio=$(echo "$bytes / $(du -b --apparent-size -s "$X.shards" | cut -f1)" | bc -l)
  cold; t_dd=$(secs dd if="$X" of=/dev/null bs=16M)
  cold; t_ddd=$(secs dd if="$X" of=/dev/null bs=16M iflag=direct)
  cold; t_z=$(secs sh -c "zstd -q -d -c '$X.zst' > /dev/null")
  cold; t_r=$(secs $B/bench/reader_bench "$X.shards" "$T" "$QD" direct 1)
  g() { echo "$bytes / $1 / 1000000000" | bc -l; }
  printf "%-14s %10.2f %8.2f | %9.2f GB/s %9.2f GB/s %9.2f GB/s %9.2f GB/s\n" "$f" \
    "$(echo "$bytes/1000000000" | bc -l)" "$ratio" "$(g $t_dd)" "$(g $t_ddd)" "$(g $t_z)" "$(g $t_r)"
done
} | tee "$D/results.txt"
