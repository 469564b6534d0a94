#!/usr/bin/env bash
# A run saved as one safetensors file per epoch (epoch-00.safetensors,
# epoch-01.safetensors, ...), added to a store one file at a time, beside the
# same files added as checkpoint folders (checkpoint-N/model.safetensors)
# and coded pair by pair with `tpde encode --ref`: the store's ratio, lossless
# and at --max-abs-error 1e-3, per delta step (issue 17).
#
#   examples/single_file_store.sh [WEIGHTS_DIR] [WORK_DIR]
#
# WEIGHTS_DIR defaults to the run that ships with the repo
# (examples/data/tiny/weights); examples/notes_experiment.sh makes the research
# notes' run (/tmp/tpde-notes/weights).
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-examples/data/tiny/weights}
work=${2:-$(mktemp -d)}
cargo build --release --locked -q -p tpde-cli
tpde=$PWD/target/release/tpde
rm -rf "$work/files" "$work/folders" "$work/lossy" "$work/ck" "$work/pairs"
mkdir -p "$work/ck" "$work/pairs"
"$tpde" store init "$work/files" >/dev/null
"$tpde" store init "$work/folders" >/dev/null
"$tpde" store init "$work/lossy" >/dev/null
files=("$weights"/*.safetensors)
prev=
for i in "${!files[@]}"; do
  f=${files[$i]}
  "$tpde" store add "$work/files" "$f" --step "$i" >/dev/null
  mkdir -p "$work/ck/checkpoint-$i"
  cp "$f" "$work/ck/checkpoint-$i/model.safetensors"
  "$tpde" store add "$work/folders" "$work/ck/checkpoint-$i" --step "$i" >/dev/null
  "$tpde" store add "$work/lossy" "$f" --step "$i" --max-abs-error 1e-3 >/dev/null
  if [ -n "$prev" ]; then
    "$tpde" encode "$f" --ref "$prev" -o "$work/pairs/$i.tpde" -f >/dev/null
  fi
  prev=$f
done
python3 - "$work" "${#files[@]}" <<'PY'
import json, os, subprocess, sys
work, n = sys.argv[1], int(sys.argv[2])
tpde = os.path.join(os.getcwd(), "target/release/tpde")
def manifest(store):
    return json.loads(subprocess.check_output([tpde, "store", "ls", os.path.join(work, store), "--json"]))
def totals(m, deltas_only=False):
    o = s = 0
    for st in m["steps"]:
        if deltas_only and st["reference"] is None:
            continue
        o += sum(f["len"] for f in st["files"])
        s += sum(f["stored_len"] for f in st["files"])
    return o, s
print(f"{n} checkpoint files")
print(f"{'store':<34} {'original':>12} {'stored':>12} {'ratio':>8} {'deltas':>7}")
rows = {}
for name, label in [("files", "one file per step (lossless)"),
                    ("folders", "checkpoint folders (lossless)"),
                    ("lossy", "one file per step, 1e-3")]:
    m = manifest(name)
    o, s = totals(m)
    d = sum(1 for st in m["steps"] if st["reference"] is not None)
    rows[name] = (o, s)
    print(f"{label:<34} {o:>12,} {s:>12,} {o / s:>7.3f}x {d:>7}")
pairs = [os.path.join(work, "pairs", f) for f in os.listdir(os.path.join(work, "pairs"))]
po = sum(os.path.getsize(p) for p in pairs)
m = manifest("files")
delta_orig = sum(sum(f["len"] for f in st["files"]) for st in m["steps"] if st["reference"] is not None)
print(f"{'tpde encode --ref, pair by pair':<34} {delta_orig:>12,} {po:>12,} {delta_orig / po:>7.3f}x")
for name in ["files", "lossy"]:
    m = manifest(name)
    per = [sum(f["len"] for f in st["files"]) / sum(f["stored_len"] for f in st["files"])
           for st in m["steps"] if st["reference"] is not None]
    print(f"per delta step, {name}: " + ", ".join(f"{r:.2f}x" for r in per))
(fo, fs), (go, gs) = rows["files"], rows["folders"]
print(f"one-file store vs folder store: {abs(fo / fs - go / gs) / (go / gs) * 100:.2f}% apart")
PY
