#!/usr/bin/env bash
# Passkey retrieval at length, as llama.cpp's `passkey` example: a random 5-digit number
# hidden at a random depth in repeated filler text, and the model asked to repeat it
# (greedy, raw completion). Prints one line per trial and the share found.
#
#   tools/passkey.sh MODEL N_TOKENS [TRIALS] [SEED]
#   tools/passkey.sh gemma3:270m 2048 5
#   PEER=/work/peer/build/bin/llama-completion GGUF=model.gguf tools/passkey.sh gemma3:270m 8192
#
# The prompt is about N_TOKENS long in the model's own tokens (`hearth tokenize`); the context
# is N_TOKENS + 64. With $PEER (llama.cpp's llama-completion) and $GGUF (the same model's
# file) each trial's prompt also runs through the peer, alternating, and both answers print.
set -euo pipefail
model="$1"
n_tokens="$2"
trials="${3:-5}"
seed="${4:-1}"
hearth="${HEARTH:-./target/release/hearth}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

junk="The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# Tokens of 10 filler lines, to size the prompt in the model's own tokens.
per_10="$(python3 -c 'import sys; print((sys.argv[1] + " ") * 10)' "$junk" | "$hearth" tokenize "$model" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
n_junk=$(( (n_tokens - 80) * 10 / per_10 ))
found=0
peer_found=0
for ((t = 0; t < trials; t++)); do
  read -r key depth < <(python3 - "$seed" "$t" "$n_junk" "$junk" "$work/prompt.txt" <<'PY'
import random, sys
seed, t, n_junk, junk, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rng = random.Random(seed * 1000 + t)
key = rng.randint(10000, 99999)
at = rng.randint(0, n_junk)
text = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information there.\n\n"
        + (junk + " ") * at
        + f"The pass key is {key}. Remember it. {key} is the pass key. "
        + (junk + " ") * (n_junk - at)
        + "\n\nWhat is the pass key? The pass key is")
open(path, "w").write(text)
print(key, f"{at / max(n_junk, 1):.2f}")
PY
  )
  answer="$("$hearth" run "$model" --raw --temperature 0 -n 8 --num-ctx $((n_tokens + 64)) <"$work/prompt.txt" | tr '\n' ' ')"
  ok=no
  if [[ "$answer" == *"$key"* ]]; then ok=yes; found=$((found + 1)); fi
  line="trial $t: key $key at depth $depth: hearth ${ok} (\"${answer:0:40}\")"
  if [ -n "${PEER:-}" ]; then
    peer_answer="$("$PEER" -m "$GGUF" -f "$work/prompt.txt" -n 8 --temp 0 -c $((n_tokens + 64)) -t 2 -no-cnv 2>/dev/null | tail -c 200 | tr '\n' ' ')"
    peer_ok=no
    if [[ "$peer_answer" == *"$key"* ]]; then peer_ok=yes; peer_found=$((peer_found + 1)); fi
    line="$line; llama.cpp ${peer_ok}"
  fi
  echo "$line"
done
echo "found: hearth $found/$trials at ~$n_tokens tokens${PEER:+, llama.cpp $peer_found/$trials}"
