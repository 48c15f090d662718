#!/usr/bin/env bash
# Fuzz smoke for `make test`: each cargo-fuzz target for a few seconds from
# the seed corpora in the repo, when cargo-fuzz and a nightly toolchain are
# installed. Without them it skips (exit 0): the proptest equivalents
# (arbitrary snapshot bytes, configs, tokens and headers never panic) are
# part of `cargo test --workspace`, which `make unit` has already run, so
# running them again here would only repeat them. Long runs: see filter/fuzz
# and mapping/fuzz (`cargo +nightly fuzz run <target> -- -max_total_time=600`).
#
# FUZZ_SECONDS (default 8) sets the time per target. The first run builds the
# targets (a few minutes of CPU); later runs reuse the build.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-8}"

if cargo +nightly fuzz --version >/dev/null 2>&1; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  total=0
  for spec in mapping/fuzz:snapshot filter/fuzz:config filter/fuzz:token filter/fuzz:decide; do
    dir="${spec%%:*}"
    target="${spec##*:}"
    mkdir -p "$work/$target"
    # The generated corpus goes to a temp dir; the repo keeps only seeds.
    # No sanitizer: the code is safe Rust, the point is panics; debug
    # assertions on (-a) so overflows count as findings.
    if ! (cd "$dir" && cargo +nightly fuzz run -s none -a "$target" "$work/$target" "corpus/$target" \
          -- -max_total_time="$seconds" -print_final_stats=1) >"$work/$target.log" 2>&1; then
      echo "fuzz-smoke: $target FAILED" >&2
      tail -n 60 "$work/$target.log" >&2
      exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)"
    echo "fuzz-smoke: $target: ${runs:-?} inputs, no crash"
    total=$((total + ${runs:-0}))
  done
  echo "fuzz-smoke: $total inputs in total"
else
  echo "fuzz-smoke: SKIPPED: no cargo-fuzz with a nightly toolchain (\`cargo +nightly fuzz\`)." \
       "Their proptest equivalents (mapping validation never_panic, filter config/token" \
       "never_panics, decide arbitrary_*) run in \`make unit\`."
fi
