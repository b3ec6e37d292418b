#!/usr/bin/env bash
# End-to-end test: the official `openai` Python client -> `routewise serve` -> the testkit
# mock upstream (`routewise-mock`), all on loopback. Builds the binaries, starts a mock and
# two gateways (one healthy, one with failing upstreams), runs pytest, and cleans up.
#
# Needs: python3 with `pip install -r tests/e2e/requirements.txt` (openai, pytest).
# Env: E2E_PROFILE=release to test release binaries (default debug).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${E2E_PROFILE:-debug}"
if [ "$profile" = release ]; then
  cargo build -q --release -p routewise -p routewise-testkit
else
  cargo build -q -p routewise -p routewise-testkit
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

# work dir, pids + cleanup trap, free_port, RW_MODELS
source tests/lib.sh
mock_port="$(free_port)"; gw_port="$(free_port)"; faulty_port="$(free_port)"; cascade_port="$(free_port)"
signals_port="$(free_port)"; keys_port="$(free_port)"

# A mixed pool: the claude-* models are reached through the native Anthropic provider
# (the mock's /v1/messages), every other model through the OpenAI-compatible one.
provider_of() { case "$1" in claude-*) echo anthropic ;; *) echo openai ;; esac; }

# healthy: every model answered by the mock under its own name; the key is sent upstream
{
  echo "listen: 127.0.0.1:$gw_port"
  echo "router: {policy: {lambda: 100}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do
    echo "  - {name: $m, provider: $(provider_of "$m"), base_url: http://127.0.0.1:$mock_port/v1, api_key_env: E2E_UPSTREAM_KEY, context_window: 32000}"
  done
  echo "limits: {request_timeout_ms: 5000, max_attempts: 3}"
} > "$work/healthy.yaml"

# faulty: every model returns HTTP 500 except mistral-7b (answers) and claude-v1 (streams
# break); claude-v2 and claude-instant-v1 fail through the Anthropic provider
{
  echo "listen: 127.0.0.1:$faulty_port"
  echo "router: {policy: {lambda: 0}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do
    provider=openai
    case "$m" in
      mistralai/mistral-7b-chat) up="$m" ;;
      claude-v1) up="mock-break-2" ;;
      claude-v2|claude-instant-v1) up="mock-500"; provider=anthropic ;;
      *) up="mock-500" ;;
    esac
    echo "  - {name: $m, provider: $provider, base_url: http://127.0.0.1:$mock_port/v1, upstream_model: $up}"
  done
  echo "limits: {request_timeout_ms: 5000, max_attempts: 11}"
  echo "cooldown: {failures: 1000, seconds: 1}"
} > "$work/faulty.yaml"

# cascade: two cheap models asked first; their answers (the mock repeats the prompt's last
# words) agree on the last number, so a numeric question is answered by the tier
{
  echo "listen: 127.0.0.1:$cascade_port"
  echo "router: {policy: {lambda: 0}, cascade: {tier: [mistralai/mistral-7b-chat, mistralai/mixtral-8x7b-chat], min_agree: 2, extractor: number}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do
    echo "  - {name: $m, provider: openai, base_url: http://127.0.0.1:$mock_port/v1}"
  done
} > "$work/cascade.yaml"

# signals: rules (a blocking route, a route narrowing the pool), the PII guard (redact and
# restore) and the response cache
{
  echo "listen: 127.0.0.1:$signals_port"
  echo "router: {policy: {lambda: 0}}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do
    echo "  - {name: $m, provider: openai, base_url: http://127.0.0.1:$mock_port/v1}"
  done
  echo "routes:"
  echo "  - {name: no-exploits, when: {keywords: [exploit]}, then: {block: 'Not here.', status: 403}}"
  echo "  - {name: cheap-chat, when: {keywords: [hello]}, then: {models: [mistralai/mistral-7b-chat]}}"
  echo "pii: {action: redact, restore: true}"
  echo "cache: {exact: true, semantic: {threshold: 0.92}}"
} > "$work/signals.yaml"

# keys: `auth: {mode: keys}`, keys in a redb file in the work dir, the admin API on
{
  echo "listen: 127.0.0.1:$keys_port"
  echo "router: {policy: {lambda: 0}}"
  echo "auth: {mode: keys}"
  echo "state: {path: \"$work/keys.redb\"}"
  echo "models:"
  for m in "${RW_MODELS[@]}"; do
    echo "  - {name: $m, provider: openai, base_url: http://127.0.0.1:$mock_port/v1}"
  done
} > "$work/keys.yaml"

export E2E_UPSTREAM_KEY="sk-e2e-upstream-secret-42"
export ROUTEWISE_ADMIN_KEY="e2e-admin-key"
"$bin/routewise-mock" --listen "127.0.0.1:$mock_port" --record > "$work/mock.log" 2>&1 & pids+=($!)
"$bin/routewise" check-config "$work/healthy.yaml"
"$bin/routewise" check-config "$work/faulty.yaml"
"$bin/routewise" check-config "$work/cascade.yaml"
"$bin/routewise" check-config "$work/signals.yaml"
"$bin/routewise" check-config "$work/keys.yaml"
ROUTEWISE_LOG=info "$bin/routewise" serve --config "$work/healthy.yaml" > "$work/gw.log" 2>&1 & pids+=($!)
ROUTEWISE_LOG=info "$bin/routewise" serve --config "$work/faulty.yaml" > "$work/faulty.log" 2>&1 & pids+=($!)
ROUTEWISE_LOG=info "$bin/routewise" serve --config "$work/cascade.yaml" > "$work/cascade.log" 2>&1 & pids+=($!)
ROUTEWISE_LOG=info "$bin/routewise" serve --config "$work/signals.yaml" > "$work/signals.log" 2>&1 & pids+=($!)
ROUTEWISE_LOG=info "$bin/routewise" serve --config "$work/keys.yaml" > "$work/keys.log" 2>&1 & pids+=($!)

wait_up() {
  for _ in $(seq 1 200); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$1/healthz', timeout=1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "service on port $1 did not start"; cat "$work"/*.log; return 1
}
wait_up "$gw_port"; wait_up "$faulty_port"; wait_up "$cascade_port"; wait_up "$signals_port"; wait_up "$keys_port"
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mock_port/healthz', timeout=2)"

status=0
E2E_GATEWAY="http://127.0.0.1:$gw_port" \
E2E_FAULTY="http://127.0.0.1:$faulty_port" \
E2E_CASCADE="http://127.0.0.1:$cascade_port" \
E2E_SIGNALS="http://127.0.0.1:$signals_port" \
E2E_KEYS="http://127.0.0.1:$keys_port" \
E2E_BIN="$bin/routewise" \
E2E_WORK="$work" \
  python3 -m pytest -q -p no:cacheprovider tests/e2e || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- gateway log (tail)"; tail -n 40 "$work/gw.log"
  echo "--- faulty gateway log (tail)"; tail -n 40 "$work/faulty.log"
  echo "--- cascade gateway log (tail)"; tail -n 40 "$work/cascade.log"
  echo "--- signals gateway log (tail)"; tail -n 40 "$work/signals.log"
  echo "--- keys gateway log (tail)"; tail -n 40 "$work/keys.log"
fi
exit "$status"
