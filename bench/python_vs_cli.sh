#!/usr/bin/env bash
# The Python package against the CLI and scikit-learn (BENCHMARKS.md,
# section 14): section 1's problem (bench/make_problem.py: N=200,000,
# K=256, D=128, the same initial model), 10 EM steps on the CPU. Reports
# seconds per EM step, the wall time of the fit itself, and the peak RSS of
# each process (/usr/bin/time -v). The package runs from the wheel the
# build makes, installed with pip into a virtual environment.
#
# usage: bash bench/python_vs_cli.sh [N K D ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000} K=${2:-256} D=${3:-128} IT=${4:-10}
PY=/usr/bin/python3
OUT=bench/out/python_vs_cli
rm -rf "$OUT" && mkdir -p "$OUT"
bazel build -c opt --noshow_progress //tools:flashgmm //python:wheel >&2
$PY -m venv --system-site-packages "$OUT/venv"
"$OUT/venv/bin/pip" install --quiet --no-index --no-deps --disable-pip-version-check \
  bazel-bin/python/flashgmm-*.whl
$PY bench/make_problem.py "$OUT" "$N" "$K" "$D"

/usr/bin/time -v bazel-bin/tools/flashgmm fit --device cpu --data "$OUT/data.npy" \
  --init "$OUT/init" --max-iter "$IT" --tol 0 --out "$OUT/fit" 2> "$OUT/cli.log" > "$OUT/cli.out"
/usr/bin/time -v "$OUT/venv/bin/python" bench/python_fit.py "$OUT/data.npy" "$OUT/init" "$IT" \
  > "$OUT/python.out" 2> "$OUT/python.log"
/usr/bin/time -v $PY bench/sklearn_fit.py "$OUT/data.npy" "$OUT/init" "$IT" \
  > "$OUT/sklearn.out" 2> "$OUT/sklearn.log"

$PY - "$OUT" <<'PY'
import json, re, statistics, sys
out = sys.argv[1]
def rss(log):
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)) / 1024
cli_log = open(f"{out}/cli.log").read()
cli_iter = statistics.median(float(t) for t in re.findall(r"iter +\d+ .*?  ([0-9.]+)s", cli_log))
cli_wall = json.load(open(f"{out}/fit/model.json"))["seconds"]
cli_ll = re.findall(r"loglik (-?[0-9.]+)", cli_log)[-1]
py = open(f"{out}/python.out").read()
py_iter = float(re.search(r"python_seconds_per_iter ([0-9.]+)", py).group(1))
py_wall = float(re.search(r"python_fit_wall ([0-9.]+)", py).group(1))
py_ll = re.search(r"python_lower_bound (-?[0-9.]+)", py).group(1)
sk = open(f"{out}/sklearn.out").read()
sk_iter = float(re.search(r"sklearn_seconds_per_iter ([0-9.]+)", sk).group(1))
sk_ll = re.search(r"sklearn_lower_bound (-?[0-9.]+)", sk).group(1)
r_cli, r_py, r_sk = (rss(open(f"{out}/{n}.log").read()) for n in ("cli", "python", "sklearn"))
print(f"CLI           {cli_iter:.3f} s/iter  fit {cli_wall:.2f} s  peak RSS {r_cli:.0f} MiB  loglik {cli_ll}")
print(f"Python        {py_iter:.3f} s/iter  fit {py_wall:.2f} s  peak RSS {r_py:.0f} MiB  loglik {py_ll}")
print(f"scikit-learn  {sk_iter:.3f} s/iter                peak RSS {r_sk:.0f} MiB  loglik {sk_ll}")
print(f"Python vs CLI: {100 * (py_wall / cli_wall - 1):+.1f}% fit wall, "
      f"{100 * (py_iter / cli_iter - 1):+.1f}% per step; vs scikit-learn {sk_iter / py_iter:.1f}x "
      f"faster, {r_sk / r_py:.1f}x less memory")
PY
