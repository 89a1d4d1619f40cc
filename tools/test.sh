#!/usr/bin/env bash
# The README's second command (and CI's): install what is needed, build
# everything (the CUDA sources too, with nvcc), run every test, and end with
# one line "N passed, N failed" counting test cases. GPU tests skip with a
# message where there is no GPU; skipped cases are listed, not counted.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

bazel build //... 2>&1
build_rc=$?
bazel test --keep_going //... 2>&1
test_rc=$?

/usr/bin/python3 - "$build_rc" "$test_rc" <<'PY'
import glob, os, subprocess, sys
import xml.etree.ElementTree as ET

build_rc, test_rc = int(sys.argv[1]), int(sys.argv[2])
targets = subprocess.run(["bazel", "query", "tests(//...)"], capture_output=True,
                         text=True).stdout.split()
passed = failed = skipped = 0
for t in targets:
    pkg, name = t.lstrip("/").split(":")
    xml = os.path.join("bazel-testlogs", pkg, name, "test.xml")
    if not os.path.exists(xml):
        print(f"{t}: no results (did not build or run)")
        failed += 1
        continue
    cases = ET.parse(xml).getroot().iter("testcase")
    for c in cases:
        if c.find("failure") is not None or c.find("error") is not None:
            failed += 1
            print(f"FAILED {t} {c.get('classname')}.{c.get('name')}")
        elif c.get("result") == "skipped" or c.find("skipped") is not None:
            skipped += 1
            print(f"skipped {t} {c.get('classname')}.{c.get('name')}")
        else:
            passed += 1
if build_rc != 0 and failed == 0:
    failed += 1
    print("the build failed")
print(f"{skipped} skipped")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
