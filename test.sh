#!/usr/bin/env bash
# Runs every check of tpde: formatting, lints, the Rust tests (unit,
# integration, property, CLI, frozen format samples, doctests), the Python
# package's tests and short fuzz runs. CI runs exactly this (.ci/run).
# FUZZ_SECONDS=0 skips fuzzing; PYTHON_TESTS=0 skips the Python tests.
#
# The Python tests run in a virtual environment made once and reused:
# ${TPDE_VENV:-~/.cache/tpde/venv}, with the pinned packages of
# bindings/python/requirements-test.txt (torch on CPU, transformers,
# lightning: a few GB, a few minutes the first time).
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

if [ "${PYTHON_TESTS:-1}" != "0" ]; then
  echo "== python tests"
  venv=${TPDE_VENV:-$HOME/.cache/tpde/venv}
  req=bindings/python/requirements-test.txt
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # Install only when the pinned requirements changed since the last time.
  stamp=$venv/.tpde-requirements
  if ! cmp -s "$req" "$stamp"; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    cp "$req" "$stamp"
  fi
  VIRTUAL_ENV=$venv maturin develop --quiet -m bindings/python/Cargo.toml
  "$venv/bin/python" -m pytest -q bindings/python/tests
fi

if [ "${FUZZ_SECONDS:-20}" != "0" ]; then
  echo "== fuzz (${FUZZ_SECONDS:-20}s per target)"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash .ci/fuzz.sh
fi
echo "== all checks passed"
