#!/usr/bin/env bash
# CPU speed of Hearth beside the llama.cpp peer, measured in the same run, alternating, so the
# VM's minute-to-minute drift hits both alike (see ../shared/NOTES.md), and the ratio table.
#
#   tools/bench_cpu.sh MODEL.gguf [MODEL.gguf ...]
#   ROUNDS=5 tools/bench_cpu.sh smollm2.gguf gemma3.gguf
#   PROMPT=64 GEN=16 tools/bench_cpu.sh llama8b-q4_k.gguf   # smaller tests for big models
#   DEPTHS=0,4096,16384 PROMPT=512 GEN=32 tools/bench_cpu.sh gemma3.gguf   # llama-bench's -d
#
# A model is a GGUF path (`hearth show NAME --path`-style paths from the store work too).
# Needs: target/release/hearth (cargo build --release) and the peer's llama-bench at
# $LLAMA_BENCH (default ./peer/build/bin/llama-bench; build it with
# ../shared/tools/build-llama-cpp-peer.sh ./peer). Both run pp$PROMPT and tg$GEN (default 512
# and 128) with $THREADS (2) threads and an f16 KV cache (both engines' default). Each round
# also measures the streaming-read bandwidth (`hearth bench memory`), so decode is reported as
# a fraction of the roofline: tokens/s × weight bytes read per token ÷ bandwidth.
# Raw results go to $OUT (default bench_cpu.jsonl), one JSON line per test; the table is
# Markdown on stdout (medians over the rounds; ratio = Hearth ÷ llama.cpp).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: tools/bench_cpu.sh MODEL.gguf [MODEL.gguf ...]" >&2; exit 2; }
rounds="${ROUNDS:-3}"
hearth="${HEARTH:-./target/release/hearth}"
llama_bench="${LLAMA_BENCH:-./peer/build/bin/llama-bench}"
threads="${THREADS:-2}"
prompt="${PROMPT:-512}"
gen="${GEN:-128}"
depth="${DEPTHS:-${DEPTH:-0}}"
out="${OUT:-bench_cpu.jsonl}"
: >"$out"

for ((i = 1; i <= rounds; i++)); do
  echo "== round $i" >&2
  bw=$("$hearth" bench memory -t "$threads" -r 3 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["best_gbs"])')
  for model in "$@"; do
    bytes=$("$hearth" bench model "$model" -t "$threads" -p 0 -n 1 -r 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["weight_bytes_per_token"])')
    # Both print llama-bench's JSON; one reader for both.
    for engine in hearth llama.cpp; do
      if [ "$engine" = hearth ]; then
        "$hearth" bench model "$model" -t "$threads" -p "$prompt" -n "$gen" -d "$depth" -r 1 --json
      else
        "$llama_bench" -m "$model" -t "$threads" -p "$prompt" -n "$gen" -d "$depth" -r 1 -o json 2>/dev/null
      fi | ENGINE="$engine" MODEL="$model" BW="$bw" BYTES="$bytes" python3 -c '
import json, os, sys
for r in json.load(sys.stdin):
    test = ("pp%d" % r["n_prompt"]) if r["n_prompt"] else ("tg%d" % r["n_gen"])
    if r.get("n_depth"):
        test += " @ d%d" % r["n_depth"]
    print(json.dumps({"engine": os.environ["ENGINE"], "model": os.path.basename(os.environ["MODEL"]),
                      "test": test, "tokens_per_s": r["avg_ts"], "bandwidth_gbs": float(os.environ["BW"]),
                      "weight_bytes_per_token": int(os.environ["BYTES"])}))' | tee -a "$out" >&2
    done
  done
done

python3 - "$out" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["model"], r["test"], r["engine"])].append(r)
print("| model | test | Hearth t/s | llama.cpp t/s | ratio | Hearth roofline | llama.cpp roofline |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for (model, test) in dict.fromkeys((m, t) for (m, t, _) in by):
    h, l = by.get((model, test, "hearth"), []), by.get((model, test, "llama.cpp"), [])
    if not h or not l:
        continue
    med = lambda rs: statistics.median(r["tokens_per_s"] for r in rs)
    # Decode reads every weight once per token; prefill reuses them, so no roofline there.
    roof = lambda rs: ("%.0f%%" % (100 * statistics.median(
        r["tokens_per_s"] * r["weight_bytes_per_token"] / (r["bandwidth_gbs"] * 1e9) for r in rs))
        if test.startswith("tg") else "")
    print(f"| {model} | {test} | {med(h):.1f} | {med(l):.1f} | {med(h) / med(l):.2f}× | {roof(h)} | {roof(l)} |")
PY
