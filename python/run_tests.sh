#!/usr/bin/env bash
# Installs the wheel with pip, offline, into a fresh virtual environment
# that sees the system's numpy, scikit-learn and FAISS, then runs the
# package's pytest suite there (from outside the source tree, so the
# installed package is what is imported). Results go to Bazel's XML.
set -euo pipefail
here="$TEST_SRCDIR/$TEST_WORKSPACE"
venv="$TEST_TMPDIR/venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --no-index --no-deps --disable-pip-version-check \
  "$here"/python/flashgmm-*.whl
export FLASHGMM_CLI="$here/tools/flashgmm"
cd "$TEST_TMPDIR"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$here/python" \
  --junitxml="${XML_OUTPUT_FILE:-$TEST_TMPDIR/pytest.xml}" "$here/python/tests"
