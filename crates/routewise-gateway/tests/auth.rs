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
    let yaml = common::abc_yaml(base_url, &format!("{auth}{extra}"));
    let state = AppState::new(common::config(&yaml), common::abc(), None).unwrap();
    state.set_admin_key(ADMIN);
    common::Gateway::start(state).await
}

fn local_state(dir: &tempfile::TempDir) -> String {
    format!(
        "state: {{path: \"{}\"}}",
        dir.path().join("state.redb").display()
    )
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
    let state = format!(
        "state: {{redis_url: \"redis://127.0.0.1:{}\", redis_prefix: keys-test}}\n",
        redis.port
    );
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
    drop(redis);
    // Redis gone: a key this instance has not cached is refused with 503 (fail closed).
    let fake = format!("rw-abcdefghij-{}", "B".repeat(32));
    let (status, h, v) = chat(&two, Some(&fake), &body).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "auth_unavailable");
    assert_eq!(common::header(&h, "retry-after"), "1");
}
