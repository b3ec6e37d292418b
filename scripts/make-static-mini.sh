#!/usr/bin/env bash
# Derives the built-in compact static model, crates/routewise-features/models/static-mini.bin
# (method and format: crates/routewise-features/src/compact.rs; choices and figures:
# crates/routewise-features/models/README.md). Run by hand; CI never runs it.
#
# Inputs: the full static model (distilled locally from all-MiniLM-L6-v2, which comes
# from its PyPI wheel), the TRAIN split prompts of ../shared/data (the test split is never
# read), and the 40,000 most frequent English words from the `wordfreq` PyPI package.
#
# Usage: scripts/make-static-mini.sh [OUT]   (default: the committed file's path)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-crates/routewise-features/models/static-mini.bin}
data=${SHARED_DATA:-../shared/data}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release -p routewise -p routewise-features --features routewise-features/static-embed \
  --example make_static_mini
target/release/routewise models fetch static

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q 'wordfreq==3.1.1'
"$work/venv/bin/python" -c "
import wordfreq
print('\n'.join(wordfreq.top_n_list('en', 40000)))" > "$work/words.txt"

models=$(target/release/routewise models list | sed -n 's/^models root: //p')
target/release/examples/make_static_mini --static "$models/static-minilm-256" --dims 128 \
  --data "$data/routerbench-3k.jsonl" --data "$data/mmlu-pro-12k.jsonl" \
  --words "$work/words.txt" --out "$out"
sha256sum "$out"
