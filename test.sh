#!/usr/bin/env bash
# Runs every check of tpde: formatting, lints, API docs, the Rust tests (unit,
# integration, property, CLI, frozen format samples, doctests, the store on
# object storage), the Python package's tests and short fuzz runs. CI runs
# exactly this (.ci/run).
# FUZZ_SECONDS=0 skips fuzzing; PYTHON_TESTS=0 skips the Python tests
# (which install chromium with apt-get when it is missing, for the HTML
# report's browser test);
# S3_TESTS=0 skips starting the S3 test server (the object storage tests
# then skip themselves).
#
# Python runs in a virtual environment made once and reused:
# ${TPDE_VENV:-~/.cache/tpde/venv}. The S3 test server is moto
# (scripts/s3-server.sh installs it there); the Python tests add the pinned
# packages of bindings/python/requirements-test.txt (torch on CPU,
# transformers, lightning: a few GB, a few minutes the first time).
set -euo pipefail
cd "$(dirname "$0")"
venv=${TPDE_VENV:-$HOME/.cache/tpde/venv}
export TPDE_VENV=$venv
# The work tree as the checks find it (they must leave it so).
in_git=0
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  in_git=1
  tree_before=$(git status --porcelain)
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo doc (the library's API docs, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p tpde --features s3

if [ "${PYTHON_TESTS:-1}" != "0" ] || [ "${S3_TESTS:-1}" != "0" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating the Python virtual environment $venv"
    python3 -m venv "$venv"
  fi
fi

if [ "${S3_TESTS:-1}" != "0" ]; then
  echo "== S3 test server (moto on 127.0.0.1; the first run installs moto into $venv)"
  server_env=$(scripts/s3-server.sh)
  eval "$server_env"
  trap 'kill "$TPDE_S3_SERVER_PID" 2>/dev/null || true' EXIT
  echo "listening at $AWS_ENDPOINT_URL"
fi

echo "== cargo test"
cargo test --workspace --locked

if [ "${PYTHON_TESTS:-1}" != "0" ]; then
  echo "== python tests"
  req=bindings/python/requirements-test.txt
  # Install only when the pinned requirements changed since the last time.
  stamp=$venv/.tpde-requirements
  if ! cmp -s "$req" "$stamp"; then
    echo "== installing $req into $venv (torch on CPU, transformers, lightning:"
    echo "   a few GB, a few minutes; done again only when the file changes)"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    cp "$req" "$stamp"
  fi
  # The HTML report's test opens it in headless Chromium (and fails without
  # one under CI); installed from Debian's packages when missing.
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt-get; for the report's browser test)"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { $sudo apt-get update -qq >/dev/null 2>&1 \
           && $sudo apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "   (could not install chromium; the browser test skips, or fails under CI)"
  fi
  echo "== building the Python package (maturin develop)"
  VIRTUAL_ENV=$venv maturin develop --quiet -m bindings/python/Cargo.toml
  "$venv/bin/python" -m pytest -q bindings/python/tests
fi

if [ "${FUZZ_SECONDS:-20}" != "0" ]; then
  echo "== fuzz (${FUZZ_SECONDS:-20}s per target)"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash .ci/fuzz.sh
  if [ "${PYTHON_TESTS:-1}" != "0" ]; then
    echo "== fuzz: the untrusted unpickler of Store.load (${FUZZ_SECONDS:-20}s)"
    "$venv/bin/python" bindings/python/fuzz/fuzz_unpickler.py --seconds "${FUZZ_SECONDS:-20}"
  fi
fi
# The checks must leave the work tree as they found it (a stale
# fuzz/Cargo.lock used to be rewritten by every fuzz build).
if [ "$in_git" = 1 ] && [ "$(git status --porcelain)" != "$tree_before" ]; then
  echo "!! the checks changed the work tree:" >&2
  git status --short >&2
  exit 1
fi
echo "== all checks passed"
