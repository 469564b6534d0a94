#!/usr/bin/env bash
# Runs every check of tpde: formatting, lints, the Rust tests (unit,
# integration, property, CLI, frozen format samples, doctests) and short fuzz
# runs. CI runs exactly this (.ci/run). FUZZ_SECONDS=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

if [ "${FUZZ_SECONDS:-20}" != "0" ]; then
  echo "== fuzz (${FUZZ_SECONDS:-20}s per target)"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash .ci/fuzz.sh
fi
echo "== all checks passed"
