#!/usr/bin/env bash
# The research notes' experiment through the store: every checkpoint folder of
# a run added to a store (keyframe every K), the store's totals beside zstd -3
# of each file, and the time to restore the latest step.
#
#   examples/store_experiment.sh RUN_DIR [STORE_DIR] [K]
#
# RUN_DIR holds checkpoint-N folders, e.g. from
#   examples/train_checkpoints.py --preset notes --out /tmp/tpde-notes
#   examples/hf_checkpoints.py --run /tmp/tpde-notes --out /tmp/tpde-notes-hf
# Needs a release build (cargo build --release) and the venv python with
# zstandard (examples/demo.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: store_experiment.sh RUN_DIR [STORE_DIR] [K]}
STORE=${2:-$(mktemp -d)/store}
K=${3:-10}
TPDE=${TPDE:-target/release/tpde}
PY=${PYTHON:-$HOME/.cache/tpde/venv/bin/python}
[ -x "$TPDE" ] || cargo build --release --quiet
rm -rf "$STORE"
"$TPDE" store init "$STORE" --keyframe-every "$K"
mapfile -t CKS < <(ls -d "$RUN"/checkpoint-* | sort -V)
start=$(date +%s.%N)
for ck in "${CKS[@]}"; do "$TPDE" store add "$STORE" "$ck"; done
end=$(date +%s.%N)
echo "added ${#CKS[@]} checkpoints in $(echo "$end - $start" | bc) s"
echo
"$TPDE" store ls "$STORE"
echo
echo "zstd -3 of each file, for comparison:"
"$PY" examples/store_sizes.py "${CKS[@]}"
echo
last=${CKS[-1]}
step=${last##*-}
out=$(mktemp -d)/restored
"$TPDE" store get "$STORE" "$step" -o "$out"
(cd "$last" && find . -type f | sort | xargs sha256sum) > "$out.orig.sha"
(cd "$out" && find . -type f | sort | xargs sha256sum) > "$out.back.sha"
cmp "$out.orig.sha" "$out.back.sha" && echo "step $step restored byte for byte (sha256 of every file)"
rm -rf "$out" "$out".*.sha
"$TPDE" store verify "$STORE"
