#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo fuzz + libFuzzer) for a given time each
# and prints how many inputs each executed.
#
#   tools/fuzz.sh TARGET SECONDS     TARGET: gguf_model, tokenizer, modelfile, template,
#                                    server_json or all
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP lets cargo fuzz pass its nightly-only flags, and
# `-s none` builds without a sanitizer (Rust's own bounds checks still hold; the fuzzer finds
# panics, aborts, timeouts and memory blow-ups). The seed corpus is written from the test data
# (tests/fuzz.rs, `write_fuzz_seeds`) when fuzz/seeds is missing; what the fuzzer learns
# accumulates in fuzz/corpus/TARGET, and a crashing input lands in fuzz/artifacts/TARGET (make
# it a regression test in tests/fuzz.rs). Needs `cargo install cargo-fuzz`. Runs at low
# priority.
set -euo pipefail

TARGETS=(gguf_model tokenizer modelfile template server_json)
if [[ $# -ne 2 ]]; then
    echo "usage: $0 TARGET|all SECONDS   (targets: ${TARGETS[*]})" >&2
    exit 2
fi
target=$1
seconds=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "cargo fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 1
fi

# The seeds, from the same functions the smoke test uses, written when a target has none
# (delete fuzz/seeds to rewrite them).
for t in "${TARGETS[@]}"; do
    if [[ ! -d fuzz/seeds/$t ]]; then
        nice -n 19 cargo test --release -q --test tests write_fuzz_seeds -- --ignored >/dev/null
        break
    fi
done

run() {
    local t=$1
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    local log
    log=$(mktemp)
    # -timeout: an input running over 10 s is a hang (the issue's bound); -rss_limit_mb: an
    # input that makes the process grow past 2 GB is a finding too.
    local t0=$SECONDS
    set +e
    (cd fuzz && RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run "$t" -s none --release \
        "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/") >"$log" 2>&1
    local rc=$?
    set -e
    local execs
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    # libFuzzer's own "Done N runs in S second(s)" when it ran out its time; else (a crash)
    # the wall time, build included.
    local secs
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*' || true)
    echo "$t: ${execs:-0} executions in ${secs:-$((SECONDS - t0))} s, exit $rc"
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$log" >&2
        echo "log: $log" >&2
        return $rc
    fi
    rm -f "$log"
}

if [[ $target == all ]]; then
    status=0
    for t in "${TARGETS[@]}"; do
        run "$t" || status=1
    done
    exit $status
fi
run "$target"
