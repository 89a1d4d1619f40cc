#!/usr/bin/env bash
# Replays every fuzz target given as an argument over its seeds, its
# regression inputs (fuzz/regressions/<target>/) and 300 deterministic
# mutations of each, and writes one JUnit test case per target.
set -uo pipefail
here="$TEST_SRCDIR/$TEST_WORKSPACE/fuzz"
xml="${XML_OUTPUT_FILE:-$TEST_TMPDIR/fuzz.xml}"
cases="" failures=0
for t in "$@"; do
  seeds="$TEST_TMPDIR/seeds-$t"
  log="$TEST_TMPDIR/$t.log"
  inputs=("$seeds")
  [ -d "$here/regressions/$t" ] && inputs+=("$here/regressions/$t")
  if "$here/$t" --seeds "$seeds" > "$log" 2>&1 &&
     "$here/$t" --mutate 300 "${inputs[@]}" >> "$log" 2>&1; then
    cases+="<testcase classname=\"fuzz\" name=\"$t\"/>"
    tail -1 "$log"
  else
    failures=$((failures + 1))
    msg=$(tail -5 "$log" | sed 's/&/\&amp;/g; s/</\&lt;/g; s/>/\&gt;/g; s/"/\&quot;/g')
    cases+="<testcase classname=\"fuzz\" name=\"$t\"><failure message=\"$msg\"/></testcase>"
    echo "FAILED $t:"; tail -20 "$log"
  fi
done
printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="fuzz" tests="%d" failures="%d">%s</testsuite></testsuites>\n' \
  "$#" "$failures" "$cases" > "$xml"
exit $((failures > 0))
