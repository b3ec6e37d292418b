//! The native Anthropic provider over real HTTP on loopback: client (OpenAI format) ->
//! gateway -> testkit mock speaking Anthropic's Messages API. Translation both ways
//! (system, max_tokens, stop, tools and tool results, usage, stop reasons), streaming,
//! errors in OpenAI's shape, and fallback on 529 / 429 to an OpenAI-compatible model.
#![cfg(test)]

mod common;

use common::{
    abc, assert_openai_error, chat_body, config, header, post, post_stream, read_sse, Gateway,
    SECRET,
};
use routewise_gateway::AppState;
use routewise_testkit::{Fault, MockUpstream, Protocol};
use serde_json::{json, Value};

/// Models a and b are Anthropic upstreams (a with a configured `max_tokens`), c is an
/// OpenAI-compatible one; all on the same mock. Cooldown is out of the way (the fault
/// test fails a and b many times in a row).
fn yaml(base_url: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}}}
models:
  - {{name: a, provider: anthropic, base_url: "{base_url}", upstream_model: claude-a, api_key_env: TEST_KEY, max_tokens: 321}}
  - {{name: b, provider: anthropic, base_url: "{base_url}", upstream_model: claude-b, api_key_env: TEST_KEY, anthropic_version: "2024-01-01"}}
  - {{name: c, base_url: "{base_url}", upstream_model: up-c}}
cooldown: {{failures: 1000, seconds: 1}}
"#
    )
}

async fn start(mock: &MockUpstream) -> Gateway {
    let state = AppState::new(config(&yaml(&mock.base_url())), abc(), None).unwrap();
    Gateway::start(state).await
}

/// The `data:` payloads of an SSE body, `[DONE]` excluded.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn chat_is_translated_to_messages_and_back() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = start(&mock).await;
    let body = json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2 + 2?"}
        ],
        "stop": ["\n\n"],
        "temperature": 0.2
    });
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-routewise-model"), "a");
    assert_eq!(v["object"], "chat.completion");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("mock answer from claude-a to: What is 2 + 2?"),
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    // What the upstream received: Anthropic's shape and headers, never a Bearer header.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let got = &reqs[0];
    assert_eq!(got.protocol, Protocol::Anthropic);
    assert_eq!(got.model, "claude-a");
    assert_eq!(got.api_key.as_deref(), Some(SECRET));
    assert!(got.authorization.is_none());
    assert_eq!(got.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(got.body["system"], "You are terse.");
    assert_eq!(
        got.body["max_tokens"], 321,
        "the model's configured default"
    );
    assert_eq!(got.body["stop_sequences"], json!(["\n\n"]));
    assert_eq!(got.body["temperature"], 0.2);
    assert_eq!(got.body["messages"][0]["role"], "user");
    assert_eq!(
        got.body["messages"][0]["content"][0]["text"],
        "What is 2 + 2?"
    );

    // The request's own max_tokens wins; a named model with its own version header.
    let mut direct = chat_body("hi");
    direct["model"] = json!("b");
    direct["max_tokens"] = json!(17);
    let (status, _, _) = post(&gw.url("/v1/chat/completions"), &direct).await;
    assert_eq!(status, 200);
    let got = mock.requests().pop().unwrap();
    assert_eq!(got.body["max_tokens"], 17);
    assert_eq!(got.anthropic_version.as_deref(), Some("2024-01-01"));
}

#[tokio::test]
async fn tool_calls_and_tool_results_round_trip() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = start(&mock).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "look up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let body = json!({"model": "auto", "tools": tools, "tool_choice": "required",
        "messages": [{"role": "user", "content": "find it"}]});
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"x": 1}));
    let sent = mock.requests().pop().unwrap();
    assert_eq!(sent.body["tools"][0]["name"], "lookup");
    assert_eq!(
        sent.body["tools"][0]["input_schema"]["properties"]["q"]["type"],
        "string"
    );
    assert_eq!(sent.body["tool_choice"], json!({"type": "any"}));

    // Send the call back with its result: tool_use and tool_result blocks upstream.
    let follow = json!({"model": "auto", "tools": tools, "messages": [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "found: 42"}
    ]});
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &follow).await;
    assert_eq!(status, 200, "{v}");
    let sent = mock.requests().pop().unwrap();
    let msgs = sent.body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
    assert_eq!(msgs[1]["content"][0]["id"], call["id"]);
    assert_eq!(msgs[1]["content"][0]["input"], json!({"x": 1}));
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], call["id"]);
    assert_eq!(msgs[2]["content"][0]["content"], "found: 42");
}

#[tokio::test]
async fn streams_become_openai_chunks_with_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = start(&mock).await;
    let mut body = chat_body("stream me please");
    body["stream_options"] = json!({"include_usage": true});
    let resp = post_stream(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(header(resp.headers(), "x-routewise-model"), "a");
    let text = read_sse(resp).await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let ev = events(&text);
    assert!(
        ev.iter().all(|e| e["object"] == "chat.completion.chunk"),
        "{text}"
    );
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        content.starts_with("mock answer from claude-a to: stream me please"),
        "{content}"
    );
    let finish: Vec<&str> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    let usage = &ev.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(mock.requests().pop().unwrap().body["stream"], true);

    // A streamed tool call.
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]});
    let text = read_sse(post_stream(&gw.url("/v1/chat/completions"), body).await).await;
    let ev = events(&text);
    let args: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"x\":1}");
    assert!(ev
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test]
async fn overloaded_and_rate_limited_anthropic_fall_back() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = start(&mock).await;
    for (fault, stream) in [
        (Fault::Status(529), false),
        (Fault::Status(429), false),
        (Fault::Status(529), true),
        (Fault::Reset, false),
    ] {
        mock.set_model_fault("claude-a", Some(fault.clone()));
        mock.set_model_fault("claude-b", Some(fault.clone()));
        let before = mock.hits("up-c");
        let (status, model, attempts) = if stream {
            let r = post_stream(&gw.url("/v1/chat/completions"), chat_body("hello")).await;
            let s = r.status().as_u16();
            let (m, a) = (
                header(r.headers(), "x-routewise-model").to_string(),
                header(r.headers(), "x-routewise-attempts").to_string(),
            );
            let text = read_sse(r).await;
            assert!(text.contains("[DONE]"), "{text}");
            (s, m, a)
        } else {
            let (s, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("hello")).await;
            assert_eq!(v["object"], "chat.completion", "{v}");
            (
                s,
                header(&h, "x-routewise-model").to_string(),
                header(&h, "x-routewise-attempts").to_string(),
            )
        };
        assert_eq!((status, model.as_str()), (200, "c"), "{fault:?}");
        assert_eq!(attempts, "3", "{fault:?}");
        assert_eq!(mock.hits("up-c"), before + 1);
    }
}

#[tokio::test]
async fn client_errors_come_back_in_openai_shape_and_broken_streams_end_with_an_error() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = start(&mock).await;
    let mut body = chat_body("hello");
    body["model"] = json!("a");
    mock.set_model_fault("claude-a", Some(Fault::Status(400)));
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 400, "{v}");
    assert_openai_error(&v);
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // After the first chunk there is no fallback: the stream ends with an error event.
    mock.set_model_fault("claude-a", Some(Fault::BreakStream(3)));
    let text =
        read_sse(post_stream(&gw.url("/v1/chat/completions"), chat_body("hello")).await).await;
    let last = events(&text).pop().unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{text}");
    assert!(!text.contains("[DONE]"));
}
