#!/usr/bin/env bash
# The README's first command: install what is needed, build the CLI, run the
# built-in demo (a synthetic mixture fitted from k-means++). Extra arguments
# go to `flashgmm demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Only the demo's own lines: Bazel prints nothing but warnings and errors.
bazel build --noshow_progress --ui_event_filters=-info --show_result=0 -c opt \
    --dynamic_mode=off //tools:flashgmm >&2
exec bazel-bin/tools/flashgmm demo "$@"
