#!/usr/bin/env bash
# The Python package against the CLI (and, on the CPU, scikit-learn):
# BENCHMARKS.md section 14. Section 1's problem (bench/make_problem.py; by
# default N=200,000, K=256, D=128, the same initial model for all), ITERS
# EM steps with --tol 0, REPEATS runs of the CLI and the package taking
# turns. Reports the median over runs of each one's median seconds per EM
# step and of the fit's wall time (model.json's seconds for the CLI, the
# time around fit() for the package; neither counts loading the data or
# starting the process), and the peak RSS of each process.
#
# usage: bash bench/python_vs_cli.sh [N K D ITERS DEVICE REPEATS]
# Builds the CLI and the wheel and installs the wheel into a virtual
# environment, unless FLASHGMM (a flashgmm binary) and PYTHON (a python
# that imports flashgmm) are given, as on a GPU host without Bazel.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000} K=${2:-256} D=${3:-128} IT=${4:-10} DEV=${5:-cpu} R=${6:-3}
OUT=${OUT_DIR:-bench/out/python_vs_cli}
rm -rf "$OUT" && mkdir -p "$OUT"
if [ -z "${FLASHGMM:-}" ]; then
  bazel build -c opt --noshow_progress //tools:flashgmm //python:wheel >&2
  FLASHGMM=bazel-bin/tools/flashgmm
  /usr/bin/python3 -m venv --system-site-packages "$OUT/venv"
  "$OUT/venv/bin/pip" install --quiet --no-index --no-deps --disable-pip-version-check \
    bazel-bin/python/flashgmm-*.whl
  PYTHON="$OUT/venv/bin/python"
fi
PY=${REF_PYTHON:-/usr/bin/python3}
$PY bench/make_problem.py "$OUT" "$N" "$K" "$D"

# Peak RSS from GNU time where the host has it.
TIME=(/usr/bin/time -v)
[ -x /usr/bin/time ] || TIME=()
for r in $(seq "$R"); do
  "${TIME[@]}" "$FLASHGMM" fit --device "$DEV" --data "$OUT/data.npy" --init "$OUT/init" \
    --max-iter "$IT" --tol 0 --out "$OUT/fit$r" 2> "$OUT/cli$r.log" > /dev/null
  "${TIME[@]}" "$PYTHON" bench/python_fit.py "$OUT/data.npy" "$OUT/init" "$IT" "$DEV" \
    > "$OUT/python$r.out" 2> "$OUT/python$r.log"
done
if [ "$DEV" = cpu ] && [ "${SKLEARN:-1}" = 1 ]; then
  /usr/bin/time -v $PY bench/sklearn_fit.py "$OUT/data.npy" "$OUT/init" "$IT" \
    > "$OUT/sklearn.out" 2> "$OUT/sklearn.log"
fi

$PY - "$OUT" "$R" <<'PY'
import json, os, re, statistics as st, sys
out, runs = sys.argv[1], int(sys.argv[2])
def rss(log):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    return int(m.group(1)) / 1024 if m else float("nan")
ci, cw, cr, pi, pw, pr = [], [], [], [], [], []
for r in range(1, runs + 1):
    log = open(f"{out}/cli{r}.log").read()
    ci.append(st.median(float(t) for t in re.findall(r"iter +\d+ .*?  ([0-9.]+)s", log)))
    cw.append(json.load(open(f"{out}/fit{r}/model.json"))["seconds"])
    cr.append(rss(log))
    cli_ll = re.findall(r"loglik (-?[0-9.]+)", log)[-1]
    p = open(f"{out}/python{r}.out").read()
    pi.append(float(re.search(r"python_seconds_per_iter ([0-9.]+)", p).group(1)))
    pw.append(float(re.search(r"python_fit_wall ([0-9.]+)", p).group(1)))
    pr.append(rss(open(f"{out}/python{r}.log").read()))
    py_ll = re.search(r"python_lower_bound (-?[0-9.]+)", p).group(1)
m = st.median
print(f"runs {runs}; per run: CLI s/step {ci} fit {cw}; Python s/step {pi} fit {pw}")
print(f"CLI           {m(ci):.4f} s/step  fit {m(cw):.3f} s  peak RSS {m(cr):.0f} MiB  loglik {cli_ll}")
print(f"Python        {m(pi):.4f} s/step  fit {m(pw):.3f} s  peak RSS {m(pr):.0f} MiB  loglik {py_ll}")
print(f"Python vs CLI: {100 * (m(pw) / m(cw) - 1):+.1f}% fit wall, {100 * (m(pi) / m(ci) - 1):+.1f}% per step")
if os.path.exists(f"{out}/sklearn.out"):
    sk = open(f"{out}/sklearn.out").read()
    si = float(re.search(r"sklearn_seconds_per_iter ([0-9.]+)", sk).group(1))
    sl = re.search(r"sklearn_lower_bound (-?[0-9.]+)", sk).group(1)
    sr = rss(open(f"{out}/sklearn.log").read())
    print(f"scikit-learn  {si:.4f} s/step                peak RSS {sr:.0f} MiB  loglik {sl}")
    print(f"Python vs scikit-learn: {si / m(pi):.1f}x faster per step, {sr / m(pr):.1f}x less memory")
PY
