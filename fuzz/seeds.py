#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpus (fuzz/corpus/{request,config}/seed-*).

The request seeds replay the hostile requests of the gateway probe (issue 11): wrong
types in every field, content parts of every shape, preference bodies and headers out of
range, id headers that are too long or malformed, deep nesting, huge numbers, invalid
UTF-8 and escapes. The config seeds are the documented examples plus the probe's bad
configs (negative, absurd and mistyped limits, unknown keys, env overrides). A request
input is `header lines NUL body`; a config input is YAML, then optionally `%%ENV%%` and
KEY=VALUE lines (see crates/routewise-fuzz).

Run from the repository root: python3 fuzz/seeds.py
"""
import hashlib
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def req(body, headers=None):
    h = "".join(f"{k}: {v}\n" for k, v in (headers or {}).items())
    b = body if isinstance(body, (bytes, str)) else json.dumps(body)
    if isinstance(b, str):
        b = b.encode()
    write("request", (h.encode() + b"\0" + b) if headers is not None else b)

msgs = [{"role": "user", "content": "hello"}]
good = {"model": "auto", "messages": msgs}

# well-formed
req(good)
req(good, {})
req({"model": "gpt-4o", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}})
req({"model": "auto", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}], "max_tokens": 100, "temperature": 0.2})
req({"model": "auto", "messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "tool_choice": "required"})
req({"model": "auto", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "42"}]})
req({"model": "auto", "messages": msgs, "routewise": {"lambda": 0.5}})
req({"model": "auto", "messages": msgs, "routewise": {"budget_usd": 0.001}})
req(good, {"x-routewise-lambda": "2", "x-request-id": "req-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "v=1"})
req(good, {"x-routewise-budget-usd": "0.01"})
# hostile: types and shapes
for m in [3, None, "", [], {}, True, "a" * 300]:
    req({"model": m, "messages": msgs})
for ms in [None, "hi", [], [1], [None], [{}], [{"content": "x"}], [{"role": 5, "content": "x"}], [{"role": "user", "content": 5}], [{"role": "user", "content": {"a": 1}}]]:
    req({"model": "auto", "messages": ms})
for part in [{"type": "text", "text": 5}, {"type": "text"}, {"text": "no type"}, {"type": 7}, "bare string", 5, None, [], {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, {"type": "text", "text": "\u0000\ud7ff"}]:
    req({"model": "auto", "messages": [{"role": "user", "content": [part]}]})
for k, v in [("stream", "yes"), ("stream", 1), ("max_tokens", -1), ("max_tokens", 1e30), ("max_tokens", "10"), ("max_completion_tokens", 18446744073709551616), ("stream_options", "x"), ("stream_options", {"include_usage": "yes"})]:
    req({"model": "auto", "messages": msgs, k: v})
for pref in [{"lambda": -1}, {"lambda": "1"}, {"lambda": 1e309}, {"budget_usd": 0}, {"budget_usd": -3}, {"lambda": 1, "budget_usd": 1}, {}, {"speed": 1}, [], "lambda=1", None]:
    req({"model": "auto", "messages": msgs, "routewise": pref})
for h in [{"x-routewise-lambda": "-1"}, {"x-routewise-lambda": "NaN"}, {"x-routewise-lambda": "inf"}, {"x-routewise-budget-usd": "abc"}, {"x-routewise-lambda": "1", "x-routewise-budget-usd": "1"}, {"x-request-id": "x" * 300}, {"x-request-id": "has space"}, {"x-request-id": ""}, {"traceparent": "garbage"}, {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, {"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"}]:
    req(good, h)
# hostile: encodings and sizes
req(b"{not json")
req(b"")
req(b"[1]")
req(b"null")
req(b'{"model":"auto","messages":[{"role":"user","content":"\\ud800"}]}')
req(b'{"model":"auto","messages":[{"role":"user","content":"\xff\xfe"}]}')
req(b'{"model":"auto","model":"x","messages":[{"role":"user","content":"dup"}]}')
req("[" * 200 + "]" * 200)
req({"model": "auto", "messages": msgs, "deep": json.loads("[" * 100 + "]" * 100)})
req({"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]})
req({"model": "auto", "messages": [{"role": "user", "content": "é漢🙂" * 50}]})
req({"model": "auto", "messages": msgs, "api_key": "sk-fuzz-SECRET-0123456789abcdef"})

def cfg(text, env=None):
    if env:
        text = text + "\n%%ENV%%\n" + "\n".join(f"{k}={v}" for k, v in env.items())
    write("config", text)

base = """listen: 127.0.0.1:8080
router: {policy: {lambda: 0.5}}
models:
  - {name: a, base_url: "http://127.0.0.1:9001/v1", api_key_env: KEY, price: {input_per_mtok: 1, output_per_mtok: 2}, context_window: 4096}
  - {name: b, provider: replay}
  - {name: c, provider: anthropic, base_url: "http://127.0.0.1:9002/v1", api_key_env: KEY, max_tokens: 1024, anthropic_version: "2023-06-01"}
"""
cfg(base)
cfg(base + "limits: {max_attempts: 3, request_timeout_ms: 30000, header_timeout_ms: 10000, body_timeout_ms: 30000, idle_timeout_ms: 60000, max_connections: 16384, max_connections_per_ip: 1024, max_in_flight: 4096, shutdown_grace_ms: 10000, trusted_proxies: [10.0.0.0/8, \"::1\"]}\ncooldown: {failures: 3, seconds: 30}\n")
cfg(base + "bandit: {alpha: 0.5, forgetting: 0.99}\nstate: {redis_url: \"redis://127.0.0.1:6379\", required: true}\n")
cfg(base + "bandit: {lambda: 2.0}\nstate: {path: s.redb}\n")
cfg(base + "router: {artifact: r.rw}\n")
cfg(base + "limits: {request_timeout_ms: -5, max_attempts: 0, header_timeout_ms: x}\n")
cfg(base + "limits: {request_timeout_ms: 18446744073709551615, max_body_bytes: 18446744073709551615}\ncooldown: {seconds: 1e300}\n")
cfg(base + "limits: {max_attempts: 65, trusted_proxies: [\"not an ip\"]}\n")
cfg(base + "bogus: 1\nrouter: {extra: 1}\n")
cfg(base, {"ROUTEWISE_LIMITS__MAX_ATTEMPTS": "lots", "ROUTEWISE_MODELS__0__BASE_URL": "nope", "ROUTEWISE_ROUTER__POLICY__BUDGET_USD": "0.002"})
cfg(base, {"ROUTEWISE_MODELS__9__NAME": "x", "ROUTEWISE_": "1", "ROUTEWISE_A____B": "2"})
cfg("models: [")
cfg("")
cfg("- 1\n- 2\n")
cfg("models: []\n")
cfg("models: {a: 1}\n")
cfg("models:\n  - {name: a, base_url: relative/v1}\n  - {name: a, provider: replay}\n  - {name: d, base_url: 'ftp://x', colour: red}\n")
cfg("models: [{name: a, provider: openai}]\n")
cfg("models: [{name: a, base_url: 'http://x/v1', price: {input_per_mtok: -1, output_per_mtok: .nan}}]\n")
cfg("models: [{name: a, base_url: 'http://x/v1', api_key_env: 'BAD\\nKEY'}]\n")
cfg("a: &a {x: 1}\nb: *a\nmodels: [{name: m, provider: replay}]\n")
cfg("listen: nope\nmodels: [{name: m, provider: replay}]\n")
cfg("listen: [1, 2]\nmodels: [{name: m, provider: replay}]\n")
cfg("router: {policy: {lambda: 1, budget_usd: 2}}\nmodels: [{name: m, provider: replay}]\n")
cfg("router: {policy: \"lambda=1\"}\nmodels: [{name: m, provider: replay}]\n")
cfg("state: {redis_url: 'http://x', decision_ttl_s: 0, file: x}\nmodels: [{name: m, provider: replay}]\n")
cfg("bandit: {alpha: -1, forgetting: 2}\nstate: {backend: redis}\nmodels: [{name: m, provider: replay}]\n")
cfg("models: [{name: m, provider: replay}]\nlimits: !!binary aGVsbG8=\n")
cfg("models: [{name: m, provider: replay, context_window: 0, max_tokens: 0}]\n")
print("seeds written under", ROOT)
