#!/usr/bin/env bash
# The README's first command: install what is needed, build the CLI, run the
# built-in demo (a synthetic mixture fitted from k-means++). Extra arguments
# go to `flashgmm demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# No progress lines: Bazel's summary (or its errors) and then the demo.
bazel build --noshow_progress -c opt --dynamic_mode=off //tools:flashgmm >&2
exec bazel-bin/tools/flashgmm demo "$@"
