//! Integration tests over real HTTP on loopback: client -> gateway -> testkit mock.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{
    abc_yaml, assert_openai_error, chat_body, client, get, header, mock_gateway, post, post_stream,
    read_sse, start, SECRET,
};
use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};

#[tokio::test]
async fn routes_auto_to_the_best_model_and_passes_everything_through() {
    let (mock, gw) = mock_gateway(&[], "").await;
    let body = json!({
        "model": "auto",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
        "temperature": 0.3,
        "custom_field": {"keep": [1, 2]},
        "routewise": {"lambda": 0},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    });
    let (status, headers, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&headers, "x-routewise-model"), "a");
    assert_eq!(header(&headers, "x-routewise-decision-id").len(), 32);
    assert_eq!(header(&headers, "x-routewise-attempts"), "1");
    // the upstream's response, unchanged: usage, tool calls, unknown fields
    assert_eq!(v["model"], "up-a");
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["mock_extra"], json!({"nested": [1, 2, 3], "flag": true}));
    assert_eq!(v["system_fingerprint"], "fp_mock");
    // what the upstream received: our model name, the key, the client's fields, no routewise key
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let got = &reqs[0];
    assert_eq!(got.model, "up-a");
    assert_eq!(
        got.authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(got.body["custom_field"], json!({"keep": [1, 2]}));
    assert_eq!(got.body["temperature"], 0.3);
    assert_eq!(got.body["messages"], body["messages"]);
    assert_eq!(got.body["tools"], body["tools"]);
    assert!(got.body.get("routewise").is_none());
}

#[tokio::test]
async fn named_model_goes_direct_and_preferences_change_the_choice() {
    let (mock, gw) = mock_gateway(&[], "").await;
    let mut body = chat_body("hello");
    body["model"] = json!("b");
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!((status, header(&h, "x-routewise-model")), (200, "b"));
    assert_eq!(mock.hits("up-b"), 1);

    // a tiny budget only fits c (the cheapest)
    let mut body = chat_body("hello");
    body["routewise"] = json!({"budget_usd": 0.0001});
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(header(&h, "x-routewise-model"), "c");

    // a large lambda via the header also prefers the cheap model
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-routewise-lambda", "1000")
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "x-routewise-model"), "c");
    assert_eq!(mock.hits("up-c"), 2);
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.body.get("routewise").is_none()));
}

async fn fallback_case(fault: Fault, extra: &str) -> (u16, String, String, u64) {
    let (mock, gw) = mock_gateway(&[("up-a", fault)], extra).await;
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("hello")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "up-b");
    let metrics = get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"routewise_fallbacks_total{model="a"} 1"#),
        "{metrics}"
    );
    (
        status,
        header(&h, "x-routewise-model").to_string(),
        header(&h, "x-routewise-attempts").to_string(),
        mock.hits("up-a"),
    )
}

#[tokio::test]
async fn falls_back_on_http_500() {
    let (_, model, attempts, hits_a) = fallback_case(Fault::Status(500), "").await;
    assert_eq!((model.as_str(), attempts.as_str(), hits_a), ("b", "2", 1));
}

#[tokio::test]
async fn falls_back_on_http_429() {
    let (_, model, attempts, _) = fallback_case(Fault::Status(429), "").await;
    assert_eq!((model.as_str(), attempts.as_str()), ("b", "2"));
}

#[tokio::test]
async fn falls_back_on_connection_reset() {
    let (_, model, attempts, hits_a) = fallback_case(Fault::Reset, "").await;
    assert_eq!((model.as_str(), attempts.as_str(), hits_a), ("b", "2", 1));
}

#[tokio::test]
async fn falls_back_on_timeout_before_first_byte() {
    let extra = "limits: {request_timeout_ms: 300}";
    let (_, model, attempts, _) = fallback_case(Fault::Delay(Duration::from_secs(5)), extra).await;
    assert_eq!((model.as_str(), attempts.as_str()), ("b", "2"));
}

#[tokio::test]
async fn falls_back_on_connection_refused() {
    let mock = MockUpstream::start().await.unwrap();
    // a port with nothing listening
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let yaml = abc_yaml(&mock.base_url(), "").replacen(&mock.base_url(), &dead_url, 1);
    let gw = start(&yaml).await;
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    assert_eq!((status, header(&h, "x-routewise-model")), (200, "b"));
}

#[tokio::test]
async fn other_4xx_pass_through_without_fallback() {
    let (mock, gw) = mock_gateway(&[("up-a", Fault::Status(400))], "").await;
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    assert_eq!((status, header(&h, "x-routewise-model")), (400, "a"));
    assert_openai_error(&v);
    assert_eq!(mock.hits("up-b"), 0);
}

#[tokio::test]
async fn all_attempts_failing_gives_502_or_504_bounded_by_max_attempts() {
    let mock = MockUpstream::start().await.unwrap();
    for m in ["up-a", "up-b", "up-c"] {
        mock.set_model_fault(m, Some(Fault::Status(503)));
    }
    let gw = start(&abc_yaml(&mock.base_url(), "limits: {max_attempts: 2}")).await;
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    assert_eq!(status, 502, "{v}");
    assert_openai_error(&v);
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a: http_5xx"),
        "{v}"
    );
    assert!(!header(&h, "x-routewise-decision-id").is_empty());
    assert_eq!(
        (mock.hits("up-a"), mock.hits("up-b"), mock.hits("up-c")),
        (1, 1, 0)
    );

    let slow = MockUpstream::start().await.unwrap();
    for m in ["up-a", "up-b", "up-c"] {
        slow.set_model_fault(m, Some(Fault::Delay(Duration::from_secs(5))));
    }
    let gw = start(&abc_yaml(
        &slow.base_url(),
        "limits: {max_attempts: 3, request_timeout_ms: 150}",
    ))
    .await;
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn never_falls_back_to_a_model_whose_context_window_is_too_small() {
    let (mock, gw) = mock_gateway(&[("up-b", Fault::Status(500))], "").await;
    // ~1,500 tokens: too long for a (context_window 1000)
    let long = "word ".repeat(1200);
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body(&long)).await;
    assert_eq!((status, header(&h, "x-routewise-model")), (200, "c"));
    assert_eq!(mock.hits("up-a"), 0);
    // asking for a directly with a too-long prompt is a 400 context_length_exceeded
    let mut body = chat_body(&long);
    body["model"] = json!("a");
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(mock.hits("up-a"), 0);
}

#[tokio::test]
async fn a_failing_model_is_cooled_down_then_probed() {
    let (mock, gw) = mock_gateway(
        &[("up-a", Fault::Status(500))],
        "cooldown: {failures: 2, seconds: 0.4}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    for _ in 0..2 {
        let (_, h, _) = post(&url, &chat_body("x")).await;
        assert_eq!(header(&h, "x-routewise-model"), "b");
    }
    assert_eq!(mock.hits("up-a"), 2);
    // cooled down: a is skipped
    let (_, h, _) = post(&url, &chat_body("x")).await;
    assert_eq!(
        (
            header(&h, "x-routewise-model"),
            header(&h, "x-routewise-attempts")
        ),
        ("b", "1")
    );
    assert_eq!(mock.hits("up-a"), 2);
    let m = get(&gw.url("/metrics")).await.1;
    assert!(
        m.contains(r#"routewise_model_cooldown{model="a"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"routewise_cooldowns_opened_total{model="a"} 1"#),
        "{m}"
    );
    // after the cooldown, a is probed; it has recovered, so it answers again
    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.set_model_fault("up-a", None);
    let (_, h, _) = post(&url, &chat_body("x")).await;
    assert_eq!(header(&h, "x-routewise-model"), "a");
    assert_eq!(mock.hits("up-a"), 3);
    let m = get(&gw.url("/metrics")).await.1;
    assert!(
        m.contains(r#"routewise_model_cooldown{model="a"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn streams_chunk_by_chunk_with_headers() {
    let (mock, gw) = mock_gateway(&[], "").await;
    let mut body = chat_body("stream please");
    body["stream_options"] = json!({"include_usage": true});
    let r = post_stream(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "x-routewise-model"), "a");
    assert_eq!(header(r.headers(), "content-type"), "text/event-stream");
    let text = read_sse(r).await;
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains("\"usage\""));
    assert!(text.contains("\"finish_reason\":\"stop\""));
    assert!(mock.requests()[0].body["stream"] == json!(true));
    // realised cost from the streamed usage is counted
    let m = get(&gw.url("/metrics")).await.1;
    let cost: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"routewise_realised_cost_usd_total{model="a"} "#))
        .unwrap_or_else(|| panic!("no cost line in {m}"))
        .parse()
        .unwrap();
    assert!(cost > 0.0, "{m}");
}

#[tokio::test]
async fn streaming_falls_back_before_the_first_byte() {
    let (_mock, gw) = mock_gateway(&[("up-a", Fault::Status(500))], "").await;
    let r = post_stream(&gw.url("/v1/chat/completions"), chat_body("x")).await;
    assert_eq!(header(r.headers(), "x-routewise-model"), "b");
    assert!(read_sse(r).await.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_stream_broken_midway_ends_with_an_error_event() {
    let (mock, gw) = mock_gateway(&[("up-a", Fault::BreakStream(2))], "").await;
    let r = post_stream(&gw.url("/v1/chat/completions"), chat_body("x")).await;
    assert_eq!(
        header(r.headers(), "x-routewise-model"),
        "a",
        "no fallback once streaming"
    );
    let text = read_sse(r).await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    let last: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error");
    assert!(!text.contains("[DONE]"));
    assert_eq!(mock.hits("up-b"), 0);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_not_a_hang() {
    let (_mock, gw) = mock_gateway(
        &[("up-a", Fault::StallStream(1))],
        "limits: {request_timeout_ms: 300}",
    )
    .await;
    let r = post_stream(&gw.url("/v1/chat/completions"), chat_body("x")).await;
    let text = read_sse(r).await;
    assert!(text.contains("stalled for 300 ms"), "{text}");
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_upstream() {
    let (mock, gw) = mock_gateway(
        &[("up-a", Fault::SlowStream(Duration::from_millis(20)))],
        "",
    )
    .await;
    let mut r = post_stream(&gw.url("/v1/chat/completions"), chat_body("x")).await;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(mock.cancelled(), 0);
    drop(r);
    assert!(
        mock.wait_cancelled(1, Duration::from_secs(5)).await,
        "the upstream was not cancelled"
    );
    assert_eq!(mock.completed(), 0);
}

#[tokio::test]
async fn client_disconnect_while_waiting_cancels_the_upstream() {
    let (mock, gw) = mock_gateway(&[("up-a", Fault::Delay(Duration::from_secs(3)))], "").await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("x"))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    assert!(
        mock.wait_cancelled(1, Duration::from_secs(2)).await,
        "the upstream was not cancelled"
    );
    assert_eq!(mock.hits("up-b"), 0);
}

#[tokio::test]
async fn bad_inputs_get_openai_shaped_4xx_and_never_reach_upstream() {
    let (mock, gw) = mock_gateway(&[], "limits: {max_body_bytes: 2000}").await;
    let url = gw.url("/v1/chat/completions");
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("non-JSON", "{not json".into(), 400, None),
        ("not an object", "[1,2]".into(), 400, None),
        ("missing messages", json!({"model": "auto"}).to_string(), 400, Some("messages")),
        ("messages wrong type", json!({"model": "auto", "messages": {"a": 1}}).to_string(), 400, Some("messages")),
        ("content wrong type", json!({"model": "auto", "messages": [{"role": "user", "content": 3}]}).to_string(), 400, Some("messages[0].content")),
        ("stream wrong type", json!({"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": 1}).to_string(), 400, Some("stream")),
        ("model wrong type", json!({"model": [1], "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("model")),
        ("unknown model", json!({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}).to_string(), 404, Some("model")),
        ("bad preference", json!({"model": "auto", "messages": [{"role": "user", "content": "x"}], "routewise": {"lambda": "high"}}).to_string(), 400, Some("routewise.lambda")),
        ("too large", json!({"model": "auto", "messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string(), 413, None),
    ];
    for (name, body, want, param) in cases {
        let r = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, want, "{name}: {v}");
        assert_openai_error(&v);
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{name}");
        }
    }
    let v: Value = client()
        .post(&url)
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    // a body streamed without content-length is also cut at the limit
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 500])).collect();
    let r = client()
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // wrong method and unknown path
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_openai_error(&r.json().await.unwrap());
    let r = client().get(gw.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&r.json().await.unwrap());
    assert_eq!(mock.total_hits(), 0);
}

#[tokio::test]
async fn route_endpoint_gives_the_decision_without_calling_upstream() {
    let (mock, gw) = mock_gateway(&[], "").await;
    let (status, _, v) = post(
        &gw.url("/v1/route"),
        &json!({"messages": [{"role": "user", "content": "hi"}], "routewise": {"budget_usd": 0.0001}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "c");
    assert_eq!(v["policy"], json!({"budget_usd": 0.0001}));
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    for m in models {
        assert!(m["predicted_score"].is_number() && m["predicted_cost_usd"].is_number());
    }
    assert_eq!(v["fallback_order"][0], "c");
    // A deterministic router without exploration chose with probability 1.
    assert_eq!(v["propensity"], 1.0);
    assert_eq!(v["explored"], false);
    assert_eq!(mock.total_hits(), 0);
    let (status, _, v) = post(&gw.url("/v1/route"), &json!({"messages": 5})).await;
    assert_eq!(status, 400);
    assert_openai_error(&v);
}

#[tokio::test]
async fn models_health_and_readiness() {
    let (_mock, gw) = mock_gateway(&[], "").await;
    let v: Value = client()
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "a", "b", "c"]);
    assert_eq!(
        client()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["models_available"], 3);
}

#[tokio::test]
async fn metrics_report_requests_attempts_latency_and_cost() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_faults([Fault::Status(502)]);
    let gw = start(&abc_yaml(&mock.base_url(), "")).await;
    post(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    post(&gw.url("/v1/chat/completions"), &chat_body("y")).await;
    post(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "zzz", "messages": []}),
    )
    .await;
    let r = client().get(gw.url("/metrics")).send().await.unwrap();
    assert!(header(r.headers(), "content-type").starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for want in [
        r#"routewise_requests_total{endpoint="chat",model="b",status="200"} 1"#,
        r#"routewise_requests_total{endpoint="chat",model="a",status="200"} 1"#,
        r#"routewise_requests_total{endpoint="chat",model="-",status="400"} 1"#,
        r#"routewise_upstream_attempts_total{model="a",outcome="http_5xx"} 1"#,
        r#"routewise_upstream_attempts_total{model="a",outcome="ok"} 1"#,
        r#"routewise_fallbacks_total{model="a"} 1"#,
        r#"routewise_upstream_latency_seconds_count{model="a"} 2"#,
        "routewise_routing_decision_seconds_count 2",
        r#"routewise_model_cooldown{model="a"} 0"#,
        "# TYPE routewise_realised_cost_usd counter",
    ] {
        assert!(m.contains(want), "missing `{want}` in\n{m}");
    }
}

#[tokio::test]
async fn a_stream_with_headers_but_no_first_chunk_falls_back() {
    let (_mock, gw) = mock_gateway(
        &[("up-a", Fault::StallStream(0))],
        "limits: {request_timeout_ms: 300}",
    )
    .await;
    let r = post_stream(&gw.url("/v1/chat/completions"), chat_body("x")).await;
    assert_eq!(header(r.headers(), "x-routewise-model"), "b");
    assert_eq!(header(r.headers(), "x-routewise-attempts"), "2");
    assert!(read_sse(r).await.ends_with("data: [DONE]\n\n"));
}
