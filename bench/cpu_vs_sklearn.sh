#!/usr/bin/env bash
# flashgmm's CPU engine against scikit-learn's
# GaussianMixture(covariance_type="diag"), the usual way to fit these
# models (BENCHMARKS.md, section 1): same data, same initial model,
# N=200,000, K=256, D=128, 10 EM steps. Reports seconds per iteration, peak
# RSS of each process (/usr/bin/time -v), and the fraction of the machine's
# float32 matrix-product rate one EM step reaches (8*N*K*D flops), which
# says how far the engine is from what the hardware allows.
#
# With COV full or tied both fit that covariance type instead (one EM step
# is then about 4*N*K*D^2 flops for full, as scikit-learn computes it).
#
# usage: bash bench/cpu_vs_sklearn.sh [N K D ITERS [COV]]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000} K=${2:-256} D=${3:-128} IT=${4:-10} COV=${5:-diag}
PY=/usr/bin/python3
OUT=bench/out/cpu_vs_sklearn
rm -rf "$OUT" && mkdir -p "$OUT"
bazel build -c opt --dynamic_mode=off //tools:flashgmm >&2
$PY bench/make_problem.py "$OUT" "$N" "$K" "$D" 0 "$COV"

/usr/bin/time -v bazel-bin/tools/flashgmm fit --data "$OUT/data.npy" --init "$OUT/init" \
    --max-iter "$IT" --tol 0 --out "$OUT/fit" 2> "$OUT/flashgmm.log" > /dev/null
/usr/bin/time -v $PY bench/sklearn_fit.py "$OUT/data.npy" "$OUT/init" "$IT" \
    > "$OUT/sklearn.out" 2> "$OUT/sklearn.log"

GEMM=$($PY -c "
import numpy as np, time
a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
a @ a; t = time.perf_counter(); [a @ a for _ in range(5)]; dt = (time.perf_counter() - t) / 5
print(2 * 4096**3 / dt / 1e9)")

$PY - "$OUT" "$N" "$K" "$D" "$GEMM" "$COV" <<'PY'
import re, statistics, sys
out, n, k, d, gemm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
cov = sys.argv[6]
fl = open(f"{out}/flashgmm.log").read()
sk = open(f"{out}/sklearn.log").read() + open(f"{out}/sklearn.out").read()
ours = statistics.median(float(t) for t in re.findall(r"iter +\d+ .*?  ([0-9.]+)s", fl))
lls = re.findall(r"loglik (-?[0-9.]+)", fl)
theirs = float(re.search(r"sklearn_seconds_per_iter ([0-9.]+)", sk).group(1))
sk_lb = float(re.search(r"sklearn_lower_bound (-?[0-9.]+)", sk).group(1))
rss = [int(x) / 1024 for x in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", fl + sk)]
flops = 4 * n * k * d * d if cov == "full" else 8 * n * k * d
print(f"N={n} K={k} D={d} covariance {cov}")
print(f"flashgmm      {ours:.3f} s/iter  peak RSS {rss[0]:.0f} MiB  final loglik {lls[-1]}")
print(f"scikit-learn  {theirs:.3f} s/iter  peak RSS {rss[1]:.0f} MiB  final loglik {sk_lb:.6f}")
print(f"speed-up {theirs / ours:.1f}x   memory {rss[1] / rss[0]:.1f}x less")
if cov != "tied":
  print(f"EM step {flops / ours / 1e9:.1f} GFLOP/s = {100 * flops / ours / 1e9 / gemm:.0f}% of "
        f"this machine's float32 matrix product ({gemm:.0f} GFLOP/s, numpy/OpenBLAS 4096^3)")
PY
