#!/usr/bin/env bash
# Hot reload under load (issue 14, section 5): the gateway (kNN trained on routerbench-3k,
# the 11 RouterBench models on the testkit mock, default log level) under oha at a fixed
# rate, first with no reload (the baseline), then while RELOADS reloads run through
# `POST /admin/reload`, every other one of an invalid file. Prints each run's status
# codes and latency percentiles, and each reload's answer and time.
#
#   bash bench/reload.sh                       # 2,000 req/s, 20 reloads over 12 s
#   RATE=4000 RELOADS=40 bash bench/reload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${RATE:-2000}"; reloads="${RELOADS:-20}"; dur="${DUR:-12}"
cargo build -q --release -p routewise -p routewise-testkit
bin="$PWD/target/release/routewise"
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"
"$bin" train --data "${BENCH_DATA:-../shared/data/routerbench-3k.jsonl}" --router knn --out "$work/knn.rw" >/dev/null 2>&1
config() {  # config LAMBDA [EXTRA]
  echo "listen: 127.0.0.1:$gw_port"
  echo "router: {artifact: $work/knn.rw, policy: {lambda: $1}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do echo "  - {name: $m, base_url: http://127.0.0.1:$mock_port/v1}"; done
  echo "${2:-}"
}
config 0.5 > "$work/gw.yaml"
target/release/routewise-mock --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & pids+=($!)
ROUTEWISE_ADMIN_KEY=bench-admin "$bin" serve --config "$work/gw.yaml" 2> "$work/gw.log" & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
printf '%s' '{"model":"auto","messages":[{"role":"user","content":"Write a Python function that checks whether a number is prime, with a docstring."}],"max_tokens":64}' > "$work/body.json"
url="http://127.0.0.1:$gw_port/v1/chat/completions"
load() {  # load OUT.json: RATE x DUR requests (a fixed count: none is cut off by a deadline)
  oha -n "$((rate * dur))" -c 16 -q "$rate" --latency-correction -m POST -T application/json -D "$work/body.json" \
      --no-tui --output-format json "$url" > "$1"
}
oha -z 3s -c 16 -q "$rate" -m POST -T application/json -D "$work/body.json" --no-tui "$url" > /dev/null   # warm-up
load "$work/base.json"
load "$work/reload.json" & oha_pid=$!
gap="$(python3 -c "print(($dur - 2) / $reloads)")"
sleep 1
: > "$work/reloads.txt"
for i in $(seq 1 "$reloads"); do
  if [ $((i % 2)) = 1 ]; then
    config "$(python3 -c "print([5.0, 0.5][$i // 2 % 2])")" > "$work/gw.yaml.new"; want=200
  else
    config 0.5 "bogus_field: 1" > "$work/gw.yaml.new"; want=400
  fi
  mv "$work/gw.yaml.new" "$work/gw.yaml"
  curl -s -o "$work/answer.json" -w "%{http_code} %{time_total}\n" -X POST \
       -H "authorization: Bearer bench-admin" "http://127.0.0.1:$gw_port/admin/reload" \
       | while read -r code took; do echo "$i want $want got $code in ${took}s $(head -c 160 "$work/answer.json")"; done >> "$work/reloads.txt"
  sleep "$gap"
done
wait "$oha_pid"
cat "$work/reloads.txt"
python3 - "$work/base.json" "$work/reload.json" "$work/reloads.txt" <<'PY'
import json, sys
for name, path in (("no reloads", sys.argv[1]), ("with reloads", sys.argv[2])):
    d = json.load(open(path))
    codes = d.get("statusCodeDistribution") or {}
    errors = d.get("errorDistribution") or {}
    p = d["latencyPercentiles"]
    n = sum(codes.values())
    non200 = n - codes.get("200", 0) + sum(errors.values())
    print(f"{name}: {n} requests, non-200 {non200}, codes {codes}, errors {errors}, "
          f"p50 {p['p50'] * 1e3:.3f} ms, p99 {p['p99'] * 1e3:.3f} ms")
lines = open(sys.argv[3]).read().splitlines()
wrong = [l for l in lines if l.split()[2] != l.split()[4]]
print(f"reloads: {len(lines)}, answered as expected: {len(lines) - len(wrong)}")
PY
grep -c "configuration reloaded" "$work/gw.log" | sed 's/^/log: configuration reloaded x/'
grep -c "configuration reload refused" "$work/gw.log" | sed 's/^/log: configuration reload refused x/'
curl -s "http://127.0.0.1:$gw_port/metrics" | grep "^routewise_config_reload"
