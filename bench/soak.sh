#!/usr/bin/env bash
# Soak test (issue 11): everything hostile at once against `routewise serve` with the
# default limits, on loopback, then the figures.
#
#   bash bench/soak.sh                       # SOAK_SECONDS=120
#   SOAK_SECONDS=300 SOAK_RATE=200 bash bench/soak.sh
#
# For SOAK_SECONDS, all together:
#   * well-behaved load (oha, from 127.0.0.1): SOAK_RATE non-streaming requests/s, 64
#     connections, `model: auto`, routed by a kNN router (trained here on three models'
#     RouterBench outcomes) over those three models: two answer through a mock that fails
#     30% of their calls (a reproducible mix of HTTP 500, connection reset, a 90 s stall
#     before the headers, HTTP 429 and HTTP 401 echoing the key), one healthy;
#   * one hostile client (127.0.0.2): SOAK_IDLE idle connections (default 20,000, in two
#     processes for the open-file limit) and SOAK_SLOWLORIS (100) connections dribbling a
#     request head, each reopened a second after the gateway closes it;
#   * SIGHUP every 3 s (a reload of the unchanged config file);
#   * a Redis outage (the bandit's shared state) from 1/3 to 2/3 of the run;
#   * probes: GET /healthz 20/s and GET /readyz 10/s (from 127.0.0.1), RSS every second.
# Then a half-open request and SIGTERM: the process must exit within shutdown_grace_ms.
# Prints the figures and writes them to bench/results/soak.json.
#
# Needs oha (cargo install oha), redis-server and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

dur="${SOAK_SECONDS:-120}"
rate="${SOAK_RATE:-100}"
idle="${SOAK_IDLE:-20000}"
slow="${SOAK_SLOWLORIS:-100}"
for tool in oha redis-server python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "soak: $tool is missing"; exit 1; }
done

cargo build -q --release -p routewise -p routewise-testkit
bin="${CARGO_TARGET_DIR:-target}/release"

# work dir, pids + cleanup trap, free_port
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"; redis_port="$(free_port)"
gw="http://127.0.0.1:$gw_port"

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    > "$work/redis.log" 2>&1 & redis_pid=$!; pids+=($redis_pid)
  for _ in $(seq 1 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $redis_port), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "soak: redis did not start"; exit 1
}
start_redis

# The operator's router over three models (kNN on their RouterBench outcomes).
data="${SOAK_DATA:-../shared/data/routerbench-3k.jsonl}"
[ -f "$data" ] || { echo "soak: $data is missing (the shared data)"; exit 1; }
python3 - "$data" "$work/pool.jsonl" <<'PY'
import json, sys
keep = ["gpt-4-1106-preview", "claude-v2", "mistralai/mistral-7b-chat"]
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in src:
        row = json.loads(line)
        row["models"] = {m: row["models"][m] for m in keep if m in row["models"]}
        if len(row["models"]) == len(keep):
            out.write(json.dumps(row) + "\n")
PY
"$bin/routewise" train --data "$work/pool.jsonl" --out "$work/pool.rw" > /dev/null

export SOAK_UPSTREAM_KEY="sk-soak-upstream-secret-0123456789"
cat > "$work/gateway.yaml" <<YAML
listen: 127.0.0.1:$gw_port
router: {artifact: pool.rw, policy: {lambda: 0}}
models:
  - {name: gpt-4-1106-preview, base_url: "http://127.0.0.1:$mock_port/v1", upstream_model: mock-flaky-30, api_key_env: SOAK_UPSTREAM_KEY}
  - {name: claude-v2, base_url: "http://127.0.0.1:$mock_port/v1", upstream_model: mock-flaky-30, api_key_env: SOAK_UPSTREAM_KEY}
  - {name: mistralai/mistral-7b-chat, base_url: "http://127.0.0.1:$mock_port/v1", api_key_env: SOAK_UPSTREAM_KEY}
bandit: {}
state: {redis_url: "redis://127.0.0.1:$redis_port"}
YAML
"$bin/routewise" check-config "$work/gateway.yaml" >/dev/null

"$bin/routewise-mock" --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & pids+=($!)
"$bin/routewise" serve --config "$work/gateway.yaml" > "$work/gw.log" 2>&1 & gw_pid=$!; pids+=($gw_pid)
for _ in $(seq 1 100); do
  curl -sf "$gw/healthz" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$mock_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
body='{"model":"auto","messages":[{"role":"user","content":"Write a Python function that checks whether a number is prime, with a docstring."}],"max_tokens":64}'
printf '%s' "$body" > "$work/body.json"
curl -sf -o /dev/null -H 'content-type: application/json' -d "$body" "$gw/v1/chat/completions" \
  || { echo "soak: gateway not answering"; cat "$work/gw.log"; exit 1; }

rss() { awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status" 2>/dev/null || echo 0; }
rss_start="$(rss)"
echo "soak: ${dur}s at ${rate} req/s, ${idle} idle + ${slow} slowloris connections, SIGHUP every 3 s, Redis down from $((dur / 3))s to $((2 * dur / 3))s"

oha -z "${dur}s" -w -q "$rate" -c 64 -t 180s --no-tui --output-format json \
  -m POST -H 'content-type: application/json' -D "$work/body.json" "$gw/v1/chat/completions" \
  > "$work/load.json" 2> "$work/load.err" & load_pid=$!; pids+=($load_pid)
oha -z "${dur}s" -w -q 20 -c 2 -t 10s --no-tui --output-format json "$gw/healthz" \
  > "$work/health.json" 2>/dev/null & health_pid=$!; pids+=($health_pid)
oha -z "${dur}s" -w -q 10 -c 1 -t 10s --no-tui --output-format json "$gw/readyz" \
  > "$work/ready.json" 2>/dev/null & ready_pid=$!; pids+=($ready_pid)
attack_for=$((dur + 20))
python3 bench/soak_attack.py 127.0.0.1 "$gw_port" "$attack_for" --idle $((idle / 2)) --slowloris "$slow" \
  --source 127.0.0.2 --out "$work/attack1.json" & attack1=$!; pids+=($attack1)
python3 bench/soak_attack.py 127.0.0.1 "$gw_port" "$attack_for" --idle $((idle - idle / 2)) --slowloris 0 \
  --source 127.0.0.2 --out "$work/attack2.json" & attack2=$!; pids+=($attack2)
( while kill -0 "$gw_pid" 2>/dev/null; do sleep 3; kill -HUP "$gw_pid" 2>/dev/null || true; done ) & hup_pid=$!; pids+=($hup_pid)
( while kill -0 "$gw_pid" 2>/dev/null; do rss >> "$work/rss.txt"; sleep 1; done ) & rss_pid=$!; pids+=($rss_pid)

sleep $((dur / 3))
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
echo "soak: redis stopped at $((dur / 3))s"
sleep $((dur / 3))
start_redis
echo "soak: redis back at $((2 * dur / 3))s"

wait "$health_pid" "$ready_pid" || true
echo "soak: load generation over; waiting for the requests still in flight (stalled upstreams time out after 60 s)"
wait "$load_pid" || true
curl -s "$gw/metrics" > "$work/metrics.txt"
rss_end="$(rss)"

# The end: a half-open request is in flight, the hostile client still connected; SIGTERM.
python3 - "$gw_port" <<'PY' & half=$!; pids+=($half)
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
time.sleep(60)
PY
sleep 0.5
grace_ms=10000
t0=$(date +%s%N)
kill -TERM "$gw_pid"
exit_code=0
wait "$gw_pid" || exit_code=$?
t1=$(date +%s%N)
exit_ms=$(( (t1 - t0) / 1000000 ))
kill "$hup_pid" "$rss_pid" "$half" 2>/dev/null || true
wait "$attack1" "$attack2" 2>/dev/null || true

mkdir -p bench/results
python3 - "$work" "$rss_start" "$rss_end" "$exit_ms" "$exit_code" "$grace_ms" "$dur" "$rate" <<'PY'
import json, re, sys
work, rss_start, rss_end, exit_ms, exit_code, grace_ms, dur, rate = sys.argv[1:]
def load(name):
    try:
        with open(f"{work}/{name}") as f:
            return json.load(f)
    except Exception as e:
        return {"error": str(e)}
def pct(j, p):
    v = (j.get("latencyPercentiles") or {}).get(p)
    return None if v is None else round(v * 1000, 2)
load_j, health, ready = load("load.json"), load("health.json"), load("ready.json")
rss = [int(x) for x in open(f"{work}/rss.txt").read().split() if x.strip().isdigit()]
metrics = open(f"{work}/metrics.txt").read()
attempts, per_model = {}, {}
for m in re.finditer(r'routewise_upstream_attempts_total\{model="([^"]+)",outcome="([^"]+)"\} (\d+)', metrics):
    attempts[m.group(2)] = attempts.get(m.group(2), 0) + int(m.group(3))
    pm = per_model.setdefault(m.group(1), {"attempts": 0, "failed": 0})
    pm["attempts"] += int(m.group(3))
    if m.group(2) != "ok":
        pm["failed"] += int(m.group(3))
for pm in per_model.values():
    pm["failure_share"] = round(pm["failed"] / pm["attempts"], 3) if pm["attempts"] else None
cooldowns = {m.group(1): int(m.group(2)) for m in re.finditer(r'routewise_cooldowns_opened_total\{model="([^"]+)"\} (\d+)', metrics)}
total_attempts = sum(attempts.values())
log = open(f"{work}/gw.log", errors="replace").read()
attack = [load("attack1.json"), load("attack2.json")]
codes = load_j.get("statusCodeDistribution", {})
out = {
    "seconds": int(dur), "rate_per_s": int(rate),
    "well_behaved": {
        "requests": sum(codes.values()) + sum((load_j.get("errorDistribution") or {}).values()),
        "status_codes": codes,
        "non_200": sum(v for k, v in codes.items() if k != "200") + sum((load_j.get("errorDistribution") or {}).values()),
        "transport_errors": load_j.get("errorDistribution", {}),
        "p50_ms": pct(load_j, "p50"), "p99_ms": pct(load_j, "p99"),
    },
    "upstream_attempts": attempts,
    "per_model": per_model,
    "cooldowns_opened": cooldowns,
    "upstream_failure_share": round(1 - attempts.get("ok", 0) / total_attempts, 3) if total_attempts else None,
    "healthz": {"status_codes": health.get("statusCodeDistribution"), "errors": health.get("errorDistribution"),
                 "p50_ms": pct(health, "p50"), "p99_ms": pct(health, "p99"), "max_ms": round((health.get("summary") or {}).get("slowest", 0) * 1000, 2)},
    "readyz": {"status_codes": ready.get("statusCodeDistribution"), "errors": ready.get("errorDistribution"),
                "p99_ms": pct(ready, "p99"), "max_ms": round((ready.get("summary") or {}).get("slowest", 0) * 1000, 2)},
    "rss_kb": {"start": int(rss_start), "max": max(rss) if rss else None, "end": int(rss_end)},
    "hostile_client": {k: sum(a.get(k) or 0 for a in attack) for k in ["opened", "closed_by_server", "connect_errors", "max_open", "slowloris_refused_at_accept", "slowloris_cut"]},
    "slowloris_cut_after_s": {"median": attack[0].get("slowloris_cut_after_median_s"), "max": attack[0].get("slowloris_cut_after_max_s")},
    "connections_refused": {m.group(1): int(m.group(2)) for m in re.finditer(r'routewise_connections_refused_total\{reason="([^"]+)"\} (\d+)', metrics)},
    "connections_cut": {m.group(1): int(m.group(2)) for m in re.finditer(r'routewise_connections_cut_total\{reason="([^"]+)"\} (\d+)', metrics)},
    "log": {
        "sighup_reloads": log.count("SIGHUP: reloading"),
        "reloads_refused": log.count("configuration reload refused"),
        "store_unreachable_warnings": log.count("state store is unreachable"),
        "store_back": log.count("state store is reachable again"),
        "warn_lines": sum(1 for l in log.splitlines() if " WARN " in l),
        "key_leaked": "sk-soak-upstream-secret" in log,
    },
    "sigterm": {"exit_ms": int(exit_ms), "exit_code": int(exit_code), "grace_ms": int(grace_ms),
                 "within_grace": int(exit_ms) <= int(grace_ms) + 1000},
}
json.dump(out, open("bench/results/soak.json", "w"), indent=1)
w = out["well_behaved"]
print(f"well-behaved requests: {w['requests']}, non-200: {w['non_200']} {w['status_codes']} transport errors {w['transport_errors']}; p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms")
print(f"upstream attempts: {attempts} (failure share {out['upstream_failure_share']})")
print(f"per model: {per_model}; cooldowns opened: {cooldowns}")
h = out["healthz"]; r = out["readyz"]
print(f"/healthz: {h['status_codes']} errors {h['errors']}, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms")
print(f"/readyz:  {r['status_codes']} errors {r['errors']}, p99 {r['p99_ms']} ms, max {r['max_ms']} ms")
print(f"RSS: start {out['rss_kb']['start']/1024:.1f} MB, max {out['rss_kb']['max']/1024:.1f} MB, end {out['rss_kb']['end']/1024:.1f} MB")
print(f"hostile client: {out['hostile_client']}; slowloris cut after {out['slowloris_cut_after_s']} s; refused at accept {out['connections_refused']}; cut by a deadline {out['connections_cut']}")
print(f"log: {out['log']}")
print(f"SIGTERM: exit {out['sigterm']['exit_code']} after {out['sigterm']['exit_ms']} ms (grace {grace_ms} ms)")
PY
