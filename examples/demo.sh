#!/usr/bin/env bash
# tpde on a real run of checkpoints shipped with the repo (examples/data/tiny:
# a small Transformer trained for a few epochs, weights and Adam state as
# safetensors). Builds tpde, benchmarks the chain against zstd -3, then
# encodes one checkpoint against the previous one, inspects it, decodes it and
# checks the sha256 of the result against the original.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building tpde (cargo build --release; the first time takes a few minutes)"
cargo build --release --locked -q -p tpde-cli
tpde=target/release/tpde
data=examples/data/tiny

for part in weights adam; do
  echo "### $part"
  "$tpde" bench "$data/$part"
  echo
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
prev=$data/weights/epoch-02.safetensors
cur=$data/weights/epoch-03.safetensors
echo "### one step: $cur against $prev"
"$tpde" encode "$cur" --ref "$prev" -o "$out/epoch-03.tpde"
"$tpde" inspect "$out/epoch-03.tpde"
"$tpde" decode "$out/epoch-03.tpde" --ref "$prev" -o "$out/epoch-03.safetensors"
sha256sum "$cur" "$out/epoch-03.safetensors"
cmp "$cur" "$out/epoch-03.safetensors" && echo "restored byte for byte"

echo
echo "### a store: the run's checkpoints as folders (model + optimizer state), any step back"
for e in 01 02 03; do
  ck=$out/run/checkpoint-$e
  mkdir -p "$ck"
  cp "$data/weights/epoch-$e.safetensors" "$ck/model.safetensors"
  cp "$data/adam/epoch-$e.safetensors" "$ck/optimizer.safetensors"
done
"$tpde" store init "$out/store" --keyframe-every 10
for e in 01 02 03; do "$tpde" store add "$out/store" "$out/run/checkpoint-$e"; done
"$tpde" store ls "$out/store"
"$tpde" store get "$out/store" 2 -o "$out/restored-2"
diff -r "$out/run/checkpoint-02" "$out/restored-2" && echo "step 2 restored byte for byte"
"$tpde" store verify "$out/store"
