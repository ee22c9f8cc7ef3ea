#!/usr/bin/env bash
# Writes the Book of Genesis (King James Version, public domain) as plain text, one verse per
# line with the verse references ("Ge1:1 ") stripped: the perplexity text of BENCHMARKS.md.
# Source: Debian packages `bible-kjv-text` (the text) and `bible-kjv` (the `bible` reader):
#   apt-get install bible-kjv bible-kjv-text
# Usage: tools/genesis_text.sh > genesis.txt
set -euo pipefail
command -v bible >/dev/null || { echo "install the Debian packages bible-kjv bible-kjv-text" >&2; exit 1; }
bible -f gen1:1-gen50:26 | sed -E 's/^Ge[0-9]+:[0-9]+ //'
