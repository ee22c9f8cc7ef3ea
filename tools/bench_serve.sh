#!/usr/bin/env bash
# Server throughput of `hearth serve` beside llama.cpp's `llama-server`, both driven by the same
# client (`hearth bench serve`) in the same run, alternating round by round, so the VM's
# minute-to-minute drift hits both alike (see ../shared/NOTES.md), and the table.
#
#   tools/bench_serve.sh MODEL.gguf
#   ROUNDS=3 STREAMS=1,4,8 REQUESTS=2 GEN=64 tools/bench_serve.sh ~/.hearth/models/blobs/sha256-b179...
#
# MODEL.gguf is the file llama-server loads; Hearth serves the store's model $MODEL_NAME
# (default smollm2), which must be the same file. Both get $PARALLEL (8) parallel sequences,
# $THREADS (2) threads, continuous batching and an f16 KV cache; llama-server a context of
# $CTX (8192) shared by its slots. Needs target/release/hearth and $LLAMA_SERVER (default
# ./peer/build/bin/llama-server; ../shared/tools/build-llama-cpp-peer.sh ./peer builds it).
# Raw results go to $OUT (default bench_serve.jsonl), one JSON line per level; the Markdown
# table on stdout gives each round's figures side by side; the servers' logs go to $LOGS
# (default a new temporary directory).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: tools/bench_serve.sh MODEL.gguf" >&2; exit 2; }
model="$1"
rounds="${ROUNDS:-2}"
streams="${STREAMS:-1,4,8}"
requests="${REQUESTS:-2}"
gen="${GEN:-64}"
threads="${THREADS:-2}"
parallel="${PARALLEL:-8}"
ctx="${CTX:-8192}"
name="${MODEL_NAME:-smollm2}"
hearth="${HEARTH:-./target/release/hearth}"
llama_server="${LLAMA_SERVER:-./peer/build/bin/llama-server}"
hearth_port="${HEARTH_PORT:-11500}"
llama_port="${LLAMA_PORT:-11501}"
out="${OUT:-bench_serve.jsonl}"
logs="${LOGS:-$(mktemp -d)}"
: >"$out"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

HEARTH_HOST="127.0.0.1:$hearth_port" HEARTH_NUM_PARALLEL="$parallel" HEARTH_THREADS="$threads" \
  "$hearth" serve >"$logs/hearth.log" 2>&1 &
pids+=($!)
"$llama_server" -m "$model" -np "$parallel" -c "$ctx" -t "$threads" -cb \
  --host 127.0.0.1 --port "$llama_port" >"$logs/llama-server.log" 2>&1 &
pids+=($!)

# Both answer HTTP once listening (llama-server with 503 while it loads; the client's
# warm-up request waits for neither, so wait here for a 200).
for port in "$hearth_port" "$llama_port"; do
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models" || true)
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "$code" = 200 ] || { echo "the server on port $port did not come up (see $logs)" >&2; exit 1; }
done

for ((i = 1; i <= rounds; i++)); do
  echo "== round $i" >&2
  for engine in hearth llama-server; do
    port=$hearth_port
    [ "$engine" = llama-server ] && port=$llama_port
    "$hearth" bench serve "http://127.0.0.1:$port" --model "$name" -c "$streams" -r "$requests" \
      -n "$gen" --json |
      ENGINE="$engine" ROUND="$i" python3 -c '
import json, os, sys
for line in sys.stdin:
    r = json.loads(line)
    r["engine"], r["round"] = os.environ["ENGINE"], int(os.environ["ROUND"])
    print(json.dumps(r))' | tee -a "$out" >&2
  done
done

python3 - "$out" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["streams"], r["engine"])].append(r)
print("| streams | Hearth tok/s | Hearth TTFT p50 / p99 ms | llama-server tok/s | llama-server TTFT p50 / p99 ms | Hearth / llama-server |")
print("|---|---|---|---|---|---|")
one = {e: [r["tokens_per_s"] for r in by[(1, e)]] for e in ("hearth", "llama-server")}
for s in sorted({s for (s, _) in by}):
    h, l = by[(s, "hearth")], by[(s, "llama-server")]
    tps = lambda rs: ", ".join("%.1f" % r["tokens_per_s"] for r in rs)
    ttft = lambda rs: ", ".join("%.0f/%.0f" % (r["ttft_p50_ms"], r["ttft_p99_ms"]) for r in rs)
    ratio = ", ".join("%.2f×" % (a["tokens_per_s"] / b["tokens_per_s"]) for a, b in zip(h, l))
    print(f"| {s} | {tps(h)} | {ttft(h)} | {tps(l)} | {ttft(l)} | {ratio} |")
for e in ("hearth", "llama-server"):
    rs = by.get((max(s for (s, _) in by), e), [])
    if one[e] and rs:
        scale = ", ".join("%.2f×" % (r["tokens_per_s"] / o) for r, o in zip(rs, one[e]))
        print(f"\n{e}: {max(s for (s, _) in by)} streams ÷ 1 stream = {scale}")
PY
