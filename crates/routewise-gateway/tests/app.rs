//! Tests of `app(state)` without a socket (tower `oneshot`), the embedded demo, the
//! replay provider, key redaction in logs and responses, and a property test that
//! arbitrary JSON bodies never produce a 5xx.
#![cfg(test)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use routewise_gateway::{app, demo, load, AppState};
use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn demo_state() -> AppState {
    load::demo().unwrap()
}

#[tokio::test]
async fn demo_routes_and_replays_without_any_upstream() {
    let state = demo_state();
    assert_eq!(state.upstreams.len(), 11);
    assert_eq!(state.engine.router.name(), "knn");
    assert!(demo::DEMO_CONFIG.contains("DEMO"));
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "Write a Python function to reverse a list."}]});
    let (status, headers, bytes) = call(&state, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK);
    let model = headers["x-routewise-model"].to_str().unwrap().to_string();
    assert!(state.upstreams.contains(&model));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("routewise demo replay") && content.contains(&model),
        "{content}"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // streaming replay
    let mut body = body;
    body["stream"] = json!(true);
    let (status, headers, bytes) = call(&state, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n") && text.contains("demo replay"),
        "{text}"
    );
}

#[tokio::test]
async fn demo_preferences_move_the_choice_along_the_cost_axis() {
    let state = demo_state();
    let prompt = "Which of these is a mammal? A) shark B) whale C) trout D) eel";
    let route = |p: Value| {
        let state = state.clone();
        async move {
            let mut body = json!({"messages": [{"role": "user", "content": prompt}]});
            body["routewise"] = p;
            let (status, _, b) = call(&state, post_json("/v1/route", &body)).await;
            assert_eq!(status, StatusCode::OK);
            serde_json::from_slice::<Value>(&b).unwrap()
        }
    };
    let quality = route(json!({"lambda": 0})).await;
    let cheap = route(json!({"lambda": 1e6})).await;
    let cost_of = |v: &Value| {
        let name = v["model"].as_str().unwrap().to_string();
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap()["predicted_cost_usd"]
            .as_f64()
            .unwrap()
    };
    assert!(cost_of(&cheap) <= cost_of(&quality));
    assert_eq!(quality["models"].as_array().unwrap().len(), 11);
    let min_cost = cheap["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["predicted_cost_usd"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(
        cost_of(&cheap),
        min_cost,
        "a huge lambda picks the cheapest model"
    );
}

#[tokio::test]
async fn oneshot_endpoints_answer_without_a_socket() {
    let state = demo_state();
    for path in ["/healthz", "/readyz", "/v1/models", "/metrics"] {
        let (status, _, _) = call(&state, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, b) = call(
        &state,
        post_json("/v1/chat/completions", &json!({"model": "auto"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["param"], "messages");
}

#[tokio::test(flavor = "current_thread")]
async fn api_keys_never_appear_in_responses_or_logs_and_decisions_are_logged() {
    let (capture, _guard) = common::capture_logs(tracing::Level::TRACE);

    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let c = common::client();
    let mut bodies = String::new();
    for (fault, body) in [
        (Some(Fault::Status(500)), common::chat_body("first")),
        (Some(Fault::Reset), common::chat_body("second")),
        (
            None,
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        mock.push_faults(fault);
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        bodies.push_str(&format!("{:?}", r.headers()));
        bodies.push_str(&r.text().await.unwrap());
    }
    for m in ["up-a", "up-b", "up-c"] {
        mock.set_model_fault(m, Some(Fault::Status(500)));
    }
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&common::chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    bodies.push_str(&r.text().await.unwrap());
    bodies.push_str(
        &c.get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    bodies.push_str(&format!("{:?}", gw.state.config));
    // the key did reach the upstream...
    assert!(mock.requests().iter().any(|r| r
        .authorization
        .as_deref()
        .is_some_and(|a| a.contains(common::SECRET))));
    // ...and nowhere else (the decision lines are written by the log's thread: wait for it)
    assert!(gw
        .state
        .decision_log
        .flush(std::time::Duration::from_secs(5)));
    let logs = capture.text();
    assert!(!bodies.contains(common::SECRET), "key leaked in a response");
    assert!(!logs.contains(common::SECRET), "key leaked in logs");
    // one decision line per routed request, with predictions, attempts and cost
    let decisions: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("routewise::decision"))
        .collect();
    assert_eq!(decisions.len(), 3, "{logs}");
    assert!(
        decisions[0].contains("attempt_log=a: http_5xx (HTTP 500); b: ok"),
        "{}",
        decisions[0]
    );
    assert!(
        decisions[0].contains("predictions=[{\"model\":\"a\",\"score\":0.9000"),
        "{}",
        decisions[0]
    );
    assert!(
        decisions[0].contains("realised_cost_usd="),
        "{}",
        decisions[0]
    );
    assert!(
        decisions[1].contains("a: connect_error") || decisions[1].contains("a: body_error"),
        "{}",
        decisions[1]
    );
}

/// Regression: the text log printed `energy_wh=NaN` on every decision of a pool without
/// energy figures (the default), and `realised_cost_usd=NaN propensity=NaN` where nothing
/// was answered; unknown numbers are now left out, as the other optional fields are.
#[tokio::test(flavor = "current_thread")]
async fn a_decision_line_leaves_unknown_numbers_out_instead_of_printing_nan() {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let c = common::client();
    let ok = c
        .post(gw.url("/v1/chat/completions"))
        .json(&common::chat_body("answered"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for m in ["up-a", "up-b", "up-c"] {
        mock.set_model_fault(m, Some(Fault::Status(500)));
    }
    let failed = c
        .post(gw.url("/v1/chat/completions"))
        .json(&common::chat_body("unanswered"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    assert!(gw
        .state
        .decision_log
        .flush(std::time::Duration::from_secs(5)));
    let logs = capture.text();
    let decisions: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("routewise::decision"))
        .collect();
    assert_eq!(decisions.len(), 2, "{logs}");
    for d in &decisions {
        assert!(!d.contains("NaN"), "{d}");
        assert!(
            !d.contains("energy_wh="),
            "no model has energy figures: {d}"
        );
    }
    assert!(
        decisions[0].contains("realised_cost_usd="),
        "{}",
        decisions[0]
    );
    assert!(decisions[0].contains("propensity=1"), "{}", decisions[0]);
    assert!(
        !decisions[1].contains("realised_cost_usd="),
        "{}",
        decisions[1]
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        "[a-z ]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("auto"),
            Just("user"),
            Just("gpt-4-1106-preview"),
            Just("nope")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("model".to_string()),
            Just("messages".to_string()),
            Just("role".to_string()),
            Just("content".to_string()),
            Just("stream".to_string()),
            Just("routewise".to_string()),
            Just("lambda".to_string()),
            Just("budget_usd".to_string()),
            Just("max_tokens".to_string()),
            Just("stream_options".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_json_bodies_never_yield_a_5xx(body in arb_json(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let state = STATE.with(|s| s.clone());
        rt.block_on(async {
            for path in ["/v1/chat/completions", "/v1/route"] {
                let (status, _, b) = call(&state, post_json(path, &body)).await;
                prop_assert!(status.as_u16() < 500, "{} -> {}: {}", body, status, String::from_utf8_lossy(&b));
                if !status.is_success() {
                    let v: Value = serde_json::from_slice(&b).unwrap();
                    prop_assert!(v["error"]["message"].is_string());
                }
                let req = Request::post(path).body(Body::from(raw.clone())).unwrap();
                let (status, _, _) = call(&state, req).await;
                prop_assert!(status.as_u16() < 500);
            }
            Ok(())
        })?;
    }
}

thread_local! {
    static STATE: AppState = demo_state();
}
