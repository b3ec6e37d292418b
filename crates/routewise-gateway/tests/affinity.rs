//! Conversation affinity over real HTTP (client -> gateway -> testkit mock): a
//! conversation stays on the model of its last turn unless the switch pays, keyed by the
//! session header or by the user and the first messages; new conversations route freely.
#![cfg(test)]

mod common;

use routewise_testkit::MockUpstream;
use serde_json::{json, Value};

async fn setup(margin: &str) -> (MockUpstream, common::Gateway) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(
        &mock.base_url(),
        &format!("affinity: {{ttl_s: 600, switch_margin: {margin}}}"),
    ))
    .await;
    (mock, gw)
}

/// One turn: the answering model and the `x-routewise-affinity` header.
async fn turn(gw: &common::Gateway, session: Option<&str>, body: &Value) -> (String, String) {
    let mut req = common::client()
        .post(gw.url("/v1/chat/completions"))
        .json(body);
    if let Some(s) = session {
        req = req.header("x-routewise-session", s);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    (
        common::header(&h, "x-routewise-model").to_string(),
        common::header(&h, "x-routewise-affinity").to_string(),
    )
}

/// A body routed at `lambda` (0: a, the best; 1e9: c, the cheapest).
fn at(lambda: f64, text: &str) -> Value {
    let mut b = common::chat_body(text);
    b["routewise"] = json!({"lambda": lambda});
    b
}

#[tokio::test]
async fn a_conversation_stays_on_its_model_unless_the_switch_pays() {
    // A margin no gain reaches: the conversation keeps a.
    let (_mock, gw) = setup("1e12").await;
    assert_eq!(
        turn(&gw, Some("s1"), &at(0.0, "first")).await,
        ("a".into(), "".into())
    );
    assert_eq!(
        turn(&gw, Some("s1"), &at(1e9, "second")).await,
        ("a".into(), "stayed".into())
    );
    // Another conversation routes on its own.
    assert_eq!(
        turn(&gw, Some("s2"), &at(1e9, "first")).await,
        ("c".into(), "".into())
    );
    // No conversation at all: no affinity.
    assert_eq!(
        turn(&gw, None, &at(1e9, "first")).await,
        ("c".into(), "".into())
    );
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_affinity_total{verdict=\"stayed\"} 1"),
        "{metrics}"
    );

    // No margin: the router's new choice (worth far more at lambda 1e9) wins.
    let (_mock, gw) = setup("0").await;
    assert_eq!(turn(&gw, Some("s1"), &at(0.0, "first")).await.0, "a");
    assert_eq!(
        turn(&gw, Some("s1"), &at(1e9, "second")).await,
        ("c".into(), "switched".into())
    );
    // The conversation is now on c: the next turn there needs no verdict.
    assert_eq!(
        turn(&gw, Some("s1"), &at(1e9, "third")).await,
        ("c".into(), "".into())
    );
}

#[tokio::test]
async fn the_user_and_the_first_messages_name_a_conversation_without_the_header() {
    let (_mock, gw) = setup("1e12").await;
    let history = |lambda: f64, extra: &[(&str, &str)]| {
        let mut messages = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "hello"}),
        ];
        for (role, content) in extra {
            messages.push(json!({"role": role, "content": content}));
        }
        json!({"model": "auto", "user": "alice", "messages": messages,
               "routewise": {"lambda": lambda}})
    };
    assert_eq!(turn(&gw, None, &history(0.0, &[])).await.0, "a");
    let second = history(1e9, &[("assistant", "hi"), ("user", "and then?")]);
    assert_eq!(
        turn(&gw, None, &second).await,
        ("a".into(), "stayed".into())
    );
    // Another user with the same opening is another conversation.
    let mut bob = second.clone();
    bob["user"] = json!("bob");
    assert_eq!(turn(&gw, None, &bob).await, ("c".into(), "".into()));
}

#[tokio::test]
async fn bad_affinity_settings_are_config_errors_at_their_path() {
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:1/v1",
        "affinity: {sticky: true}",
    ));
    assert!(e.contains("affinity") && e.contains("sticky"), "{e}");
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:1/v1",
        "affinity: {}\nmodels_extra: 1",
    ));
    assert!(e.contains("models_extra"), "{e}");
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:1/v1",
        "affinity: {ttl_s: 0, switch_margin: -1, max_conversations: 0}",
    ));
    for field in [
        "affinity.ttl_s",
        "affinity.switch_margin",
        "affinity.max_conversations",
    ] {
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn a_cached_price_above_the_input_price_is_a_config_error() {
    let yaml = common::abc_yaml("http://127.0.0.1:1/v1", "").replace(
        "price: {input_per_mtok: 0.3, output_per_mtok: 0.3}",
        "price: {input_per_mtok: 0.3, output_per_mtok: 0.3, cached_input_per_mtok: 0.5}",
    );
    let e = common::config_error(&yaml);
    assert!(e.contains("models[2].price.cached_input_per_mtok"), "{e}");
}

#[tokio::test]
async fn with_redis_any_instance_continues_a_conversation_and_memory_covers_an_outage() {
    let Some(mut redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mock = MockUpstream::start().await.unwrap();
    let yaml = common::abc_yaml(
        &mock.base_url(),
        &format!(
            "affinity: {{ttl_s: 600, switch_margin: 1e12, backend: redis, redis_url: \"{url}\", prefix: t-aff}}"
        ),
    );
    // Two instances behind a balancer, one Redis.
    let (one, two) = (common::start(&yaml).await, common::start(&yaml).await);
    assert_eq!(turn(&one, Some("s1"), &at(0.0, "first")).await.0, "a");
    // The write is in the background: the second instance sees it shortly.
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let r = common::client()
            .post(two.url("/v1/route"))
            .json(&at(1e9, "second"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if redis_has(&url, "t-aff:").await {
            seen = true;
            break;
        }
    }
    assert!(seen, "the conversation reached redis");
    // The other instance's first Redis read connects: warm it with another conversation,
    // so that the read below is not cut by its 100 ms budget on a slow machine.
    turn(&two, Some("warm-up"), &at(0.0, "hello")).await;
    assert_eq!(
        turn(&two, Some("s1"), &at(1e9, "second")).await,
        ("a".into(), "stayed".into()),
        "the other instance kept it on a"
    );
    // Redis goes away: the instance that answered last still remembers in memory.
    redis.kill().unwrap();
    assert_eq!(
        turn(&two, Some("s1"), &at(1e9, "third")).await,
        ("a".into(), "stayed".into())
    );
    // A missing URL is a config error at its path.
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:1/v1",
        "affinity: {backend: redis}",
    ));
    assert!(
        e.contains("affinity.redis_url: the redis backend needs a redis_url"),
        "{e}"
    );
}

/// Whether a key under `prefix` is in the Redis at `url`.
async fn redis_has(url: &str, prefix: &str) -> bool {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    !keys.is_empty()
}

#[tokio::test]
async fn regression_a_redis_miss_does_not_hide_what_this_instance_remembers() {
    // An evicted key (or a write that failed) once made Redis's empty answer win over the
    // instance's own memory, and the conversation lost its model.
    let Some(redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(
        &mock.base_url(),
        &format!(
            "affinity: {{ttl_s: 600, switch_margin: 1e12, backend: redis, redis_url: \"{url}\", prefix: t-miss}}"
        ),
    ))
    .await;
    assert_eq!(turn(&gw, Some("s1"), &at(0.0, "first")).await.0, "a");
    for _ in 0..100 {
        if redis_has(&url, "t-miss:").await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Redis loses the key (maxmemory eviction, a flush).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(!redis_has(&url, "t-miss:").await);
    assert_eq!(
        turn(&gw, Some("s1"), &at(1e9, "second")).await,
        ("a".into(), "stayed".into())
    );
}
