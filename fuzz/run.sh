#!/usr/bin/env bash
# Build every cargo-fuzz target with libFuzzer coverage instrumentation on a
# *stable* toolchain and run each for a bounded time; exit non-zero on a crash.
#
# cargo-fuzz itself needs nightly only for `-Zsanitizer`; the coverage
# instrumentation libFuzzer needs (`-Cpasses=sancov-module` plus LLVM flags)
# is available on stable. We therefore pass the same flags cargo-fuzz uses for
# `--sanitizer none`. Safe Rust needs no AddressSanitizer; panics (including
# overflow and debug assertions, both on here) abort and count as crashes.
#
# Usage: fuzz/run.sh [seconds-per-target] [target ...]
set -euo pipefail
cd "$(dirname "$0")"
SECS="${1:-30}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(frame_decode message_decode open_chunk open_record open_envelope)
fi
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# Target dir of its own: the flags differ from the main workspace's.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_FUZZ:-$PWD/target}"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros
# (instrumented build scripts would fail to link), as cargo-fuzz does.
HOST="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bins --target "$HOST"
BIN="$CARGO_TARGET_DIR/$HOST/release"
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
    echo "== fuzz $t for ${SECS}s"
    "$BIN/$t" "corpus/$t" -max_total_time="$SECS" -max_len=70000 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 | tail -n 12
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t FAILED (exit $status); crash input in fuzz/artifacts/$t/" >&2
        exit "$status"
    fi
done
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
