#!/usr/bin/env bash
# Gateway overhead of a cascade (issue 13): latency of a request answered by the tier
# (two tier models called in parallel, agreeing) against one call to the mock directly and
# one plain routed request through the same gateway (`"routewise": {"cascade": false}`).
# oha at a fixed RATE (default 200 req/s) for DUR seconds (default 8), 4 connections. With
# ../shared/data present, also the learned confidence chain accepted after one tier call.
#
# The gateways run at the default configuration (log level info, decision log on) unless
# LOG sets ROUTEWISE_LOG (e.g. LOG=warn); a ROUTEWISE_LOG in the caller's environment is
# ignored.
#
#   bash bench/cascade.sh                 # release build
#   RATE=500 DUR=10 bash bench/cascade.sh
#   LOG=warn bash bench/cascade.sh
#   GW_RUNTIME=thread-per-core bash bench/cascade.sh   # serve --runtime (default work-stealing)
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${RATE:-200}"; dur="${DUR:-8}"
cargo build -q --release -p routewise -p routewise-testkit
command -v oha >/dev/null 2>&1 || cargo install -q oha
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"
{
  echo "listen: 127.0.0.1:$gw_port"
  echo "router: {policy: {lambda: 0}, cascade: {tier: [mistralai/mistral-7b-chat, mistralai/mixtral-8x7b-chat], min_agree: 2, extractor: number}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do echo "  - {name: $m, base_url: http://127.0.0.1:$mock_port/v1}"; done
} > "$work/gw.yaml"
target/release/routewise-mock --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & pids+=($!)
env -u ROUTEWISE_LOG ${LOG:+"ROUTEWISE_LOG=$LOG"} target/release/routewise serve --runtime "${GW_RUNTIME:-work-stealing}" --config "$work/gw.yaml" 2> "$work/gw.log" & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
msg='"messages":[{"role":"user","content":"What is six times seven? 42"}]'
printf '{"model":"mistralai/mistral-7b-chat",%s}' "$msg" > "$work/direct.json"
printf '{"model":"auto",%s}' "$msg" > "$work/cascade.json"
printf '{"model":"auto",%s,"routewise":{"cascade":false}}' "$msg" > "$work/plain.json"
curl -sf -D - -o /dev/null -H 'content-type: application/json' --data @"$work/cascade.json" \
  "http://127.0.0.1:$gw_port/v1/chat/completions" | grep -i '^x-routewise-cascade:'
run() { # url body -> "p50 p99" (ms)
  oha -z "${dur}s" -c 4 -q "$rate" --latency-correction -m POST -T application/json -D "$2" \
      --no-tui --output-format json "$1" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin); p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
bad = sum(v for k, v in codes.items() if k != "200")
print("%.3f %.3f %d" % (p["p50"] * 1e3, p["p99"] * 1e3, bad))'
}
oha -z 2s -c 4 -q "$rate" -m POST -T application/json -D "$work/cascade.json" --no-tui \
    "http://127.0.0.1:$gw_port/v1/chat/completions" > /dev/null   # warm-up
read -r d50 d99 dbad < <(run "http://127.0.0.1:$mock_port/v1/chat/completions" "$work/direct.json")
read -r p50 p99 pbad < <(run "http://127.0.0.1:$gw_port/v1/chat/completions" "$work/plain.json")
read -r c50 c99 cbad < <(run "http://127.0.0.1:$gw_port/v1/chat/completions" "$work/cascade.json")
echo "| path | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|"
echo "| one call to the mock directly | $d50 | $d99 | $dbad |"
echo "| routed, cascade off | $p50 | $p99 | $pbad |"
echo "| cascade accepted (2 tier calls in parallel) | $c50 | $c99 | $cbad |"
# The learned confidence chain (`learned: true`), when the shared data is there: the router
# and chain calibrated on routerbench-3k at alpha 0.1 (its tier is one model), served by a
# second gateway; its answer accepted after one tier call.
data=../shared/data/routerbench-3k.jsonl
if [ ! -f "$data" ]; then
  echo "learned chain: skipped ($data not found)"
elif ! target/release/routewise calibrate --cascade --alpha 0.1 --splits 20 --data "$data" \
    --artifact "$work/chain.rw" > "$work/chain-cal.json" 2>/dev/null; then
  echo "learned chain: skipped (calibrate found no cascade at alpha 0.1)"
else
  chain_port="$(free_port)"
  sed -e "s|^listen: .*|listen: 127.0.0.1:$chain_port|" \
      -e "s|^router: .*|router: {artifact: $work/chain.rw, policy: {lambda: 0}, cascade: {learned: true, extractor: number}}|" \
      "$work/gw.yaml" > "$work/chain.yaml"
  env -u ROUTEWISE_LOG ${LOG:+"ROUTEWISE_LOG=$LOG"} target/release/routewise serve --runtime "${GW_RUNTIME:-work-stealing}" --config "$work/chain.yaml" 2> "$work/chain.log" & pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$chain_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  verdict="$(curl -sf -D - -o /dev/null -H 'content-type: application/json' --data @"$work/cascade.json" \
    "http://127.0.0.1:$chain_port/v1/chat/completions" | tr -d '\r' | grep -i '^x-routewise-cascade:' || true)"
  read -r l50 l99 lbad < <(run "http://127.0.0.1:$chain_port/v1/chat/completions" "$work/cascade.json")
  echo "| learned chain (${verdict:-no verdict header}) | $l50 | $l99 | $lbad |"
  awk -v c="$l50" -v d="$d50" -v cc="$l99" -v dd="$d99" 'BEGIN{printf "learned chain minus one direct call: p50 +%.3f ms, p99 +%.3f ms (target: <= +1 ms)\n", c-d, cc-dd}'
fi
awk -v c="$c50" -v d="$d50" -v cc="$c99" -v dd="$d99" 'BEGIN{printf "cascade accepted minus one direct call: p50 +%.3f ms, p99 +%.3f ms (target: <= +1 ms)\n", c-d, cc-dd}'
