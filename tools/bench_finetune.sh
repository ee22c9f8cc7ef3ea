#!/usr/bin/env bash
# LoRA training speed and peak memory of `hearth finetune` beside PyTorch + PEFT on the CPU, the
# same steps on the same data, alternating engines round by round (issue #11's target: Hearth
# at >= 1.5x PyTorch's tokens/s and <= 0.5x its peak RSS).
#
#   tools/bench_finetune.sh smollm2                    # a model in the store ($HEARTH_MODELS)
#   ROUNDS=3 BYTES=9000 THREADS=2 tools/bench_finetune.sh smollm2
#
# Both: LoRA r 8 (alpha 16, no dropout) on all seven projections, sequences of $SEQ (256)
# tokens, one sequence per AdamW step at lr 2e-4 (constant, no clipping), $THREADS (2)
# threads. The data is the first $BYTES (6000) bytes of $TEXT (default ARCHITECTURE.md) as
# plain text: Hearth tokenizes and cuts it into $SEQ-token sequences; PyTorch gets the ids
# `hearth tokenize` gives and cuts them the same way (tools/bench_finetune_peft.py). Hearth
# holds the base in its stored block format; transformers dequantizes it to fp32, as PEFT
# users run it. tokens/s counts training steps only (model load excluded) on both sides; peak
# RSS is /usr/bin/time -v's "Maximum resident set size" of the whole process. On a loaded machine
# wall time says little, so CPU seconds per 1000 training tokens are reported too (Hearth: the
# whole process's user + system time, its load being a memory map; PyTorch: the training loop's
# process time, its fp32 load excluded).
# Needs target/release/hearth and $PYTHON (default python3; e.g. a venv) with torch,
# transformers, accelerate, gguf and peft (tools/requirements.txt). Prints a Markdown table
# (medians over the rounds); raw lines go to $OUT (default bench_finetune.jsonl).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: tools/bench_finetune.sh MODEL (a name in the store)" >&2; exit 2; }
model="$1"
# The store's GGUF blob, for transformers (hearth itself takes the name).
gguf=$(python3 - "$model" <<'EOF'
import json, os, pathlib, sys
root = pathlib.Path(os.environ.get("HEARTH_MODELS", pathlib.Path.home() / ".hearth/models"))
name, _, tag = sys.argv[1].partition(":")
m = json.loads((root / "manifests" / name / (tag or "latest")).read_text())
d = next(l["digest"] for l in m["layers"] if l["mediaType"].endswith(".model"))
print(root / "blobs" / d.replace(":", "-"))
EOF
)
rounds="${ROUNDS:-2}"
hearth="${HEARTH:-./target/release/hearth}"
python="${PYTHON:-python3}"
threads="${THREADS:-2}"
seq="${SEQ:-256}"
bytes="${BYTES:-6000}"
out="${OUT:-bench_finetune.jsonl}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
head -c "$bytes" "${TEXT:-ARCHITECTURE.md}" >"$work/text.txt"
"$hearth" tokenize "$model" <"$work/text.txt" >"$work/ids.json"
: >"$out"

peak_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$1"; }

for ((i = 1; i <= rounds; i++)); do
  echo "== round $i" >&2
  /usr/bin/time -v "$hearth" finetune "$model" --data "$work/text.txt" --out "$work/lora.gguf" \
    --rank 8 --alpha 16 --targets all --ctx "$seq" --lr 2e-4 --schedule constant \
    --max-grad-norm 0 --threads "$threads" 2>"$work/hearth.err" >/dev/null
  # The summary line: "steps 1..N of N, loss A → B, T tokens/s; adapter written to …".
  tps=$(sed -n 's/^steps .*, \([0-9.]*\) tokens\/s; adapter.*/\1/p' "$work/hearth.err")
  steps=$(sed -n 's/^steps [0-9]*\.\.\([0-9]*\) of .*/\1/p' "$work/hearth.err")
  tokens=$(sed -n 's/^[0-9]* examples (\([0-9]*\) tokens).*/\1/p' "$work/hearth.err")
  echo "{\"engine\":\"hearth\",\"round\":$i,\"steps\":$steps,\"tokens\":$tokens,\"tokens_per_s\":$tps,\"cpu_s\":$(cpu_s "$work/hearth.err"),\"peak_rss_mb\":$(peak_mb "$work/hearth.err")}" | tee -a "$out" >&2
  /usr/bin/time -v "$python" tools/bench_finetune_peft.py --gguf "$gguf" --ids "$work/ids.json" \
    --seq "$seq" --threads "$threads" >"$work/torch.json" 2>"$work/torch.err"
  "$python" -c 'import json,sys; d=json.load(open(sys.argv[1])); d.update(engine="pytorch+peft", round=int(sys.argv[2]), peak_rss_mb=int(sys.argv[3])); print(json.dumps(d))' \
    "$work/torch.json" "$i" "$(peak_mb "$work/torch.err")" | tee -a "$out" >&2
done

python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda e, k: statistics.median(r[k] for r in rows if r["engine"] == e)
h_t, p_t = med("hearth", "tokens_per_s"), med("pytorch+peft", "tokens_per_s")
h_m, p_m = med("hearth", "peak_rss_mb"), med("pytorch+peft", "peak_rss_mb")
h_c = statistics.median(1000 * r["cpu_s"] / r["tokens"] for r in rows if r["engine"] == "hearth")
p_c = statistics.median(1000 * r["train_cpu_s"] / r["tokens"] for r in rows if r["engine"] != "hearth")
steps = rows[0]["steps"]
print("| engine | steps | training tokens/s | CPU s per 1k tokens | peak RSS (MB) |")
print("|---|---:|---:|---:|---:|")
print(f"| Hearth | {steps} | {h_t:.1f} | {h_c:.1f} | {h_m:.0f} |")
print(f"| PyTorch + PEFT (fp32) | {steps} | {p_t:.1f} | {p_c:.1f} | {p_m:.0f} |")
print(f"| Hearth / PyTorch | | {h_t / p_t:.2f}x (target >= 1.5x) | {p_c / h_c:.2f}x less CPU | "
      f"{h_m / p_m:.2f}x (target <= 0.5x) |")
EOF
