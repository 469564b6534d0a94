#!/usr/bin/env bash
# Regenerates docs/RESULTS.md and docs/results/ from nothing: a virtual
# environment with torch, ZipNN, zstandard and matplotlib, a release build of
# tpde and its Python package, the training runs of every regime
# (examples/regimes.sh; the notes' experiment alone takes 50-80 minutes on 2
# cores, the others a few minutes each), then every method on every regime
# (examples/evidence.py, about half an hour).
#
#   examples/evidence.sh [RUNS_DIR]     (default /tmp/tpde-regimes)
#
# Runs already in RUNS_DIR are reused; set TPDE_NOTES_RUN to a finished
# `train_checkpoints.py --preset notes` run to reuse it for regime (a).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-/tmp/tpde-regimes}
venv=${TPDE_VENV:-$HOME/.cache/tpde/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r bindings/python/requirements-test.txt zstandard zipnn==0.5.4 matplotlib
cargo build --release --locked -q -p tpde-cli
VIRTUAL_ENV=$venv maturin develop --quiet --release -m bindings/python/Cargo.toml
PYTHON=$venv/bin/python bash examples/regimes.sh "$runs"
"$venv/bin/python" -u examples/evidence.py --runs "$runs" --out docs --tpde target/release/tpde
