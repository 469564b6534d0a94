#!/usr/bin/env bash
# Short fuzzing pass over the tpde decoder, the safetensors parser (whole
# files, and headers against a JSON-tree reading), the encode/decode round
# trip, archive detection (small inputs, and inputs repeated to 4 MiB so
# that quadratic time shows as a time-out), and the symbols coder (codecs 5, 6)
# alone (cargo-fuzz project in fuzz/).
#
#   FUZZ_SECONDS=30 .ci/fuzz.sh            # all targets, 30 s each (default)
#   FUZZ_SECONDS=300 .ci/fuzz.sh decode    # only the named targets
#
# Installs cargo-fuzz when missing, builds the targets (address sanitizer,
# debug assertions), writes the seed corpora with fuzz/src/bin/make_corpus.rs,
# then runs each target for $FUZZ_SECONDS seconds. Exits non-zero when any
# target finds a crash (panic, sanitizer error, out-of-memory or timeout);
# the input that did it is left in fuzz/artifacts/<target>/ and printed in hex.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
FUZZ_DIR=$ROOT/fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
# Per-input limits: an input that runs longer, or a process that grows past
# the memory limit, counts as a crash.
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-60}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    TARGETS=(decode safetensors roundtrip archive header archive_large symbols)
fi

if ! [[ $FUZZ_SECONDS =~ ^[0-9]+$ ]] || [[ $FUZZ_SECONDS -lt 1 ]]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive whole number of seconds, not '$FUZZ_SECONDS'" >&2
    exit 2
fi

# cargo-fuzz needs nightly-only flags (-Zsanitizer); the toolchain is stable.
export RUSTC_BOOTSTRAP=1
# The binaries are looked for under fuzz/target.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET

start=$SECONDS
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
echo "== $(cargo fuzz --version)"
install_done=$SECONDS

# cargo fuzz has no --locked: a stale fuzz/Cargo.lock would be rewritten by
# the build, leaving the work tree changed. Refuse it instead.
if ! cargo metadata --locked --format-version 1 --manifest-path "$FUZZ_DIR/Cargo.toml" >/dev/null; then
    echo "fuzz.sh: fuzz/Cargo.lock is out of date with the workspace; update it with" >&2
    echo "  cargo update --workspace --manifest-path fuzz/Cargo.toml   (and commit it)" >&2
    exit 1
fi
echo "== building the fuzz targets"
cargo fuzz build --fuzz-dir "$FUZZ_DIR"
build_done=$SECONDS

host=$(rustc -vV | sed -n 's/^host: //p')
echo "== writing the seed corpora"
"$FUZZ_DIR/target/$host/release/make_corpus" "$FUZZ_DIR/corpus"

mkdir -p "$FUZZ_DIR/artifacts"
failed=()
for t in "${TARGETS[@]}"; do
    corpus=$FUZZ_DIR/corpus/$t
    artifacts=$FUZZ_DIR/artifacts/$t
    log=$FUZZ_DIR/artifacts/$t.log
    mkdir -p "$corpus" "$artifacts"
    echo "== fuzzing $t for ${FUZZ_SECONDS}s (log: ${log#"$ROOT"/})"
    t0=$SECONDS
    rc=0
    cargo fuzz run --fuzz-dir "$FUZZ_DIR" "$t" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" \
        -timeout="$FUZZ_TIMEOUT" \
        -rss_limit_mb="$FUZZ_RSS_MB" \
        -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$log" | sed 's/^/   /' || true
    if [[ $rc -ne 0 ]]; then
        failed+=("$t")
        echo "!! $t FAILED (exit $rc) after $((SECONDS - t0))s; from its log:"
        # From the panic or sanitizer report on (the tail if there is none).
        first=$(grep -n -m 1 -E "panicked at|==[0-9]+==ERROR|^ERROR: libFuzzer|^Error:" "$log" | cut -d: -f1 || true)
        if [[ -n $first ]]; then
            tail -n "+$first" "$log" | head -n 60 | sed 's/^/   /'
        else
            tail -n 60 "$log" | sed 's/^/   /'
        fi
        # The input is written just before libFuzzer exits; show the newest.
        art=$(ls -t "$artifacts"/* 2>/dev/null | head -n 1 || true)
        if [[ -n $art ]]; then
            echo "   crashing input: ${art#"$ROOT"/} ($(wc -c <"$art") bytes), hex:"
            od -An -v -tx1 "$art" | tr -d ' \n' | fold -w 128 | sed 's/^/   /'
            echo
            echo "   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $t ${art#"$ROOT"/}"
        fi
    else
        echo "   $t: no crash in $((SECONDS - t0))s"
    fi
done

echo "== fuzz.sh: install $((install_done - start))s, build $((build_done - install_done))s, total $((SECONDS - start))s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crash found by: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${TARGETS[*]}"
