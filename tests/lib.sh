# Shared setup for the shell harnesses (tests/e2e/run.sh, bench/gateway.sh); source it
# from the repository root after `set -euo pipefail`.
#
# Defines: $work (a temporary directory, removed on exit), pids (background processes to
# stop on exit: append with `pids+=($!)`), the EXIT trap doing both, free_port (an unused
# loopback TCP port) and RW_MODELS (the 11 RouterBench models of the demo fixture).

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# shellcheck disable=SC2034  # used by the sourcing scripts
RW_MODELS=(gpt-4-1106-preview gpt-3.5-turbo-1106 claude-v2 claude-v1 claude-instant-v1
           meta/llama-2-70b-chat mistralai/mixtral-8x7b-chat mistralai/mistral-7b-chat
           zero-one-ai/Yi-34B-Chat meta/code-llama-instruct-34b-chat WizardLM/WizardLM-13B-V1.2)
