#!/usr/bin/env bash
# CPU speed of Hearth beside the llama.cpp peer, measured in the same run, alternating, so the
# VM's minute-to-minute drift hits both alike (see ../shared/NOTES.md), then a table of
# Hearth's tokens/s over llama.cpp's per test (the median of the rounds).
#
#   tools/bench_cpu.sh MODEL.gguf [ROUNDS]
#   PROMPT=64 GEN=16 tools/bench_cpu.sh llama8b-q4_k.gguf 2   # smaller tests for big models
#   DEPTHS=0,4096,16384 tools/bench_cpu.sh gemma3.gguf 3      # speed at depth (llama-bench -d)
#
# Needs: target/release/hearth (cargo build --release) and the peer's llama-bench at
# $LLAMA_BENCH (default ./peer/build/bin/llama-bench; build it with
# ../shared/tools/build-llama-cpp-peer.sh ./peer). Both run pp$PROMPT and tg$GEN (default 512
# and 128) after each of $DEPTHS tokens already in the cache (default 0), with 2 threads and
# an f16 KV cache (both engines' default). The JSON lines of every round are kept in $OUT
# (default a temporary file).
set -euo pipefail
model="$1"
rounds="${2:-3}"
hearth="${HEARTH:-./target/release/hearth}"
llama_bench="${LLAMA_BENCH:-./peer/build/bin/llama-bench}"
threads="${THREADS:-2}"
prompt="${PROMPT:-512}"
gen="${GEN:-128}"
depths="${DEPTHS:-0}"
out="${OUT:-$(mktemp)}"
: >"$out"

for ((i = 1; i <= rounds; i++)); do
  echo "== round $i"
  # Both print llama-bench's JSON; one reader for both.
  for engine in hearth llama.cpp; do
    if [ "$engine" = hearth ]; then
      "$hearth" bench model "$model" -t "$threads" -p "$prompt" -n "$gen" -d "$depths" -r 1 --json
    else
      "$llama_bench" -m "$model" -t "$threads" -p "$prompt" -n "$gen" -d "$depths" -r 1 -o json 2>/dev/null
    fi | ENGINE="$engine" python3 -c 'import json,os,sys; [print(json.dumps({"engine": os.environ["ENGINE"], "test": (("pp%d" % r["n_prompt"]) if r["n_prompt"] else ("tg%d" % r["n_gen"])) + ("@d%d" % r.get("n_depth", 0) if r.get("n_depth", 0) else ""), "tokens_per_s": r["avg_ts"]})) for r in json.load(sys.stdin)]' | tee -a "$out"
  done
done

echo "== Hearth / llama.cpp (median tokens/s of $rounds rounds)"
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["test"], {}).setdefault(r["engine"], []).append(r["tokens_per_s"])
print("| test | Hearth t/s | llama.cpp t/s | ratio |")
print("|---|---:|---:|---:|")
for test, by in runs.items():
    h = statistics.median(by.get("hearth", [float("nan")]))
    l = statistics.median(by.get("llama.cpp", [float("nan")]))
    print(f"| {test} | {h:.1f} | {l:.1f} | {h / l:.2f}x |")
PY
