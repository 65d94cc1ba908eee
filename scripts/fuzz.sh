#!/usr/bin/env bash
# Runs every native Go fuzz target of the main module for FUZZTIME each
# (default 30s). Targets are found, not listed: a new `func FuzzXxx(f *testing.F)`
# in any package is picked up. Seed corpora and committed crashers under
# testdata/fuzz/FuzzXxx/ also run in plain `go test` as regression inputs.
# A failure leaves the new crasher in testdata/fuzz/FuzzXxx/ of its package:
# fix the bug and commit that file.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
n=0
failed=()
while IFS= read -r dir; do
  pkg=./$dir
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
    n=$((n + 1))
    echo "== fuzz $pkg $target ($FUZZTIME)"
    if ! $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "${FUZZMINIMIZETIME:-5s}" "$pkg"; then
      failed+=("$pkg $target")
    fi
  done
done < <(grep -rl --include='*_test.go' '^func Fuzz' pkg cmd | xargs -r -n1 dirname | sort -u)
echo "== fuzz: $n targets, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
