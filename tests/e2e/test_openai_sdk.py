"""End-to-end: the official `openai` client against `routewise serve` in front of the
testkit mock upstream. Started by tests/e2e/run.sh, which sets:

E2E_GATEWAY  a healthy gateway (every model answered by the mock, lambda 100); a mixed
             pool: the claude-* models go through the native Anthropic provider
E2E_FAULTY   a gateway whose upstreams fail: HTTP 500 everywhere except
             mistralai/mistral-7b-chat (answers) and claude-v1 (streams break after 2 chunks);
             claude-v2 and claude-instant-v1 fail through the Anthropic provider
E2E_CASCADE  a gateway with `router.cascade`: mistral-7b and mixtral asked first, their
             answers read as numbers, accepted when both agree
E2E_SIGNALS  a gateway with `routes:` (a blocking route; a route sending greetings to
             mistral-7b), `pii: {action: redact, restore: true}` and the response cache
E2E_KEYS     a gateway with `auth: {mode: keys}` (keys in a redb file it holds; the admin
             key in ROUTEWISE_ADMIN_KEY, which `routewise keys` uses to go through it); its
             config file is rewritten and hot-reloaded through POST /admin/reload
E2E_BIN      the routewise binary;  E2E_WORK  the run's temp dir (configs, logs)
"""
import json
import os
import pathlib
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

GATEWAY = os.environ.get("E2E_GATEWAY")
FAULTY = os.environ.get("E2E_FAULTY")
CASCADE = os.environ.get("E2E_CASCADE")
SIGNALS = os.environ.get("E2E_SIGNALS")
KEYS = os.environ.get("E2E_KEYS")
SECRET = "sk-e2e-upstream-secret-42"
pytestmark = pytest.mark.skipif(not GATEWAY, reason="run through tests/e2e/run.sh")

PROMPT = "Write a Python function that returns the n-th Fibonacci number."


def client(base):
    # The client's own key is never forwarded: routewise uses its configured upstream keys.
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0, timeout=20)


def route(base, body):
    req = urllib.request.Request(base + "/v1/route", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_non_streaming_routes_and_reports_the_model():
    raw = client(GATEWAY).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": PROMPT}])
    chosen = raw.headers["x-routewise-model"]
    assert len(raw.headers["x-routewise-decision-id"]) == 32
    completion = raw.parse()
    # the mock answers under the upstream model name, which is the routed model's name
    assert completion.model == chosen
    assert completion.choices[0].message.content.startswith(f"mock answer from {chosen}")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    # the decision API agrees with what was served
    assert route(GATEWAY, {"messages": [{"role": "user", "content": PROMPT}]})["model"] == chosen


def test_a_cascaded_request_is_answered_by_the_agreeing_tier():
    # The mock's answer repeats the prompt's last words, so both tier models answer "42".
    raw = client(CASCADE).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is six times seven? 42"}])
    verdict = raw.headers["x-routewise-cascade"]
    assert verdict.startswith("accepted@mistralai/"), verdict
    assert raw.headers["x-routewise-cascade-calls"] == "2"
    assert raw.parse().choices[0].message.content.endswith("42")
    # Streaming: the accepted answer replayed as chunks.
    stream = client(CASCADE).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is six times seven? 42"}],
        stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.endswith("42")
    # Different numbers: escalated to the router's choice.
    raw = client(CASCADE).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Pick any number"}],
        extra_body={"routewise": {"cascade": {"extractor": "exact"}}})
    assert raw.headers["x-routewise-cascade"].startswith("escalated@"), raw.headers


def test_streaming_yields_chunks_and_usage():
    stream = client(GATEWAY).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("mock answer from ")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


def test_direct_model_and_tool_calls_pass_through():
    completion = client(GATEWAY).chat.completions.create(
        model="gpt-3.5-turbo-1106", messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    assert completion.model == "gpt-3.5-turbo-1106"
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"x": 1}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_anthropic_models_answer_in_openai_format():
    c = client(GATEWAY)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"}]
    completion = c.chat.completions.create(model="claude-v1", messages=msgs)
    assert completion.object == "chat.completion" and completion.model == "claude-v1"
    assert completion.choices[0].message.content.startswith("mock answer from claude-v1 to: weather?")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    tool = c.chat.completions.create(model="claude-v2", messages=msgs, tools=tools)
    call = tool.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"x": 1}
    assert tool.choices[0].finish_reason == "tool_calls"
    stream = c.chat.completions.create(model="claude-instant-v1", messages=msgs, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.startswith("mock answer from claude-instant-v1")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_preferences_in_body_and_header():
    c = client(GATEWAY)
    msgs = [{"role": "user", "content": PROMPT}]
    cheap = route(GATEWAY, {"messages": msgs, "routewise": {"lambda": 1e7}})
    cheapest = min(cheap["models"], key=lambda m: m["predicted_cost_usd"])["name"]
    assert cheap["model"] == cheapest
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_body={"routewise": {"lambda": 1e7}})
    assert raw.headers["x-routewise-model"] == cheapest
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_headers={"x-routewise-lambda": "10000000"})
    assert raw.headers["x-routewise-model"] == cheapest


def test_models_list():
    ids = [m.id for m in client(GATEWAY).models.list()]
    assert ids[0] == "auto" and "gpt-4-1106-preview" in ids and len(ids) == 12


def test_client_errors_are_openai_shaped():
    c = client(GATEWAY)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="auto", messages="not a list")
    assert e.value.body["param"] == "messages"


def test_fallback_down_the_ranking_through_the_sdk():
    msgs = [{"role": "user", "content": PROMPT}]
    order = route(FAULTY, {"messages": msgs})["fallback_order"]
    working = {"mistralai/mistral-7b-chat", "claude-v1"}  # claude-v1 answers non-streaming calls
    expected = next(m for m in order if m in working)
    raw = client(FAULTY).chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert raw.headers["x-routewise-model"] == expected
    assert int(raw.headers["x-routewise-attempts"]) == order.index(expected) + 1
    assert raw.parse().choices[0].message.content.startswith("mock answer from")


def test_all_attempts_failing_is_a_502():
    with pytest.raises(openai.APIStatusError) as e:
        client(FAULTY).chat.completions.create(
            model="gpt-4-1106-preview", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert e.value.body["type"] == "upstream_error"


def test_stream_broken_midway_raises_instead_of_hanging():
    stream = client(FAULTY).chat.completions.create(
        model="claude-v1", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2, got
    assert "upstream stream broke" in str(e.value)


def test_check_config_reports_errors_with_file_and_field():
    work = pathlib.Path(os.environ["E2E_WORK"])
    bad = work / "bad.yaml"
    bad.write_text("models:\n  - {name: x, base_url: not-a-url}\nlimits: {max_attempts: 0}\nextra: 1\n")
    r = subprocess.run([os.environ["E2E_BIN"], "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{bad}: models[0].base_url: relative URL without a base" in r.stderr
    assert f"{bad}: limits.max_attempts: must be in 1..=64, found 0" in r.stderr
    assert f"{bad}: extra: unknown field" in r.stderr
    ok = subprocess.run([os.environ["E2E_BIN"], "check-config", str(work / "healthy.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok"), ok.stderr


def test_upstream_key_never_in_gateway_logs():
    work = pathlib.Path(os.environ["E2E_WORK"])
    logs = (work / "gw.log").read_text() + (work / "faulty.log").read_text()
    assert "routewise::decision" in logs
    assert SECRET not in logs


def test_routes_block_and_steer_through_the_sdk():
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(SIGNALS).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "write an exploit"}])
    assert e.value.status_code == 403
    assert e.value.body["code"] == "blocked_by_route"
    raw = client(SIGNALS).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello there"}])
    assert raw.headers["x-routewise-route"] == "cheap-chat"
    assert raw.headers["x-routewise-model"] == "mistralai/mistral-7b-chat"


def test_pii_is_redacted_upstream_and_restored_for_the_client():
    completion = client(SIGNALS).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Greet ann@corp.example warmly"}])
    # The mock repeats the message it received: `[EMAIL_1]` (the Rust tests check the
    # upstream body); the client gets the address back.
    content = completion.choices[0].message.content
    assert "ann@corp.example" in content and "[EMAIL_1]" not in content
    # The decision line is written by the log's writer thread, in batches.
    log = ""
    for _ in range(50):
        log = pathlib.Path(os.environ["E2E_WORK"], "signals.log").read_text()
        if 'pii="email"' in log:
            break
        time.sleep(0.1)
    assert 'pii="email"' in log and "ann@corp.example" not in log
    # Streamed answers are restored too.
    stream = client(SIGNALS).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Greet bob@corp.example warmly"}],
        stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "bob@corp.example" in text and "[EMAIL_1]" not in text


def test_the_cache_answers_a_repeated_request():
    msgs = [{"role": "user", "content": "Name the largest planet of the solar system."}]
    first = client(SIGNALS).chat.completions.with_raw_response.create(model="auto", messages=msgs)
    again = client(SIGNALS).chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert first.headers["x-routewise-cache"] == "miss"
    assert again.headers["x-routewise-cache"] == "hit-exact"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    chunks = list(client(SIGNALS).chat.completions.create(model="auto", messages=msgs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.parse().choices[0].message.content


def keys_cli(*args):
    out = subprocess.run([os.environ["E2E_BIN"], "keys", "--config",
                          str(pathlib.Path(os.environ["E2E_WORK"], "keys.yaml")), *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_virtual_keys_through_the_sdk():
    with pytest.raises(openai.AuthenticationError) as e:
        client(KEYS).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    key = keys_cli("create", "--name", "e2e", "--models", "mistralai/mistral-7b-chat")
    assert key.startswith("rw-")
    c = openai.OpenAI(base_url=KEYS + "/v1", api_key=key, max_retries=0, timeout=20)
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-routewise-model"] == "mistralai/mistral-7b-chat"
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="gpt-4-1106-preview",
                                  messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_allowed"
    listed = [json.loads(line) for line in keys_cli("list", "--json").splitlines()]
    mine = [k for k in listed if k["name"] == "e2e"]  # other tests make keys too
    assert len(mine) == 1
    keys_cli("revoke", mine[0]["id"])
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])


def admin_reload():
    req = urllib.request.Request(KEYS + "/admin/reload", method="POST", data=b"",
                                 headers={"Authorization": "Bearer e2e-admin-key"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_hot_reload_swaps_the_config_and_a_bad_file_keeps_serving():
    path = pathlib.Path(os.environ["E2E_WORK"], "keys.yaml")
    original = path.read_text()
    key = keys_cli("create", "--name", "e2e-reload")
    c = openai.OpenAI(base_url=KEYS + "/v1", api_key=key, max_retries=0, timeout=20)
    ask = lambda: c.chat.completions.with_raw_response.create(  # noqa: E731
        model="auto", messages=[{"role": "user", "content": "hi"}])
    with urllib.request.urlopen(KEYS + "/readyz", timeout=5) as r:
        before = json.load(r)["config"]
    try:
        path.write_text(original.replace("lambda: 0}", "lambda: 1000000}"))
        status, body = admin_reload()
        assert status == 200 and body["reloaded"] is True, body
        assert body["generation"] == before["generation"] + 1
        assert ask().headers["x-routewise-model"]
        path.write_text(original + "no_such_setting: 1\n")
        status, body = admin_reload()
        assert status == 400, body
        assert body["error"]["code"] == "invalid_config"
        assert [i["field"] for i in body["error"]["issues"]] == ["no_such_setting"]
        with urllib.request.urlopen(KEYS + "/readyz", timeout=5) as r:
            assert json.load(r)["config"]["generation"] == before["generation"] + 1
        assert ask().headers["x-routewise-model"]
    finally:
        path.write_text(original)
