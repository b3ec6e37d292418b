#!/usr/bin/env bash
# CPU per request of one routewise build, for quick A/B comparisons (issue 18): the
# gateway (kNN trained on routerbench-3k, lambda 0.5, the 11 RouterBench models on the
# testkit mock) under oha at a fixed rate; prints requests, process CPU time (utime +
# stime from /proc/PID/stat), CPU per request and the latency percentiles.
#
#   bash bench/cpu_per_request.sh target/release/routewise            # ROUTEWISE_LOG=info
#   LOG=warn RATE=2000 DUR=8 THREADS=1 RUNTIME=thread-per-core bash bench/cpu_per_request.sh /tmp/other-build
#   BODY=conversation.json bash bench/cpu_per_request.sh BIN   # another request body
#   EPSILON=0.02 LOG_PROMPT=1 SHADOW=1 bash bench/cpu_per_request.sh BIN   # issue 17's logging:
#       exploration, prompts in the decision log, one shadow router (the same kNN, lambda 5;
#       SHADOW_SAMPLE=0.25: it decides a quarter of the requests)
#   SIGNALS=1 bash bench/cpu_per_request.sh BIN   # issue 15: 20 routes (bench/signals-routes.yaml,
#       none matching the request) and the PII guard (every detector, action tag)
#   CACHE=1 bash bench/cpu_per_request.sh BIN     # the response cache (the one request body:
#       every request after the first is an exact hit)
#   CACHE_REDIS=redis://127.0.0.1:6399 bash bench/cpu_per_request.sh BIN   # the same in Redis
#   PERF=1 bash bench/cpu_per_request.sh BIN    # also perf-records the gateway to $PERF_OUT
#                                               # (then: perf script -i ... | python3 bench/perf_categories.py)
#   RATE=0 CONNS=64 bash bench/cpu_per_request.sh BIN   # closed loop (oha as fast as it can,
#       64 connections) instead, after the same run against the mock alone: prints both
#       throughputs, their ratio, and each process's CPU per request
# Alternate the builds over several rounds and compare medians: the machine is noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:?usage: cpu_per_request.sh ROUTEWISE_BINARY}")"
rate="${RATE:-2000}"; dur="${DUR:-8}"; level="${LOG:-info}"
cargo build -q --release -p routewise-testkit
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"
"$bin" train --data "${BENCH_DATA:-../shared/data/routerbench-3k.jsonl}" --router knn --out "$work/knn.rw" >/dev/null 2>&1
explore=""; [ -z "${EPSILON:-}" ] || explore=", exploration: {epsilon: $EPSILON}"
{
  echo "listen: 127.0.0.1:$gw_port"
  echo "router: {artifact: $work/knn.rw, policy: {lambda: 0.5}$explore}"
  if [ "${LOG_PROMPT:-0}" = 1 ]; then echo "log: {decisions: {prompt: true}}"; fi
  if [ "${SHADOW:-0}" = 1 ]; then echo "shadow: [{name: shadow, artifact: $work/knn.rw, policy: {lambda: 5}, sample: ${SHADOW_SAMPLE:-1}}]"; fi
  if [ "${SIGNALS:-0}" = 1 ]; then cat bench/signals-routes.yaml; echo "pii: {action: tag}"; fi
  if [ "${CACHE:-0}" = 1 ]; then echo "cache: {exact: true, semantic: {threshold: 0.92}}"; fi
  if [ -n "${CACHE_REDIS:-}" ]; then echo "cache: {exact: true, semantic: {threshold: 0.92}, backend: redis, redis_url: \"$CACHE_REDIS\"}"; fi
  echo "models:"
  for m in "${RW_MODELS[@]}"; do echo "  - {name: $m, base_url: http://127.0.0.1:$mock_port/v1}"; done
} > "$work/gw.yaml"
target/release/routewise-mock --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & mock_pid=$!; pids+=($mock_pid)
ROUTEWISE_LOG="$level" "$bin" serve ${THREADS:+--threads "$THREADS"} ${RUNTIME:+--runtime "$RUNTIME"} --config "$work/gw.yaml" 2> "$work/gw.log" & gw_pid=$!; pids+=($gw_pid)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
if [ -n "${BODY:-}" ]; then cp "$BODY" "$work/body.json"; else
printf '%s' '{"model":"auto","messages":[{"role":"user","content":"Write a Python function that checks whether a number is prime, with a docstring."}],"max_tokens":64}' > "$work/body.json"
fi
url="http://127.0.0.1:$gw_port/v1/chat/completions"
warm_rate="$rate"; [ "$rate" != 0 ] || warm_rate=2000
oha -z 3s -c 16 -q "$warm_rate" -m POST -T application/json -D "$work/body.json" --no-tui "$url" > /dev/null   # warm-up
closed_loop() { # url -> oha's JSON
  oha -z "${dur}s" -c "${CONNS:-64}" -m POST -T application/json -D "$work/body.json" --no-tui \
      --output-format json "$1"
}
direct=0
if [ "$rate" = 0 ]; then   # closed loop: the mock alone first
  closed_loop "http://127.0.0.1:$mock_port/v1/chat/completions" > "$work/direct.json"
  direct="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"])' "$work/direct.json")"
fi
t0="$(awk '{print $14 + $15}' "/proc/$gw_pid/stat")"; m0="$(awk '{print $14 + $15}' "/proc/$mock_pid/stat")"
perf_pid=""
if [ "${PERF:-0}" = 1 ]; then
  perf record -F 2999 -g --call-graph dwarf,16384 -p "$gw_pid" -o "${PERF_OUT:-perf.data}" -- sleep "$dur" > /dev/null 2>&1 &
  perf_pid=$!
fi
if [ "$rate" = 0 ]; then
  closed_loop "$url" > "$work/oha.json"
else
oha -z "${dur}s" -c 16 -q "$rate" --latency-correction -m POST -T application/json -D "$work/body.json" \
    --no-tui --output-format json "$url" > "$work/oha.json"
fi
t1="$(awk '{print $14 + $15}' "/proc/$gw_pid/stat")"; m1="$(awk '{print $14 + $15}' "/proc/$mock_pid/stat")"
[ -z "$perf_pid" ] || wait "$perf_pid" || true
python3 - "$work/oha.json" "$t0" "$t1" "$m0" "$m1" "$direct" <<'PY'
import json, os, sys
d = json.load(open(sys.argv[1]))
n = sum((d.get("statusCodeDistribution") or {}).values())
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / os.sysconf("SC_CLK_TCK")
p = d["latencyPercentiles"]
mock = (int(sys.argv[5]) - int(sys.argv[4])) / os.sysconf("SC_CLK_TCK")
print(f"requests {n}, cpu {cpu:.2f} s, cpu/request {cpu / n * 1e6:.1f} us (the mock behind it: {mock / n * 1e6:.1f} us), p50 {p['p50'] * 1e3:.3f} ms, p99 {p['p99'] * 1e3:.3f} ms")
direct = float(sys.argv[6])
if direct > 0:
    rps = d["summary"]["requestsPerSec"]
    print(f"closed loop: mock alone {direct:.0f} req/s, through routewise {rps:.0f} req/s, ratio {rps / direct:.3f}; gateway CPU per request / the mock's {cpu / max(mock, 1e-9):.2f}")
PY
