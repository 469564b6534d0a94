#!/usr/bin/env bash
# Checkpoints of examples/train_checkpoints.py in several training regimes,
# one folder per regime under OUT_ROOT (each with weights/ and adam/), to
# measure how delta compression fares beyond the research notes' setting:
#
#   (a) notes       the research notes' run: preset notes (8.3M parameters),
#                   FP32, Adam lr 1e-3, a checkpoint per epoch, 10 epochs.
#                   50-80 minutes on 2 cores, so if OUT_ROOT/notes is missing
#                   and $TPDE_NOTES_RUN names a finished run of it (a folder
#                   holding weights/epoch-10.safetensors, e.g. the output of
#                   examples/notes_experiment.sh) it is symlinked instead.
#   (b) bf16        preset small (0.91M parameters), model and training in
#                   BF16, lr 1e-3, 10 epochs.
#   (c) frozen      fine-tuning with most layers frozen: preset small, FP32,
#                   --freeze-most (only the last Transformer layer and the
#                   output head are trained; the weights files hold every
#                   parameter, the adam files only the trainable ones),
#                   started (--init) from the final weights of the plain small
#                   FP32 run (folder small-fp32, made first if missing) on a
#                   new data set (--seed 1), 10 epochs.
#   (d) steps       a checkpoint every few steps: preset small, FP32, a
#                   checkpoint every 10 optimizer steps for 100 steps (1.56
#                   epochs of 64 steps): weights step-000000..step-000100 (11
#                   files), adam step-000010..step-000100 (10 files).
#   (e) bf16-lowlr  BF16 with a small learning rate: preset small, BF16,
#                   lr 1e-5, 10 epochs (many BF16 updates round to nothing).
#
# plus small-fp32, the plain small run (FP32, lr 1e-3, 10 epochs): the start
# of (c), and the FP32 reference for (b)-(e).
#
#   examples/regimes.sh OUT_ROOT [REGIME...]   (default: all of them)
#
# A regime whose folder already holds a finished run (its last file) is
# skipped; a run is made in OUT_ROOT/NAME.part and renamed when it has
# finished. The small runs take about a minute each on 2 cores (--threads 2;
# the output is deterministic for a given thread count). Prints the time per
# regime, then the number and size of the files of each. Needs a Python with
# torch, numpy and safetensors: $PYTHON, default ~/.cache/tpde/venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_ROOT [REGIME...]   (regimes: notes bf16 frozen steps bf16-lowlr small-fp32)" >&2
  exit 2
fi
root=$1
shift
all=(small-fp32 bf16 frozen steps bf16-lowlr notes)
if [ $# -gt 0 ]; then wanted=("$@"); else wanted=("${all[@]}"); fi
PYTHON=${PYTHON:-$HOME/.cache/tpde/venv/bin/python}
train=("$PYTHON" -u examples/train_checkpoints.py)
small=(--preset small --threads 2)
mkdir -p "$root"

declare -A took
order=()

# run NAME LAST_FILE ARGS...: unless OUT_ROOT/NAME/LAST_FILE exists, trains
# with ARGS into OUT_ROOT/NAME.part (log in train.log), then renames it.
run() {
  local name=$1 last=$2
  shift 2
  local out=$root/$name
  [ -n "${took[$name]:-}" ] && return 0
  order+=("$name")
  if [ -f "$out/$last" ]; then
    echo "== $name: finished run already in $out, skipped"
    took[$name]="existing"
    return 0
  fi
  if [ -e "$out" ]; then
    echo "error: $out exists but does not hold a finished run ($last missing); remove it" >&2
    exit 1
  fi
  echo "== $name: training into $out"
  rm -rf "$out.part"
  mkdir -p "$out.part"
  local t0 t1
  t0=$(date +%s.%N)
  "${train[@]}" "$@" --out "$out.part" 2>&1 | tee "$out.part/train.log"
  t1=$(date +%s.%N)
  mv "$out.part" "$out"
  took[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f s", b - a }')
  echo "== $name: ${took[$name]}"
}

regime() {
  case $1 in
    small-fp32)
      run small-fp32 adam/epoch-10.safetensors "${small[@]}" --dtype fp32 ;;
    bf16)
      run bf16 adam/epoch-10.safetensors "${small[@]}" --dtype bf16 ;;
    frozen)
      regime small-fp32
      run frozen adam/epoch-10.safetensors "${small[@]}" --dtype fp32 --freeze-most \
        --init "$root/small-fp32/weights/epoch-10.safetensors" --seed 1 ;;
    steps)
      run steps adam/step-000100.safetensors "${small[@]}" --dtype fp32 \
        --save-every-steps 10 --max-steps 100 ;;
    bf16-lowlr)
      run bf16-lowlr adam/epoch-10.safetensors "${small[@]}" --dtype bf16 --lr 1e-5 ;;
    notes)
      local out=$root/notes
      if [ ! -e "$out" ] && [ -n "${TPDE_NOTES_RUN:-}" ] \
          && [ -f "$TPDE_NOTES_RUN/weights/epoch-10.safetensors" ]; then
        ln -s "$(cd "$TPDE_NOTES_RUN" && pwd -P)" "$out"
        echo "== notes: linked $out -> $(readlink "$out") (from TPDE_NOTES_RUN)"
        order+=(notes)
        took[notes]="linked"
        return 0
      fi
      # The notes run is 50-80 minutes: 10 epochs of 313 steps on 2 cores.
      run notes weights/epoch-10.safetensors --preset notes --dtype fp32 --threads 2 ;;
    *)
      echo "error: unknown regime $1 (regimes: ${all[*]})" >&2
      exit 2 ;;
  esac
}

for r in "${wanted[@]}"; do
  regime "$r"
done

echo
printf '%-12s %9s %16s %16s\n' regime time "weights files" "adam files"
for name in "${order[@]}"; do
  cols=()
  for part in weights adam; do
    dir=$root/$name/$part
    n=$(find -L "$dir" -name '*.safetensors' 2>/dev/null | wc -l)
    bytes=$(find -L "$dir" -name '*.safetensors' -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    cols+=("$(awk -v n="$n" -v b="$bytes" 'BEGIN { printf "%d, %.1f MB", n, b / 1e6 }')")
  done
  printf '%-12s %9s %16s %16s\n' "$name" "${took[$name]}" "${cols[0]}" "${cols[1]}"
done
