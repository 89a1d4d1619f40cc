#!/usr/bin/env bash
# The README's second command (and CI's): install what is needed, build
# everything (the CUDA sources too, with nvcc), run every test afresh, and end
# with one line "N passed, N failed" counting googletest and pytest cases.
#
# It cannot pass by accident: the exit status is non-zero when the build or
# `bazel test` fails, when fewer test targets exist than MIN_TEST_TARGETS,
# when a target left no fresh XML, or when any case is neither completed nor
# an explicit skip. GPU tests skip (listed, not counted) where there is no
# GPU; with FGMM_REQUIRE_GPU=1 in the environment the tests are told so and
# every skipped case counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

# The number of test targets in the tree; raise it when adding one. Fewer
# means a BUILD file lost a test (or the query failed), not that all passed.
MIN_TEST_TARGETS=17

bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

# Bazel's progress lines add nothing to a log; its summary and errors stay.
QUIET=(--noshow_progress)

stamp=$(mktemp)
trap 'rm -f "$stamp" "$stamp".*' EXIT

# Targets that //... builds: `bazel test //...` skips those tagged manual.
bazel query "${QUIET[@]}" 'tests(//...) except attr(tags, "manual", //...)' \
  >"$stamp.targets" 2>"$stamp.query"
query_rc=$?
if [ "$query_rc" -ne 0 ]; then cat "$stamp.query" >&2; fi

bazel build "${QUIET[@]}" //... 2>&1
build_rc=$?
bazel test "${QUIET[@]}" --keep_going --nocache_test_results \
  --test_env=FGMM_REQUIRE_GPU //... 2>&1
test_rc=$?
logs=$(bazel info "${QUIET[@]}" bazel-testlogs 2>/dev/null)

# The same tests again under AddressSanitizer and UndefinedBehaviorSanitizer
# (`--config=asan`, the CPU build; .bazelrc): every CPU test and every fuzz
# target's replay. GPU tests (tag gpu) need the CUDA build, and the Python
# extension cannot be loaded by an uninstrumented interpreter (tag no_asan).
# FGMM_SKIP_ASAN=1 leaves this pass out (a GPU host's quick run).
ASAN_QUERY='tests(//...) except attr(tags, "manual|gpu|no_asan", //...)'
if [ "${FGMM_SKIP_ASAN:-}" = 1 ]; then
  : >"$stamp.asan_targets"; asan_query_rc=0; asan_rc=0; asan_logs=""
else
  bazel query "${QUIET[@]}" "$ASAN_QUERY" >"$stamp.asan_targets" 2>"$stamp.query"
  asan_query_rc=$?
  if [ "$asan_query_rc" -ne 0 ]; then cat "$stamp.query" >&2; fi
  echo "== the CPU tests again under AddressSanitizer and UndefinedBehaviorSanitizer (--config=asan)"
  # shellcheck disable=SC2046
  bazel test "${QUIET[@]}" --config=asan --keep_going --nocache_test_results \
    --test_env=LSAN_OPTIONS="suppressions=$PWD/tools/lsan.supp:print_suppressions=0:fast_unwind_on_malloc=0" \
    $(cat "$stamp.asan_targets") 2>&1
  asan_rc=$?
  asan_logs=$(bazel info "${QUIET[@]}" --config=asan bazel-testlogs 2>/dev/null)
fi

/usr/bin/python3 - "$stamp" "$query_rc" "$build_rc" "$test_rc" "$MIN_TEST_TARGETS" \
  "${FGMM_REQUIRE_GPU:-}" "$logs" "$asan_query_rc" "$asan_rc" "$asan_logs" <<'PY'
import glob, os, sys
import xml.etree.ElementTree as ET

stamp, query_rc, build_rc, test_rc, min_targets = sys.argv[1], *map(int, sys.argv[2:6])
require_gpu = sys.argv[6] == "1"
logs, asan_query_rc, asan_rc, asan_logs = sys.argv[7], int(sys.argv[8]), int(sys.argv[9]), sys.argv[10]
since = os.stat(stamp).st_mtime
targets = [(t, logs, "") for t in open(stamp + ".targets").read().split()] if query_rc == 0 else []
if asan_logs:
    targets += [(t, asan_logs, " [asan]") for t in open(stamp + ".asan_targets").read().split()]
passed = failed = skipped = 0
problems = []  # failures that are not a test case: the build, a missing XML

def xml_files(target, logs):
    pkg, name = target.lstrip("/").split(":")
    base = os.path.join(logs, pkg, name)
    one = os.path.join(base, "test.xml")
    return [one] if os.path.exists(one) else sorted(glob.glob(os.path.join(base, "shard_*", "test.xml")))

for t, where, mark in targets:
    files = xml_files(t, where)
    t += mark
    if not files:
        problems.append(f"{t}: no test.xml (did not build or run)")
        continue
    stale = [f for f in files if os.stat(f).st_mtime < since]
    if stale:
        problems.append(f"{t}: test.xml is from an earlier run (did not build or run)")
        continue
    cases = []
    for f in files:
        try:
            cases += list(ET.parse(f).getroot().iter("testcase"))
        except ET.ParseError as e:
            problems.append(f"{t}: {f}: unreadable XML: {e}")
    if not cases:
        problems.append(f"{t}: no test cases in its XML")
    for c in cases:
        name = f"{t} {c.get('classname')}.{c.get('name')}"
        result = c.get("result")
        if c.find("failure") is not None or c.find("error") is not None:
            failed += 1
            print(f"FAILED {name}")
        elif result == "skipped" or c.find("skipped") is not None:
            sk = c.find("skipped")
            # googletest's message: "file:line" then the reason given.
            lines = (sk.get("message") or "").strip().splitlines() if sk is not None else []
            why = f": {' '.join(lines[1:])} ({lines[0]})" if len(lines) > 1 else \
                f": {lines[0]}" if lines else ""
            if require_gpu:
                failed += 1
                print(f"FAILED {name} skipped with FGMM_REQUIRE_GPU=1{why}")
            else:
                skipped += 1
                print(f"skipped {name}{why}")
        elif result == "completed" or (result is None and t.startswith(("//python:", "//fuzz:"))):
            # googletest marks a case that ran "completed"; the XML of
            # pytest and of the fuzz replay has no such attribute, and a
            # case without failure, error or skip in it passed.
            passed += 1
        else:
            # "suppressed" (a DISABLED_ test) or no result at all: not run.
            failed += 1
            print(f"FAILED {name} (result {result!r}, not completed)")

if query_rc != 0 or asan_query_rc != 0:
    problems.append("bazel query for the test targets failed")
elif len(targets) < min_targets:
    problems.append(f"{len(targets)} test targets found, expected at least {min_targets}")
for p in problems:
    print(p)
failed += len(problems)
# A failing build or `bazel test` with every case above passed (a target
# that failed outside googletest, an interrupted run) is one failure more;
# otherwise the cases already count it.
for what, rc in (("build", build_rc), ("test", test_rc), ("test --config=asan", asan_rc)):
    if rc != 0:
        print(f"bazel {what} failed (exit {rc})")
if (build_rc or test_rc or asan_rc) and failed == 0:
    failed = 1
print(f"{skipped} skipped")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
