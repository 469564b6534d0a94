#!/usr/bin/env bash
# The research notes' experiment, end to end: trains the 8.3M-parameter
# Transformer (Adam lr 1e-3, FP32, a checkpoint per epoch, 10 epochs) unless
# its checkpoints are already there, then measures in one run per kind
# (weights, Adam state): `tpde bench` (ratio per step, 1 and all threads,
# beside zstd -3) and the baselines of examples/compare_baselines.py (zstd -3,
# zstd --patch-from, ZipNN, ZipNN's delta mode, XOR byte planes), with tpde's
# ratios merged into the same table.
#
#   examples/notes_experiment.sh [OUT_DIR]      (default /tmp/tpde-notes)
#
# Needs a Python with torch, safetensors, numpy, zstandard and zipnn==0.5.4;
# set PYTHON, or let it create the virtual environment at
# ${TPDE_VENV:-$HOME/.cache/tpde/venv}. Training takes 50-80 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/tpde-notes}
venv=${TPDE_VENV:-$HOME/.cache/tpde/venv}
if [ -z "${PYTHON:-}" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy safetensors zstandard zipnn==0.5.4
  fi
  PYTHON=$venv/bin/python
fi
cargo build --release --locked -q -p tpde-cli
if [ ! -f "$out/weights/epoch-10.safetensors" ]; then
  "$PYTHON" -u examples/train_checkpoints.py --preset notes --dtype fp32 --threads 2 --out "$out"
fi
for part in weights adam; do
  echo "### $part: tpde bench"
  target/release/tpde bench "$out/$part"
  echo
  echo "### $part: baselines (one thread), tpde's ratio merged"
  "$PYTHON" examples/compare_baselines.py "$out/$part" --tpde target/release/tpde --json "$out/$part-baselines.json"
  echo
done
