//! `auth: {mode: keys}` over real HTTP (client -> gateway -> testkit mock): keys made
//! through the admin API authenticate, narrow the pool, set the default policy and feed
//! the `team:` rule condition; missing, wrong, revoked and expired keys get OpenAI-shaped
//! 401s; keys live in the state store (redb here, Redis shared by two instances).
#![cfg(test)]

mod common;

use routewise_gateway::AppState;
use routewise_testkit::MockUpstream;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-tests";

async fn gateway(base_url: &str, extra: &str) -> common::Gateway {
    let auth = if extra.contains("auth:") {
        ""
    } else {
        "auth: {mode: keys}\n"
    };
    start_yaml(&common::abc_yaml(base_url, &format!("{auth}{extra}"))).await
}

/// A gateway for config `yaml` with the a/b/c engine and the admin API on.
async fn start_yaml(yaml: &str) -> common::Gateway {
    let state = AppState::new(common::config(yaml), common::abc(), None).unwrap();
    state.set_admin_key(ADMIN);
    common::Gateway::start(state).await
}

fn local_state(dir: &tempfile::TempDir) -> String {
    format!(
        "state: {{path: \"{}\"}}",
        dir.path().join("state.redb").display()
    )
}

/// `state:` in Redis on `port`, under `prefix`.
fn redis_state(port: u16, prefix: &str) -> String {
    format!("state: {{redis_url: \"redis://127.0.0.1:{port}\", redis_prefix: {prefix}}}\n")
}

/// The key's `/v1/usage` once its reservations have closed (settling runs off the
/// response path), or the last answer after 2 s.
async fn settled_usage(gw: &common::Gateway, key: &str) -> Value {
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = common::client()
            .get(gw.url("/v1/usage"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["reserved_usd"] == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    usage
}

async fn admin(
    gw: &common::Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = common::client()
        .request(method, gw.url(path))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(gw: &common::Gateway, spec: Value) -> (String, String) {
    let (status, v) = admin(gw, reqwest::Method::POST, "/admin/keys", Some(spec)).await;
    assert_eq!(status, 201, "{v}");
    assert!(v["record"].get("hash").is_none(), "{v}");
    (
        v["key"].as_str().unwrap().to_string(),
        v["record"]["id"].as_str().unwrap().to_string(),
    )
}

async fn chat(
    gw: &common::Gateway,
    key: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = common::client()
        .post(gw.url("/v1/chat/completions"))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

#[tokio::test]
async fn requests_need_a_valid_key_and_get_openai_shaped_401s() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let body = common::chat_body("hello");

    let (status, h, v) = chat(&gw, None, &body).await;
    assert_eq!(status, 401, "{v}");
    common::assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(common::header(&h, "www-authenticate"), "Bearer");
    let (status, _, v) = chat(&gw, Some("sk-not-ours"), &body).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    // Well-formed but unknown.
    let fake = format!("rw-abcdefghij-{}", "A".repeat(32));
    assert_eq!(chat(&gw, Some(&fake), &body).await.0, 401);
    // Every /v1 route is behind the key, the health routes are not.
    assert_eq!(common::get(&gw.url("/v1/models")).await.0, 401);
    assert_eq!(common::get(&gw.url("/healthz")).await.0, 200);
    assert_eq!(mock.total_hits(), 0);

    let (key, id) = create(&gw, json!({"name": "search"})).await;
    let (status, _, v) = chat(&gw, Some(&key), &body).await;
    assert_eq!(status, 200, "{v}");
    // The same key with one character changed is refused.
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'x' { 'y' } else { 'x' });
    assert_eq!(chat(&gw, Some(&wrong), &body).await.0, 401);

    // Revoked: refused at once.
    let (status, v) = admin(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["revoked_ms"].as_u64().is_some(), "{v}");
    let (status, _, v) = chat(&gw, Some(&key), &body).await;
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );

    // Expired.
    let (old, _) = create(&gw, json!({"name": "temp", "expires_in_s": 0})).await;
    let (status, _, v) = chat(&gw, Some(&old), &body).await;
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    assert_eq!(mock.total_hits(), 1);
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    for reason in ["missing", "invalid", "revoked", "expired"] {
        assert!(
            metrics.contains(&format!(
                "routewise_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} in {metrics}"
        );
    }
}

#[tokio::test]
async fn a_keys_models_policy_and_team_shape_its_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = "routes:\n  - {name: search-team, when: {team: [search]}, then: {tags: {billing: search}}}\n";
    let gw = gateway(
        &mock.base_url(),
        &format!("{}\n{routes}", local_state(&dir)),
    )
    .await;
    let (key, _) = create(
        &gw,
        json!({"name": "s", "models": ["b", "c"], "policy": "lambda=7", "team": "search"}),
    )
    .await;
    // The router would take a (lambda 0, the best); the key allows b and c only.
    let (status, h, v) = chat(&gw, Some(&key), &common::chat_body("hello")).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(common::header(&h, "x-routewise-model"), "a");
    assert_eq!(common::header(&h, "x-routewise-route"), "search-team");
    assert_eq!(mock.hits("up-a"), 0);
    // Naming a model the key may not use: 403.
    let mut named = common::chat_body("hello");
    named["model"] = json!("a");
    let (status, _, v) = chat(&gw, Some(&key), &named).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "model_not_allowed");
    assert_eq!(mock.hits("up-a"), 0);
    // /v1/route explains: the key's policy is the default, the key is named.
    let r = common::client()
        .post(gw.url("/v1/route"))
        .bearer_auth(&key)
        .json(&common::chat_body("hello"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["policy"]["lambda"], 7.0, "{v}");
    assert_eq!(v["key"]["team"], "search", "{v}");
    assert!(
        v["fallback_order"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m != "a"),
        "{v}"
    );
    // A request's own policy wins over the key's.
    let mut own = common::chat_body("hello");
    own["routewise"] = json!({"lambda": 1});
    let v: Value = common::client()
        .post(gw.url("/v1/route"))
        .bearer_auth(&key)
        .json(&own)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["policy"]["lambda"], 1.0, "{v}");
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key_and_validates_specs() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let r = common::client()
        .get(gw.url("/admin/keys"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, v) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "x", "models": ["zz"]})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "models");
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "x", "budget": 5})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, id) = create(&gw, json!({"name": "x"})).await;
    let (status, v) = admin(
        &gw,
        reqwest::Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"team": "ads"})),
    )
    .await;
    assert_eq!((status, v["team"].as_str()), (200, Some("ads")), "{v}");
    let (status, v) = admin(&gw, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        admin(&gw, reqwest::Method::DELETE, "/admin/keys/nope", None)
            .await
            .0,
        404
    );

    // Without ROUTEWISE_ADMIN_KEY the admin API is off.
    let yaml = common::abc_yaml(&mock.base_url(), "");
    let open =
        common::Gateway::start(AppState::new(common::config(&yaml), common::abc(), None).unwrap())
            .await;
    let (status, v) = admin(&open, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("admin_disabled"))
    );
}

#[tokio::test]
async fn keys_in_redis_are_shared_by_instances_and_revocation_reaches_them() {
    let Some(redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let state = redis_state(redis.port, "keys-test");
    let one = gateway(&mock.base_url(), &state).await;
    let two = gateway(
        &mock.base_url(),
        &format!("{state}auth: {{mode: keys, cache_ttl_s: 0}}"),
    )
    .await;
    let (key, id) = create(&one, json!({"name": "shared"})).await;
    let body = common::chat_body("hello");
    assert_eq!(chat(&two, Some(&key), &body).await.0, 200);
    admin(
        &one,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    // `two` trusts a record for 0 s: the revocation is seen on the next request.
    assert_eq!(chat(&two, Some(&key), &body).await.0, 401);
    let (other, _) = create(&one, json!({"name": "other"})).await;
    assert_eq!(chat(&two, Some(&other), &body).await.0, 200);
    drop(redis);
    // Redis gone: a key this instance has read stays in use (stale; no cap or rate limit,
    // so its spend goes untracked)...
    assert_eq!(chat(&two, Some(&other), &body).await.0, 200);
    // ...and a key it has not read is refused with 503 (fail closed).
    let fake = format!("rw-abcdefghij-{}", "B".repeat(32));
    let (status, h, v) = chat(&two, Some(&fake), &body).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "auth_unavailable");
    assert_eq!(common::header(&h, "retry-after"), "1");
}

/// 1,000 concurrent requests, spread over `gws`, on a key whose budget covers about ten
/// requests' reservations; returns (answered, refused with budget_exceeded, spend).
async fn race_budget(gws: &[&common::Gateway], key: &str) -> (usize, usize, f64) {
    let body = race_body();
    let client = common::client();
    let calls = (0..1000).map(|i| {
        let req = client
            .post(gws[i % gws.len()].url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results
        .iter()
        .filter(|(s, v)| *s == 429 && v["error"]["code"] == "budget_exceeded")
        .count();
    let usage = settled_usage(gws[0], key).await;
    assert_eq!(usage["reserved_usd"], 0.0, "{usage}");
    (ok, refused, usage["spend_usd"].as_f64().unwrap())
}

/// The race's request: "hello" with `max_tokens: 20`.
fn race_body() -> Value {
    let mut body = common::chat_body("hello");
    body["max_tokens"] = json!(20);
    body
}

/// One reservation of the race's request on c ($0.3/Mtok): its body's bytes as input
/// tokens (the worst case) and 20 output tokens.
fn one_reservation() -> f64 {
    (serde_json::to_vec(&race_body()).unwrap().len() as f64 + 20.0) * 0.3e-6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_budget_does_not_leak_under_1000_concurrent_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let (key, _) = create(
        &gw,
        json!({"name": "capped", "models": ["c"], "budget_usd": 10.0 * one_reservation(), "period": "day"}),
    )
    .await;
    let (ok, refused, spent) = race_budget(&[&gw], &key).await;
    assert_eq!(ok + refused, 1000);
    assert!(ok >= 9 && refused > 0, "answered {ok}, refused {refused}");
    assert!(spent <= 11.0 * one_reservation(), "spent {spent}");
    assert_eq!(mock.total_hits() as usize, ok);
    let usage: Value = common::client()
        .get(gw.url("/v1/usage"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["key"], "capped");
    assert_eq!(usage["budget_usd"].as_f64(), Some(10.0 * one_reservation()));
    assert!(
        usage["period_ends"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"),
        "{usage}"
    );
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_key_spend_usd_total{key=\"capped\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_in_redis_holds_across_two_instances() {
    let Some(redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let state = redis_state(redis.port, "budget-test");
    let one = gateway(&mock.base_url(), &state).await;
    let two = gateway(&mock.base_url(), &state).await;
    let (key, _) = create(
        &one,
        json!({"name": "shared", "models": ["c"], "budget_usd": 10.0 * one_reservation()}),
    )
    .await;
    let (ok, refused, spent) = race_budget(&[&one, &two], &key).await;
    assert_eq!(ok + refused, 1000);
    assert!(ok >= 9 && refused > 0, "answered {ok}, refused {refused}");
    assert!(spent <= 11.0 * one_reservation(), "spent {spent}");
    drop(redis);
}

#[tokio::test]
async fn a_candidate_the_key_cannot_afford_is_skipped_for_a_cheaper_one() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    // Enough for b ($3/Mtok) and c ($0.3/Mtok) but not for a ($30/Mtok in the test engine), which the
    // router ranks first at lambda 0.
    let (key, _) = create(&gw, json!({"name": "thrifty", "budget_usd": 1e-4})).await;
    let mut body = common::chat_body("hello");
    body["max_tokens"] = json!(20);
    let (status, h, v) = chat(&gw, Some(&key), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(common::header(&h, "x-routewise-model"), "a");
    assert_eq!(mock.hits("up-a"), 0);
    // A request too big for any model: 429.
    body["max_tokens"] = json!(10_000);
    let (status, _, v) = chat(&gw, Some(&key), &body).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("budget_exceeded")),
        "{v}"
    );
    common::assert_openai_error(&v);
}

#[tokio::test]
async fn rate_limits_refuse_with_retry_after_before_any_model_is_called() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let (key, _) = create(&gw, json!({"name": "slow", "rpm": 3, "models": ["c"]})).await;
    let body = common::chat_body("hello");
    for _ in 0..3 {
        assert_eq!(chat(&gw, Some(&key), &body).await.0, 200);
    }
    let (status, h, v) = chat(&gw, Some(&key), &body).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(common::header(&h, "retry-after"), "20"); // one request every 20 s
    assert_eq!(mock.total_hits(), 3);
    // Tokens per minute: prompt + max_tokens.
    let (tkey, _) = create(&gw, json!({"name": "tokens", "tpm": 100, "models": ["c"]})).await;
    let mut big = common::chat_body("hello");
    big["max_tokens"] = json!(60);
    assert_eq!(chat(&gw, Some(&tkey), &big).await.0, 200);
    let (status, _, v) = chat(&gw, Some(&tkey), &big).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tpm"),
        "{v}"
    );
    assert_eq!(mock.total_hits(), 4);
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_auth_failures_total{reason=\"rpm\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rate_limit_in_redis_is_shared_by_instances() {
    let Some(redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let state = redis_state(redis.port, "rate-test");
    let one = gateway(&mock.base_url(), &state).await;
    let two = gateway(&mock.base_url(), &state).await;
    let (key, _) = create(&one, json!({"name": "r", "rpm": 5, "models": ["c"]})).await;
    let body = common::chat_body("hello");
    let mut ok = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &one } else { &two };
        ok += usize::from(chat(gw, Some(&key), &body).await.0 == 200);
    }
    assert_eq!(ok, 5);
    drop(redis);
}

#[tokio::test]
async fn regression_a_stream_is_charged_its_usage_which_the_client_did_not_ask_for() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let (key, _) = create(
        &gw,
        json!({"name": "streamer", "models": ["c"], "budget_usd": 1.0}),
    )
    .await;
    let mut body = common::chat_body("hello");
    body["stream"] = json!(true);
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sse = common::read_sse(r).await;
    // The gateway asked the upstream for usage; the client, who did not, gets none.
    let sent = mock.requests().last().unwrap().body.clone();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["max_completion_tokens"], 4096, "{sent}"); // a capped key's output is held
    assert!(!sse.contains("usage"), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    // Charged the usage (a few tokens at $0.3/Mtok), not the 4,096-token reservation.
    let spent = settled_usage(&gw, &key).await["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(spent > 0.0 && spent < 100.0 * 0.3e-6, "spent {spent}");
}

#[tokio::test]
async fn regression_a_cached_answer_from_a_model_the_key_may_not_use_is_not_served() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &mock.base_url(),
        &format!("{}\ncache: {{}}", local_state(&dir)),
    )
    .await;
    let (any, _) = create(&gw, json!({"name": "any"})).await;
    let (cheap, _) = create(&gw, json!({"name": "cheap", "models": ["c"]})).await;
    let body = common::chat_body("what is the capital of France?");
    let (_, h, _) = chat(&gw, Some(&any), &body).await;
    assert_eq!(common::header(&h, "x-routewise-model"), "a");
    let (_, h, _) = chat(&gw, Some(&any), &body).await;
    assert_eq!(common::header(&h, "x-routewise-cache"), "hit-exact");
    let (status, h, _) = chat(&gw, Some(&cheap), &body).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-cache"), "miss");
    assert_eq!(common::header(&h, "x-routewise-model"), "c");
}

#[tokio::test]
async fn a_model_at_its_quota_is_passed_over_before_it_would_answer_429() {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = common::abc_yaml(&mock.base_url(), "").replace(
        "api_key_env: TEST_KEY, context_window: 1000}",
        "api_key_env: TEST_KEY, context_window: 1000, limits: {rpm: 2}}",
    );
    let (cap, _guard) = common::capture_logs(tracing::Level::INFO);
    let gw = common::start(&yaml).await;
    let body = common::chat_body("hello");
    let model = |h: &reqwest::header::HeaderMap| common::header(h, "x-routewise-model").to_string();
    // The router ranks a first (lambda 0): two calls fit a's quota, the third goes to b.
    for want in ["a", "a", "b"] {
        let (status, h, _) = common::post(&gw.url("/v1/chat/completions"), &body).await;
        assert_eq!((status, model(&h).as_str()), (200, want));
    }
    assert_eq!(mock.hits("up-a"), 2);
    // Asked for by name, a has no room: 429 with Retry-After, and a is not called.
    let mut named = body.clone();
    named["model"] = json!("a");
    let (status, h, v) = common::post(&gw.url("/v1/chat/completions"), &named).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(common::header(&h, "retry-after"), "30");
    assert_eq!(mock.hits("up-a"), 2);
    // The decision log explains the pass-over.
    assert!(gw
        .state
        .decision_log
        .flush(std::time::Duration::from_secs(5)));
    let logs = cap.text();
    assert!(
        logs.contains("skipped=\"a:quota\"") || logs.contains("skipped=a:quota"),
        "{logs}"
    );
}

#[tokio::test]
async fn regression_a_refused_request_takes_nothing_from_a_models_quota() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::abc_yaml(
        &mock.base_url(),
        &format!("auth: {{mode: keys}}\n{}", local_state(&dir)),
    )
    .replace(
        "api_key_env: TEST_KEY, context_window: 1000}",
        "api_key_env: TEST_KEY, context_window: 1000, limits: {rpm: 2}}",
    );
    let gw = start_yaml(&yaml).await;
    let (noisy, _) = create(&gw, json!({"name": "noisy", "rpm": 1})).await;
    let (quiet, _) = create(&gw, json!({"name": "quiet"})).await;
    let body = common::chat_body("hello");
    let model = |h: &reqwest::header::HeaderMap| common::header(h, "x-routewise-model").to_string();
    let (status, h, _) = chat(&gw, Some(&noisy), &body).await;
    assert_eq!((status, model(&h).as_str()), (200, "a"));
    // Over its own rate, the noisy key is refused: a's quota keeps its second call.
    for _ in 0..5 {
        assert_eq!(chat(&gw, Some(&noisy), &body).await.0, 429);
    }
    let (status, h, _) = chat(&gw, Some(&quiet), &body).await;
    assert_eq!((status, model(&h).as_str()), (200, "a"));
    // A request larger than a key's whole tpm never fits: 400, not a 429 to retry.
    let (small, _) = create(&gw, json!({"name": "small", "tpm": 50})).await;
    let mut big = common::chat_body("hello");
    big["max_tokens"] = json!(100);
    let (status, _, v) = chat(&gw, Some(&small), &big).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("request_exceeds_tpm")),
        "{v}"
    );
}

#[tokio::test]
async fn the_decision_log_names_the_key() {
    let (cap, _guard) = common::capture_logs(tracing::Level::INFO);
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock.base_url(), &local_state(&dir)).await;
    let (key, _) = create(&gw, json!({"name": "search-team"})).await;
    assert_eq!(
        chat(&gw, Some(&key), &common::chat_body("hello")).await.0,
        200
    );
    assert!(gw
        .state
        .decision_log
        .flush(std::time::Duration::from_secs(5)));
    let logs = cap.text();
    assert!(
        logs.contains("key=\"search-team\"") || logs.contains("key=search-team"),
        "{logs}"
    );
    assert!(!logs.contains(&key[14..]), "the secret is never logged");
}

#[tokio::test]
async fn regression_a_cascade_tier_that_cannot_agree_charges_nothing_for_calls_not_made() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::abc_yaml(
        &mock.base_url(),
        &format!("auth: {{mode: keys}}\n{}", local_state(&dir)),
    )
    .replace(
        "router: {policy: {lambda: 0}}",
        "router: {policy: {lambda: 0}, cascade: {tier: [b, c], min_agree: 2}}",
    )
    .replace(
        "output_per_mtok: 0.3}}",
        "output_per_mtok: 0.3}, limits: {rpm: 1}}",
    );
    let gw = start_yaml(&yaml).await;
    let (key, _) = create(&gw, json!({"name": "k", "budget_usd": 10.0})).await;
    let body = common::chat_body("hello");
    assert_eq!(chat(&gw, Some(&key), &body).await.0, 200);
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (1, 1));
    let before = settled_usage(&gw, &key).await["spend_usd"]
        .as_f64()
        .unwrap();
    // c is at its quota: the tier cannot reach 2 answers, so b is not asked either, and
    // its reservation (about 4,100 tokens at $3/Mtok) is given back, not charged.
    assert_eq!(chat(&gw, Some(&key), &body).await.0, 200);
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (1, 1));
    let after = settled_usage(&gw, &key).await["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(
        after - before < 1e-3,
        "charged {} for the second request",
        after - before
    );
}

/// A gateway with keys in a local store (its directory kept alive by the caller), calls
/// reserving 64 output tokens.
async fn paced_gateway(mock: &MockUpstream) -> (tempfile::TempDir, common::Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &mock.base_url(),
        &format!(
            "{}\nauth: {{mode: keys, reserve_output_tokens: 64}}",
            local_state(&dir)
        ),
    )
    .await;
    (dir, gw)
}

/// The model answering a paced key's `n` requests in a row, and its `/v1/usage`.
async fn paced_run(gw: &common::Gateway, key: &str, n: usize) -> (Vec<String>, Value) {
    let (answered, _, usage) = paced_lambdas(gw, key, n).await;
    (answered, usage)
}

/// [`paced_run`], with the key's paced lambda after each request.
async fn paced_lambdas(
    gw: &common::Gateway,
    key: &str,
    n: usize,
) -> (Vec<String>, Vec<f64>, Value) {
    let mut answered = Vec::new();
    let mut lambdas = Vec::new();
    for i in 0..n {
        let (status, headers, body) = chat(
            gw,
            Some(key),
            &common::chat_body(&format!("hello world {i}")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        answered.push(common::header(&headers, "x-routewise-model").to_string());
        // The pacer moves as each call settles (off the response path).
        let usage = settled_usage(gw, key).await;
        lambdas.push(usage["pace_lambda"].as_f64().unwrap_or(f64::NAN));
    }
    (answered, lambdas, settled_usage(gw, key).await)
}

#[tokio::test]
async fn a_paced_key_steers_its_lambda_along_its_budget() {
    // From lambda 100 (b), a budget the traffic overspends pushes lambda up (to c), one
    // it underspends pulls it down (to a); the request's own lambda is overridden.
    let mock = MockUpstream::start().await.unwrap();
    let (_dir, gw) = paced_gateway(&mock).await;
    let (tight, _) = create(
        &gw,
        json!({"name": "tight", "budget_usd": 0.01, "period": "month", "pace": true,
               "policy": "lambda=100"}),
    )
    .await;
    let (loose, _) = create(
        &gw,
        json!({"name": "loose", "budget_usd": 100.0, "period": "month", "pace": true,
               "policy": "lambda=100"}),
    )
    .await;
    let (answered, usage) = paced_run(&gw, &tight, 40).await;
    assert_eq!(answered[0], "b", "{answered:?}");
    assert_eq!(answered[39], "c", "{answered:?}");
    assert!(usage["pace_lambda"].as_f64().unwrap() > 357.0, "{usage}");
    assert!(usage["spend_usd"].as_f64().unwrap() <= 0.01);
    let (answered, lambdas, usage) = paced_lambdas(&gw, &loose, 40).await;
    // The pacer keeps the key's lambda until it has seen MIN_SEEN routed requests, then
    // solves for the lambda the window's predictions say the budget affords.
    let seen = routewise_router::pacing::MIN_SEEN;
    assert!(
        lambdas[..seen - 1].iter().all(|&l| l == 100.0),
        "{lambdas:?}"
    );
    assert!(lambdas[seen - 1] < 30.0, "{lambdas:?}");
    assert_eq!(answered[0], "b", "{answered:?}");
    assert_eq!(answered[39], "a", "{answered:?}");
    assert!(usage["pace_lambda"].as_f64().unwrap() < 30.0, "{usage}");
    // A request's own lambda does not move a paced key off its course.
    let mut body = common::chat_body("hello world");
    body["routewise"] = json!({"lambda": 1e9});
    let (status, headers, _) = chat(&gw, Some(&loose), &body).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&headers, "x-routewise-model"), "a");
    // A new budget starts a new controller (at the key's lambda again); pacing turned
    // off leaves the key on its own policy.
    let loose_id = &loose[3..13];
    let path = format!("/admin/keys/{loose_id}");
    let (status, v) = admin(
        &gw,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"budget_usd": 200.0})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (answered, usage) = paced_run(&gw, &loose, 1).await;
    assert_eq!(answered, ["b"]);
    assert!(usage["pace_lambda"].as_f64().unwrap() > 90.0, "{usage}");
    let (status, v) = admin(
        &gw,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"pace": false})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, usage) = paced_run(&gw, &loose, 1).await;
    assert!(usage.get("pace_lambda").is_none(), "{usage}");
    let (_, headers, _) = chat(&gw, Some(&loose), &body).await;
    assert_eq!(
        common::header(&headers, "x-routewise-model"),
        "c",
        "the request's lambda"
    );
}

#[tokio::test]
async fn regression_requests_refused_by_the_rate_limit_are_not_paced_traffic() {
    // The pacer keeps the key's lambda until MIN_SEEN requests were admitted. 25
    // requests against rpm 5: 5 are answered, 20 get 429, and none of those counts.
    let mock = MockUpstream::start().await.unwrap();
    let (_dir, gw) = paced_gateway(&mock).await;
    let (key, _) = create(
        &gw,
        json!({"name": "paced-slow", "budget_usd": 100.0, "period": "month", "pace": true,
               "policy": "lambda=100", "rpm": 5}),
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let body = common::chat_body(&format!("hello world {i}"));
        statuses.push(chat(&gw, Some(&key), &body).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        20,
        "{statuses:?}"
    );
    let usage = settled_usage(&gw, &key).await;
    assert_eq!(usage["pace_requests"].as_u64(), Some(5), "{usage}");
    assert_eq!(usage["pace_lambda"].as_f64(), Some(100.0), "{usage}");
}
