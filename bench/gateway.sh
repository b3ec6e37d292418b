#!/usr/bin/env bash
# Gateway benchmark (issues 3, 18): a real load generator against the testkit mock
# upstream, directly and through `routewise serve`, on loopback.
#
#   bash bench/gateway.sh            # DUR=10 seconds per run
#   DUR=20 GW_THREADS=1 RATE=2000 bash bench/gateway.sh
#   GW_RUNTIME=thread-per-core bash bench/gateway.sh   # `serve --runtime thread-per-core`
#   BENCH_LOG=warn bash bench/gateway.sh   # the headline gateway at another log level
#   BENCH_LITELLM=1 bash bench/gateway.sh   # also LiteLLM's proxy (pip install 'litellm[proxy]')
#   RW_BIN=/path/to/other/routewise bash bench/gateway.sh   # another build (before/after comparisons)
#   BENCH_CLOSED=0 bash bench/gateway.sh     # skip the closed-loop runs
#   BENCH_CONNS="64" bash bench/gateway.sh    # closed loop at 64 connections only
#
# The router: kNN trained here on ../shared/data/routerbench-3k.jsonl (11 models), policy
# lambda 0.5 (the embedded demo router when the shared data is absent). Two gateways run
# side by side on the same mock: the default configuration (`ROUTEWISE_LOG=info`, one
# decision line per request: the headline) and `ROUTEWISE_LOG=warn` (no decision log).
#
# Reports, for concurrency 1, 64 and 256 (wrk, closed loop): throughput, p50, p99 and errors,
# direct vs through routewise; at a fixed RATE (2,000) and at 10,000 requests/s (oha, open
# loop with latency correction; hey, with a warning, when oha cannot be installed): p50/p99
# direct vs through, the added latency and routewise's CPU time per request (utime + stime
# from /proc/PID/stat over the run, divided by the requests answered); routewise's RSS
# (VmRSS now, VmHWM peak) and `routewise_decision_log_dropped_total`.
# Needs wrk (Debian package; installed here when missing and apt-get is available) and oha
# (`cargo install oha`, done here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

dur="${DUR:-10}"
rate="${RATE:-2000}"
log_level="${BENCH_LOG:-info}"

if ! command -v wrk >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null) \
    || { echo "bench: wrk is missing and could not be installed"; exit 1; }
fi
if ! command -v oha >/dev/null 2>&1; then
  echo "bench: installing oha (cargo install oha)"
  cargo install -q --locked oha >/dev/null 2>&1 || true
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v oha >/dev/null 2>&1; then
  echo "bench: WARNING: oha could not be installed; the open-loop rows use hey (0.1 ms precision, no latency correction)"
  command -v hey >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null) \
    || { echo "bench: neither oha nor hey is available"; exit 1; }
fi

cargo build -q --release -p routewise -p routewise-testkit
bin="${CARGO_TARGET_DIR:-target}/release"
rw_bin="${RW_BIN:-$bin/routewise}"

# work dir, pids + cleanup trap, free_port, RW_MODELS
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"; warn_port="$(free_port)"; litellm_port="$(free_port)"
mock="http://127.0.0.1:$mock_port/v1/chat/completions"
gw="http://127.0.0.1:$gw_port/v1/chat/completions"
gw_warn="http://127.0.0.1:$warn_port/v1/chat/completions"

data="${BENCH_DATA:-../shared/data/routerbench-3k.jsonl}"
if [ -f "$data" ]; then
  "$rw_bin" train --data "$data" --router knn --out "$work/knn.rw" > /dev/null 2>&1
  router="router: {artifact: $work/knn.rw, policy: {lambda: 0.5}}   # kNN on $(basename "$data")"
else
  echo "bench: $data is missing: the embedded demo router is used"
  router="router: {policy: {lambda: 0.5}}   # the embedded demo router"
fi
for p in "$gw_port" "$warn_port"; do
  {
    echo "listen: 127.0.0.1:$p"
    echo "$router"
    echo "models:"
    for m in "${RW_MODELS[@]}"; do echo "  - {name: $m, base_url: http://127.0.0.1:$mock_port/v1}"; done
  } > "$work/gateway-$p.yaml"
done

body='{"model":"auto","messages":[{"role":"user","content":"Write a Python function that checks whether a number is prime, with a docstring."}],"max_tokens":64}'
printf '%s' "$body" > "$work/body.json"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA

"$bin/routewise-mock" --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & pids+=($!)
ROUTEWISE_LOG="$log_level" "$rw_bin" serve ${GW_THREADS:+--threads "$GW_THREADS"} ${GW_RUNTIME:+--runtime "$GW_RUNTIME"} --config "$work/gateway-$gw_port.yaml" > "$work/gw.log" 2>&1 & gw_pid=$!; pids+=($gw_pid)
ROUTEWISE_LOG=warn "$rw_bin" serve ${GW_THREADS:+--threads "$GW_THREADS"} ${GW_RUNTIME:+--runtime "$GW_RUNTIME"} --config "$work/gateway-$warn_port.yaml" > "$work/gw-warn.log" 2>&1 & warn_pid=$!; pids+=($warn_pid)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$warn_port/healthz" >/dev/null 2>&1 \
    && curl -sf "http://127.0.0.1:$mock_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
for u in "$gw" "$gw_warn"; do
  curl -sf -o /dev/null -X POST -H 'content-type: application/json' -d "$body" "$u" || { echo "bench: gateway not answering"; cat "$work/gw.log"; exit 1; }
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck="$(getconf CLK_TCK)"
rss() { awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{printf "%.1f MB (peak %.1f MB)", r/1024, h/1024}' "/proc/$1/status"; }
echo "routewise RSS after start: $(rss "$gw_pid")"

# wrk: "Requests/sec", latency percentiles (us/ms/s -> ms), errors
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
run_wrk() { # url conns -> "rps p50 p99 errors"
  local t=$(( $2 < 2 ? 1 : 2 ))
  local out; out="$(wrk -t"$t" -c"$2" -d"${dur}s" --latency -s "$work/post.lua" "$1" 2>&1)"
  local rps p50 p99 non2xx sock
  rps="$(awk '/^Requests\/sec/{print $2}' <<<"$out")"
  p50="$(awk '$1=="50%"{print $2}' <<<"$out" | to_ms)"
  p99="$(awk '$1=="99%"{print $2}' <<<"$out" | to_ms)"
  non2xx="$(awk -F': ' '/Non-2xx/{print $2}' <<<"$out")"
  sock="$(awk '/Socket errors/{gsub(",",""); print $4+$6+$8+$10}' <<<"$out")"
  echo "$rps $p50 $p99 $(( ${non2xx:-0} + ${sock:-0} ))"
}
# open loop at a fixed rate: "rps p50 p99 errors" (latency in ms). oha when installed
# (`cargo install oha`; microsecond precision, latency correction), else hey (0.1 ms precision).
open_tool() { if command -v oha >/dev/null 2>&1; then echo oha; else echo hey; fi; }
run_open() { # url (rate from $rate) -> "rps p50 p99 errors"
  if [ "$(open_tool)" = oha ]; then
    oha -z "${dur}s" -w -c 16 -q "$rate" --latency-correction -m POST -T application/json \
        -D "$work/body.json" --no-tui --output-format json "$1" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]; s = d["summary"]; codes = d.get("statusCodeDistribution") or {}
errors = sum(v for k, v in codes.items() if k != "200") + sum((d.get("errorDistribution") or {}).values())
print("%.1f %.3f %.3f %d" % (s["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, errors))'
    return
  fi
  local c=16 q=$(( rate / 16 ))
  local out; out="$(hey -z "${dur}s" -c "$c" -q "$q" -m POST -T application/json -D "$work/body.json" "$1" 2>&1)"
  local rps p50 p99 ok total
  rps="$(awk '/Requests\/sec/{print $2}' <<<"$out")"
  p50="$(awk '$1=="50%"{printf "%.3f", $3*1000}' <<<"$out")"
  p99="$(awk '$1=="99%"{printf "%.3f", $3*1000}' <<<"$out")"
  ok="$(awk '/\[200\]/{print $2}' <<<"$out")"
  total="$(awk '/\[[0-9]+\]/{s+=$2} END{print s+0}' <<<"$out")"
  local errs; errs="$(awk '/Error distribution/{f=1; next} f && /\[/{s+=$1} END{print s+0}' <<<"$out")"
  echo "$rps $p50 $p99 $(( total - ${ok:-0} + errs ))"
}

if [ "${BENCH_CLOSED:-1}" != 0 ]; then
echo
echo "## Closed loop (wrk, ${dur}s per run): direct = mock only, routewise = client -> routewise -> mock"
echo
echo "| conns | direct req/s | direct p50 ms | direct p99 ms | routewise req/s | routewise p50 ms | routewise p99 ms | routewise errors | routewise/direct |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in ${BENCH_CONNS:-1 64 256}; do
  read -r drps dp50 dp99 derr < <(run_wrk "$mock" "$c")
  read -r grps gp50 gp99 gerr < <(run_wrk "$gw" "$c")
  echo "| $c | $drps | $dp50 | $dp99 | $grps | $gp50 | $gp99 | $gerr | $(awk -v a="$grps" -v b="$drps" 'BEGIN{if (b>0) printf "%.2fx", a/b}') |"
done
echo
echo "routewise RSS after the closed-loop runs: $(rss "$gw_pid")"
fi

# One open-loop run through a gateway: "rps p50 p99 errors cpu_us_per_request".
run_open_cpu() { # url pid rate
  local t0 t1; t0="$(cpu_ticks "$2")"
  local r; r="$(rate="$3" run_open "$1")"
  t1="$(cpu_ticks "$2")"
  read -r rps p50 p99 errs <<<"$r"
  echo "$r $(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v rps="$rps" -v d="$dur" 'BEGIN{n=rps*d; if (n>0) printf "%.1f", (b-a)/hz/n*1e6; else print "n/a"}')"
}
for r in "$rate" 10000; do
  echo
  echo "## Open loop at ${r} req/s ($(open_tool), 16 connections, ${dur}s)"
  echo
  read -r drps dp50 dp99 derr < <(rate="$r" run_open "$mock")
  read -r grps gp50 gp99 gerr gcpu < <(run_open_cpu "$gw" "$gw_pid" "$r")
  read -r wrps wp50 wp99 werr wcpu < <(run_open_cpu "$gw_warn" "$warn_pid" "$r")
  echo "| target | req/s | p50 ms | p99 ms | errors | added p50 ms | added p99 ms | CPU us/request |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| mock direct | $drps | $dp50 | $dp99 | $derr | | | |"
  added() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
  echo "| routewise, default (ROUTEWISE_LOG=$log_level) | $grps | $gp50 | $gp99 | $gerr | $(added "$gp50" "$dp50") | $(added "$gp99" "$dp99") | $gcpu |"
  echo "| routewise, ROUTEWISE_LOG=warn | $wrps | $wp50 | $wp99 | $werr | $(added "$wp50" "$dp50") | $(added "$wp99" "$dp99") | $wcpu |"
  echo
  echo "added latency at ${r} req/s (default configuration): p50 $(added "$gp50" "$dp50") ms, p99 $(added "$gp99" "$dp99") ms, CPU $gcpu us/request"
done
dropped="$(curl -s "http://127.0.0.1:$gw_port/metrics" | awk '/^routewise_decision_log_dropped_total /{print $2}')"
logged="$(grep -c 'routewise::decision' "$work/gw.log" || true)"
echo "decision log: $logged lines written, ${dropped:-?} dropped"
echo "routewise RSS at the end: $(rss "$gw_pid")"

if [ "${BENCH_LITELLM:-0}" = 1 ]; then
  if ! command -v litellm >/dev/null 2>&1; then
    echo "LiteLLM: not installed (pip install 'litellm[proxy]'); skipped"
  else
    {
      echo "model_list:"
      echo "  - model_name: auto"
      echo "    litellm_params: {model: openai/gpt-4-1106-preview, api_base: http://127.0.0.1:$mock_port/v1, api_key: sk-none}"
      echo "litellm_settings: {drop_params: true, turn_off_message_logging: true}"
    } > "$work/litellm.yaml"
    # local benchmark only: LiteLLM refuses to start without a master key otherwise
    LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
      litellm --config "$work/litellm.yaml" --host 127.0.0.1 --port "$litellm_port" > "$work/litellm.log" 2>&1 & ll_pid=$!; pids+=($ll_pid)
    for _ in $(seq 1 900); do curl -sf "http://127.0.0.1:$litellm_port/health/liveliness" >/dev/null 2>&1 && break; sleep 0.2; done
    ll="http://127.0.0.1:$litellm_port/v1/chat/completions"
    echo
    echo "## LiteLLM proxy (same mock, one deployment, no routing), wrk ${dur}s"
    echo
    echo "| conns | litellm req/s | litellm p50 ms | litellm p99 ms | errors | routewise/litellm throughput |"
    echo "|---|---|---|---|---|---|"
    for c in 1 64; do
      read -r lrps lp50 lp99 lerr < <(run_wrk "$ll" "$c")
      read -r grps gp50 gp99 gerr < <(run_wrk "$gw" "$c")
      echo "| $c | $lrps | $lp50 | $lp99 | $lerr | $(awk -v a="$grps" -v b="$lrps" 'BEGIN{if (b>0) printf "%.1fx", a/b; else print "n/a"}') |"
    done
    echo "LiteLLM RSS: $(rss "$ll_pid")"
  fi
fi
