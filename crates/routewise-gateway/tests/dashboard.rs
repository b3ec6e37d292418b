//! The dashboard over real HTTP (client -> gateway -> testkit mock): `GET /v1/stats`
//! counts what was answered, explains the last decisions and draws the router's frontier;
//! it needs the admin key once keys are on; `GET /dashboard` is one self-contained page.
#![cfg(test)]

mod common;

use std::time::Duration;

use routewise_gateway::AppState;
use routewise_testkit::MockUpstream;
use serde_json::Value;

async fn stats(gw: &common::Gateway, admin: Option<&str>) -> (u16, Value) {
    let mut req = common::client().get(gw.url("/v1/stats"));
    if let Some(k) = admin {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The report once it counts `n` requests (records reach the statistics through the
/// decision log's writer thread).
async fn settled(gw: &common::Gateway, n: u64) -> Value {
    for _ in 0..100 {
        let (status, body) = stats(gw, None).await;
        assert_eq!(status, 200, "{body}");
        if body["totals"]["requests"].as_u64() >= Some(n) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the report never counted {n} requests");
}

#[tokio::test]
async fn the_report_counts_explains_and_draws_what_was_answered() {
    let mock = MockUpstream::start().await.unwrap();
    // lambda 0: the best model (a) answers; one request names c directly.
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = common::send_json(
            &gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("hello world {i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
        ids.push(common::header(r.headers(), "x-routewise-decision-id").to_string());
    }
    let mut direct = common::chat_body("hello");
    direct["model"] = "c".into();
    assert_eq!(
        common::send_json(&gw.url("/v1/chat/completions"), &direct)
            .await
            .status(),
        200
    );
    let r = settled(&gw, 5).await;
    let t = &r["totals"];
    assert_eq!(t["requests"], 5);
    assert_eq!(t["errors"], 0);
    let by_model = |name: &str| {
        r["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_model("a")["requests"], 4);
    assert_eq!(by_model("c")["requests"], 1);
    assert_eq!(by_model("b")["cooling_down"], false);
    // The mock answers with usage: spend is the usage at each model's prices; the
    // reference (the best single model: a) would have cost a's price on every token.
    let spend = t["spend_usd"].as_f64().unwrap();
    let (a_spend, c_spend) = (
        by_model("a")["spend_usd"].as_f64().unwrap(),
        by_model("c")["spend_usd"].as_f64().unwrap(),
    );
    assert!((spend - a_spend - c_spend).abs() < 1e-12);
    assert_eq!(t["reference_model"], "a");
    let reference = t["reference_cost_usd"].as_f64().unwrap();
    assert!(
        reference > spend,
        "c's answer is cheaper than a's would have been"
    );
    assert!((t["savings_usd"].as_f64().unwrap() - (reference - spend)).abs() < 1e-12);
    // Newest first, with the explanation.
    let recent = r["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0]["model"], "c");
    assert_eq!(recent[0]["reason"], "direct");
    assert_eq!(recent[1]["decision_id"], ids[3].as_str());
    assert_eq!(recent[1]["reason"], "routed");
    assert_eq!(recent[1]["predictions"][0]["model"], "a");
    // One second (or two) of series, holding all five.
    let series: u64 = r["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(series, 5);
    // The frontier: from a (best, dearest) down to c as lambda grows; lambda 0 sits on a.
    let f = &r["frontier"];
    assert_eq!(f["samples"], 4, "routed requests only");
    let points = f["points"].as_array().unwrap();
    assert_eq!(points[0]["quality"], 0.9);
    assert_eq!(points.last().unwrap()["quality"], 0.7);
    assert_eq!(f["operating"]["lambda"], 0.0);
    assert_eq!(f["operating"]["quality"], 0.9);
    assert_eq!(f["singles"].as_array().unwrap().len(), 3);
    assert!(r["keys"].is_null(), "auth is open");
}

#[tokio::test]
async fn with_keys_on_the_report_needs_the_admin_key_and_lists_the_keys() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::abc_yaml(
        &mock.base_url(),
        &format!(
            "auth: {{mode: keys}}\nstate: {{path: \"{}\"}}\n",
            dir.path().join("s.redb").display()
        ),
    );
    let state = AppState::new(common::config(&yaml), common::abc(), None).unwrap();
    state.set_admin_key("adm");
    let gw = common::Gateway::start(state).await;
    let (status, body) = stats(&gw, None).await;
    assert_eq!(status, 401, "{body}");
    common::assert_openai_error(&body);
    let (status, _) = stats(&gw, Some("wrong")).await;
    assert_eq!(status, 401);
    let r = common::client()
        .post(gw.url("/admin/keys"))
        .bearer_auth("adm")
        .json(&serde_json::json!({"name": "team-a", "budget_usd": 5.0, "period": "week"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, body) = stats(&gw, Some("adm")).await;
    assert_eq!(status, 200, "{body}");
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key"], "team-a");
    assert_eq!(keys[0]["budget_usd"], 5.0);
    assert_eq!(keys[0]["period"], "week");
}

#[tokio::test]
async fn the_page_is_one_self_contained_document() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let r = common::client()
        .get(gw.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        common::header(r.headers(), "content-type"),
        "text/html; charset=utf-8"
    );
    let csp = common::header(r.headers(), "content-security-policy").to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = r.text().await.unwrap();
    assert!(page.contains("fetch(\"/v1/stats\""));
    // Nothing is loaded from elsewhere: no external script, style, font or image.
    for needle in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(needle), "{needle}");
    }
    let r = common::client()
        .post(gw.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn requests_refused_before_routing_count_and_the_decision_endpoint_does_not() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = common::send_json(&gw.url("/v1/route"), &common::chat_body("hello world")).await;
    assert_eq!(r.status(), 200);
    let r = common::send_json(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("hello world"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let report = settled(&gw, 2).await;
    assert_eq!(
        report["totals"]["requests"], 2,
        "the refused one and the answered one"
    );
    assert_eq!(report["totals"]["errors"], 1);
    assert_eq!(report["recent"].as_array().unwrap().len(), 1);
    assert_eq!(report["frontier"]["samples"], 1);
}

#[tokio::test]
async fn a_cascade_charges_each_model_its_own_calls() {
    let mock = MockUpstream::start().await.unwrap();
    // b and c are asked first; they agree (the mock answers "42" for both), so c's or
    // b's answer is accepted: each is charged its own call, a nothing.
    for m in ["up-b", "up-c"] {
        mock.set_model_answer(m, Some("42"));
    }
    let gw = common::start(&common::abc_yaml(
        &mock.base_url(),
        "router: {policy: {lambda: 0}, cascade: {tier: [b, c], min_agree: 2, extractor: number}}",
    ).replace("router: {policy: {lambda: 0}}\n", ""))
    .await;
    let r = common::send_json(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("pick a number"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let report = settled(&gw, 1).await;
    let spend = |name: &str| {
        report["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["spend_usd"]
            .as_f64()
            .unwrap()
    };
    assert!(spend("b") > 0.0 && spend("c") > 0.0, "{report}");
    assert_eq!(spend("a"), 0.0);
    let total = report["totals"]["spend_usd"].as_f64().unwrap();
    assert!((spend("b") + spend("c") - total).abs() < 1e-12, "{report}");
    assert_eq!(report["totals"]["cascades"]["accepted"], 1);
}

#[tokio::test]
async fn with_an_admin_key_set_the_report_needs_it_even_with_open_auth() {
    // Review finding: open, the report handed out every caller's decision ids, which
    // `/v1/feedback` accepts.
    let mock = MockUpstream::start().await.unwrap();
    let state = AppState::new(
        common::config(&common::abc_yaml(&mock.base_url(), "")),
        common::abc(),
        None,
    )
    .unwrap();
    state.set_admin_key("adm");
    let gw = common::Gateway::start(state).await;
    assert_eq!(stats(&gw, None).await.0, 401);
    let (status, body) = stats(&gw, Some("adm")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["keys"].is_null());
}

#[tokio::test]
async fn a_stream_broken_off_upstream_counts_as_an_error() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_fault("up-a", Some(routewise_testkit::Fault::BreakStream(2)));
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let r = common::post_stream(
        &gw.url("/v1/chat/completions"),
        common::chat_body("hello world"),
    )
    .await;
    assert_eq!(r.status(), 200, "the stream had begun");
    let _ = common::read_sse(r).await;
    let report = settled(&gw, 1).await;
    assert_eq!(report["totals"]["errors"], 1, "{report}");
}
