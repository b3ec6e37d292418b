#!/usr/bin/env bash
# `routewise profile` throughput and memory against the instant mock upstream
# (routewise-mock): calls per second at --concurrency 32 over two models, and peak RSS
# for N and 10 N probe prompts (flat = the run holds a window of probes, not the file).
#
# Usage: bash bench/profile.sh [N]   (default N = 2000; release binaries are built first)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-${1:-2000}}
cargo build --release -q -p routewise -p routewise-testkit
BIN=target/release
work=$(mktemp -d)
trap 'kill $mock 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
$BIN/routewise-mock --listen 127.0.0.1:$port > "$work/mock.log" 2>&1 &
mock=$!
for _ in $(seq 50); do grep -q listening "$work/mock.log" && break; sleep 0.1; done
cat > "$work/gateway.yaml" <<YAML
listen: 127.0.0.1:0
models:
  - {name: a, base_url: "http://127.0.0.1:$port/v1", upstream_model: up-a, price: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: b, base_url: "http://127.0.0.1:$port/v1", upstream_model: up-b, price: {input_per_mtok: 3, output_per_mtok: 4}}
YAML
python3 - "$work" "$N" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
for count in (n, 10 * n):
    with open(f"{work}/probes-{count}.jsonl", "w") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: which is right?\nA) one\nB) two", "reference": "B"}) + "\n")
PY
echo "| probes | pairs | wall s | calls/s | peak RSS MB |"
echo "|---|---|---|---|---|"
for count in "$N" $((10 * N)); do
  rm -f "$work/out.jsonl"
  /usr/bin/time -f "%e %M" -o "$work/time" $BIN/routewise profile --config "$work/gateway.yaml" \
      --probe "$work/probes-$count.jsonl" --out "$work/out.jsonl" --concurrency 32 2> "$work/err" || { cat "$work/err"; exit 1; }
  read -r wall rss < "$work/time"
  lines=$(wc -l < "$work/out.jsonl")
  [ "$lines" -eq "$count" ] || { echo "expected $count lines, got $lines"; cat "$work/err"; exit 1; }
  python3 -c "w=$wall; p=2*$count; print(f'| $count | {p} | {w:.2f} | {p/w:.0f} | {$rss/1024:.1f} |')"
done
