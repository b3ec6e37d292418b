//! Stage 2 over real HTTP (client -> gateway -> testkit mock): `routes:` rules steer and
//! restrict the router and explain themselves; the PII guard blocks, redacts (and
//! restores), or restricts to private models; `router.mode: rules` routes with no data.
#![cfg(test)]

mod common;

use routewise_gateway::load;
use routewise_testkit::MockUpstream;
use serde_json::{json, Value};

/// Models a (best), b, c (cheapest) on the mock; c is private; plus `extra`.
fn yaml(base_url: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}}}
models:
  - {{name: a, base_url: "{base_url}", upstream_model: up-a, price: {{input_per_mtok: 30, output_per_mtok: 30}}, quality_tier: 3}}
  - {{name: b, base_url: "{base_url}", upstream_model: up-b, price: {{input_per_mtok: 3, output_per_mtok: 3}}, quality_tier: 2}}
  - {{name: c, base_url: "{base_url}", upstream_model: up-c, price: {{input_per_mtok: 0.3, output_per_mtok: 0.3}}, quality_tier: 1, private: true}}
{extra}
"#
    )
}

async fn setup(extra: &str) -> (MockUpstream, common::Gateway) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&yaml(&mock.base_url(), extra)).await;
    (mock, gw)
}

const ROUTES: &str = r#"
routes:
  - name: search-team
    when: {tag: "team=search"}
    then: {tags: {billing: search}}
    continue: true
  - name: code
    when: {any: [{keywords: [python, rust, "stack trace"]}, {regex: "(?i)traceback|segfault"}]}
    then: {models: [b, c]}
  - name: no-exploits
    when: {keywords: [exploit]}
    then: {block: "This gateway does not answer that.", status: 403}
  - name: tools-to-a
    when: {tools: true}
    then: {model: a}
"#;

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_matching_route_narrows_the_pool_and_is_named_in_the_answer() {
    let (mock, gw) = setup(ROUTES).await;
    // Unmatched: the router's choice (a, quality first).
    let (status, h, _) =
        common::post(&gw.url("/v1/chat/completions"), &common::chat_body("hello")).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-model"), "a");
    assert_eq!(common::header(&h, "x-routewise-route"), "");
    // The code route leaves b and c; the router ranks b first.
    let (status, h, _) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("my Rust program segfaults"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-model"), "b");
    assert_eq!(common::header(&h, "x-routewise-route"), "code");
    assert_eq!(mock.hits("up-a"), 1);
    // Tags from a header: a `continue` route, then the code route.
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-routewise-tags", "team=search, env=prod")
        .json(&common::chat_body("a python stack trace"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        common::header(r.headers(), "x-routewise-route"),
        "search-team,code"
    );
    // /v1/route explains which routes matched and why.
    let (status, _, v) = common::post(
        &gw.url("/v1/route"),
        &json!({"messages": [{"role": "user", "content": "Traceback (most recent call last)"}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "b");
    assert_eq!(v["route"]["matched"][0]["name"], "code");
    assert!(
        v["route"]["matched"][0]["why"]
            .as_str()
            .unwrap()
            .starts_with("regex"),
        "{v}"
    );
    assert_eq!(v["fallback_order"], json!(["b", "c"]));
}

#[tokio::test]
async fn a_forced_model_goes_first_and_the_pool_is_the_fallback() {
    let (mock, gw) = setup(ROUTES).await;
    mock.set_model_fault("up-a", Some(routewise_testkit::Fault::Status(500)));
    let mut body = common::chat_body("call the weather tool");
    body["tools"] = json!([{"type": "function", "function": {"name": "weather"}}]);
    let (status, h, _) = common::post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-route"), "tools-to-a");
    assert_eq!(
        common::header(&h, "x-routewise-model"),
        "b",
        "a failed: fall back"
    );
    assert_eq!(mock.hits("up-a"), 1);
}

#[tokio::test]
async fn blocking_routes_and_excluded_direct_models_are_refused_in_openai_shape() {
    let (mock, gw) = setup(ROUTES).await;
    let (status, h, v) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("write an exploit for this"),
    )
    .await;
    assert_eq!(status, 403);
    common::assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "blocked_by_route");
    assert_eq!(v["error"]["message"], "This gateway does not answer that.");
    assert_eq!(common::header(&h, "x-routewise-route"), "no-exploits");
    // A model named directly that the matched route excludes.
    let mut body = common::chat_body("a rust question");
    body["model"] = json!("a");
    let (status, _, v) = common::post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"]["code"], "blocked_by_route");
    assert_eq!(mock.total_hits(), 0);
}

#[tokio::test]
async fn pii_block_names_the_kinds_and_never_the_text() {
    let (mock, gw) = setup("pii: {detect: [email, card], action: block}").await;
    let (status, _, v) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("charge 4111 1111 1111 1111 and mail jane@corp.example"),
    )
    .await;
    assert_eq!(status, 400);
    common::assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "pii_blocked");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("email") && msg.contains("card"), "{msg}");
    assert!(!msg.contains("4111") && !msg.contains("jane@"), "{msg}");
    assert_eq!(mock.total_hits(), 0);
    // Clean requests pass.
    let (status, _, _) =
        common::post(&gw.url("/v1/chat/completions"), &common::chat_body("hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn pii_redact_hides_values_from_the_upstream_and_restores_them_in_the_answer() {
    let (mock, gw) = setup("pii: {action: redact, restore: true}").await;
    let (status, _, v) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("reply to jane@corp.example about IBAN GB82 WEST 1234 5698 7654 32"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let sent = mock.requests();
    let sent = serde_json::to_string(&sent.last().unwrap().body).unwrap();
    assert!(!sent.contains("jane@") && !sent.contains("GB82"), "{sent}");
    assert!(
        sent.contains("[EMAIL_1]") && sent.contains("[IBAN_1]"),
        "{sent}"
    );
    // The mock answers with the (redacted) message; the client sees the originals.
    let answer = content(&v);
    assert!(answer.contains("jane@corp.example"), "{answer}");
    assert!(answer.contains("GB82 WEST 1234 5698 7654 32"), "{answer}");
    assert!(!answer.contains("[EMAIL_1]"), "{answer}");
}

#[tokio::test]
async fn pii_redact_restores_streamed_answers() {
    let (mock, gw) = setup("pii: {action: redact, restore: true}").await;
    let resp = common::post_stream(
        &gw.url("/v1/chat/completions"),
        common::chat_body("reply to jane@corp.example about IBAN GB82 WEST 1234 5698 7654 32"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sse = common::read_sse(resp).await;
    let sent = serde_json::to_string(&mock.requests().last().unwrap().body).unwrap();
    assert!(
        sent.contains("[EMAIL_1]") && !sent.contains("jane@"),
        "{sent}"
    );
    let text = common::streamed_text(&sse);
    assert!(text.contains("jane@corp.example"), "{text}");
    assert!(text.contains("GB82 WEST 1234 5698 7654 32"), "{text}");
    assert!(
        !sse.contains("[EMAIL_1]") && !sse.contains("[IBAN_1]"),
        "{sse}"
    );
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
}

/// An upstream that streams a fixed answer whose placeholder is cut between two deltas,
/// each delta cut between two network writes.
async fn cutting_upstream() -> String {
    use axum::body::Body;
    use axum::response::Response;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            let chunk = |delta: Value, finish: Value| {
                let v = json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up-a",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                format!("data: {v}\n\n")
            };
            let sse = chunk(json!({"role": "assistant", "content": "Writing to [EMA"}), Value::Null)
                + &chunk(json!({"content": "IL_1] now."}), Value::Null)
                + &chunk(json!({}), json!("stop"))
                + "data: [DONE]\n\n";
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = sse
                .as_bytes()
                .chunks(9)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures_util::stream::iter(pieces)))
                .unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn pii_restore_puts_back_a_placeholder_cut_across_deltas() {
    let base = cutting_upstream().await;
    let gw = common::start(&yaml(&base, "pii: {action: redact, restore: true}")).await;
    let mut body = common::chat_body("tell ann@x.org the plan");
    body["model"] = json!("a");
    let resp = common::post_stream(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(resp.status(), 200);
    let sse = common::read_sse(resp).await;
    assert_eq!(
        common::streamed_text(&sse),
        "Writing to ann@x.org now.",
        "{sse}"
    );
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
}

#[tokio::test]
async fn pii_restrict_sends_personal_data_to_private_models_only() {
    let (mock, gw) = setup("pii: {action: restrict}").await;
    let (status, h, _) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("my SSN is 123-45-6789, fill the form"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-model"), "c");
    assert_eq!((mock.hits("up-a"), mock.hits("up-c")), (0, 1));
    let mut body = common::chat_body("my SSN is 123-45-6789");
    body["model"] = json!("a");
    let (status, _, v) = common::post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(mock.hits("up-a"), 0);
    // Without personal data the router's choice stands.
    let (_, h, _) =
        common::post(&gw.url("/v1/chat/completions"), &common::chat_body("hello")).await;
    assert_eq!(common::header(&h, "x-routewise-model"), "a");
}

#[tokio::test]
async fn zero_data_mode_routes_by_description_then_price() {
    let mock = MockUpstream::start().await.unwrap();
    let text = yaml(
        &mock.base_url(),
        r#"
routes:
  - name: chit-chat
    when: {description: "small talk, greetings and casual everyday conversation", threshold: 0.4}
    then: {min_tier: 1}
  - name: hard-math
    when: {description: "advanced mathematics proofs, calculus and algebra problems", threshold: 0.4}
    then: {min_tier: 2}
"#,
    )
    .replace("router: {policy: {lambda: 0}}", "router: {mode: rules}");
    let cfg = common::config(&text);
    let gw = common::Gateway::start(load::build(cfg).unwrap()).await;
    let ask = |q: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let (s, h, _) = common::post(&url, &common::chat_body(q)).await;
            assert_eq!(s, 200);
            (
                common::header(&h, "x-routewise-route").to_string(),
                common::header(&h, "x-routewise-model").to_string(),
            )
        }
    };
    // The description picks the pool; price orders it (cheapest of tier >= 2 is b).
    assert_eq!(
        ask("prove that the integral of this polynomial converges, using calculus").await,
        ("hard-math".to_string(), "b".to_string())
    );
    assert_eq!(
        ask("hey there, how are you doing today? nice weather").await,
        ("chit-chat".to_string(), "c".to_string())
    );
    // No route: the best tier.
    assert_eq!(
        ask("Translate this contract clause into German").await,
        (String::new(), "a".to_string())
    );
}

#[test]
fn bad_routes_and_pii_settings_are_config_errors_naming_the_field() {
    let e = common::config_error(&yaml(
        "http://127.0.0.1:9/v1",
        r#"
routes:
  - {name: r, when: {regex: "(oops"}, then: {models: [a, nope]}}
  - {name: s, when: {keywords: [x], colour: red}}
pii: {detect: [email, passport], action: block}
"#,
    ));
    for want in [
        "gw.yaml: routes[0].when.regex: invalid regex",
        "gw.yaml: routes[0].then.models[1]: unknown model `nope`",
        "gw.yaml: routes[1].when.colour: unknown field",
        "gw.yaml: pii.detect",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    let e = common::config_error(
        &yaml("http://127.0.0.1:9/v1", "pii: {action: restrict}").replace(", private: true", ""),
    );
    assert!(e.contains("gw.yaml: pii.action: `restrict`"), "{e}");
}

#[tokio::test]
async fn regression_rules_follow_the_catalog_order_not_the_config_order() {
    // The router's catalog lists c, a, b; the config a, b, c (c private).
    let mock = MockUpstream::start().await.unwrap();
    let text = yaml(
        &mock.base_url(),
        "routes:\n  - {name: only-b, when: {keywords: [beta]}, then: {models: [b]}}\npii: {action: restrict}",
    );
    let engine = common::engine(&[("c", 0.7, 0.3), ("a", 0.9, 30.0), ("b", 0.8, 3.0)]);
    let state = routewise_gateway::AppState::new(common::config(&text), engine, None).unwrap();
    let gw = common::Gateway::start(state).await;
    let (_, h, _) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("beta test"),
    )
    .await;
    assert_eq!(common::header(&h, "x-routewise-model"), "b");
    let (_, h, _) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("my SSN is 123-45-6789"),
    )
    .await;
    assert_eq!(common::header(&h, "x-routewise-model"), "c");
    assert_eq!(mock.hits("up-a"), 0);
}

#[tokio::test]
async fn regression_bare_string_parts_are_redacted_too() {
    let (mock, gw) = setup("pii: {action: redact}").await;
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": ["my SSN is 123-45-6789"]}]});
    let (status, _, v) = common::post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    let sent = serde_json::to_string(&mock.requests().last().unwrap().body).unwrap();
    assert!(
        !sent.contains("123-45-6789") && sent.contains("[SSN_1]"),
        "{sent}"
    );
}

#[tokio::test]
async fn regression_routes_whose_pools_do_not_meet_refuse_the_request() {
    let (mock, gw) = setup(
        "routes:\n  - {name: x, when: {keywords: [alpha]}, then: {models: [a]}, continue: true}\n  - {name: y, when: {keywords: [alpha]}, then: {models: [b]}}",
    )
    .await;
    let (status, h, v) =
        common::post(&gw.url("/v1/chat/completions"), &common::chat_body("alpha")).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "blocked_by_route");
    assert_eq!(common::header(&h, "x-routewise-route"), "x,y");
    assert_eq!(mock.total_hits(), 0);
}
