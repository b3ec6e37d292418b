//! The response cache over real HTTP (client -> gateway -> testkit mock): exact and
//! semantic hits, the guards, streams replayed from a stored answer, opting out, scopes,
//! and redacted requests that never serve another request's personal data.
#![cfg(test)]

mod common;

use routewise_testkit::MockUpstream;
use serde_json::{json, Value};

async fn setup(cache: &str) -> (MockUpstream, common::Gateway) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), cache)).await;
    (mock, gw)
}

async fn ask(gw: &common::Gateway, body: &Value) -> (String, String, Value) {
    let (status, h, v) = common::post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200, "{v}");
    (
        common::header(&h, "x-routewise-cache").to_string(),
        common::header(&h, "x-routewise-model").to_string(),
        v,
    )
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn exact_hits_skip_the_upstream_and_ignore_whitespace() {
    let (mock, gw) = setup("cache: {exact: true, ttl_s: 60, max_entries: 100}").await;
    let (c, m, first) = ask(&gw, &common::chat_body("Name three prime numbers.")).await;
    assert_eq!((c.as_str(), m.as_str()), ("miss", "a"));
    let (c, m, second) = ask(&gw, &common::chat_body("  Name three   prime numbers. ")).await;
    assert_eq!((c.as_str(), m.as_str()), ("hit-exact", "a"));
    assert_eq!(content(&first), content(&second));
    assert_eq!(mock.total_hits(), 1);
    // Other parameters are another request.
    let mut body = common::chat_body("Name three prime numbers.");
    body["temperature"] = json!(1.5);
    assert_eq!(ask(&gw, &body).await.0, "miss");
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_cache_lookups_total{result=\"hit-exact\"} 1"),
        "{metrics}"
    );
}

/// Regression: the key left out the request's `routewise` choices, so an answer routed
/// under one lambda or cascade setting was served to a request asking for another (and a
/// request whose cascade override the cascade stage would refuse got a 200 hit).
#[tokio::test]
async fn regression_the_requests_policy_choices_are_part_of_the_key() {
    let (mock, gw) = setup("cache: {exact: true, semantic: {threshold: 0.9}}").await;
    let plain = common::chat_body("Name three prime numbers.");
    assert_eq!(ask(&gw, &plain).await.0, "miss");
    assert_eq!(ask(&gw, &plain).await.0, "hit-exact");
    let mut cheap = plain.clone();
    cheap["routewise"] = json!({"lambda": 50});
    assert_eq!(ask(&gw, &cheap).await.0, "miss");
    assert_eq!(ask(&gw, &cheap).await.0, "hit-exact");
    let mut no_cascade = plain.clone();
    no_cascade["routewise"] = json!({"cascade": false});
    assert_eq!(ask(&gw, &no_cascade).await.0, "miss");
    // The latency objective too (a header).
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-routewise-slo-ms", "5000")
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(common::header(r.headers(), "x-routewise-cache"), "miss");
    assert_eq!(mock.total_hits(), 4);
}

#[tokio::test]
async fn semantic_hits_are_vetoed_by_changed_numbers_and_negations() {
    let (mock, gw) = setup("cache: {semantic: {threshold: 0.9}}").await;
    ask(
        &gw,
        &common::chat_body("What is the capital city of France?"),
    )
    .await;
    let (c, _, _) = ask(
        &gw,
        &common::chat_body("what is the capital city of france"),
    )
    .await;
    assert_eq!(c, "hit-semantic");
    ask(&gw, &common::chat_body("Convert 5 miles to kilometers")).await;
    assert_eq!(
        ask(&gw, &common::chat_body("Convert 7 miles to kilometers"))
            .await
            .0,
        "miss"
    );
    assert_eq!(
        ask(
            &gw,
            &common::chat_body("What is not the capital city of France?")
        )
        .await
        .0,
        "miss"
    );
    assert_eq!(mock.total_hits(), 4);
}

#[tokio::test]
async fn a_stream_is_replayed_from_a_stored_answer() {
    let (mock, gw) = setup("cache: {}").await;
    let (_, _, v) = ask(&gw, &common::chat_body("Tell me a fact about owls.")).await;
    let r = common::post_stream(
        &gw.url("/v1/chat/completions"),
        common::chat_body("Tell me a fact about owls."),
    )
    .await;
    assert_eq!(
        common::header(r.headers(), "x-routewise-cache"),
        "hit-exact"
    );
    let sse = common::read_sse(r).await;
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    assert_eq!(common::streamed_text(&sse), content(&v));
    assert_eq!(mock.total_hits(), 1);
}

#[tokio::test]
async fn requests_opt_out_and_scopes_separate_tenants() {
    let (mock, gw) = setup("cache: {scope_header: x-tenant}").await;
    let send = |tenant: Option<&'static str>, body: Value| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let mut r = common::client().post(url).json(&body);
            if let Some(t) = tenant {
                r = r.header("x-tenant", t);
            }
            let r = r.send().await.unwrap();
            common::header(r.headers(), "x-routewise-cache").to_string()
        }
    };
    let q = || common::chat_body("Summarise the plot of Hamlet.");
    assert_eq!(send(Some("t1"), q()).await, "miss");
    assert_eq!(send(Some("t1"), q()).await, "hit-exact");
    assert_eq!(send(Some("t2"), q()).await, "miss", "another tenant");
    assert_eq!(send(None, q()).await, "", "no tenant: not cached");
    let mut off = q();
    off["routewise"] = json!({"cache": false});
    assert_eq!(send(Some("t1"), off).await, "");
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-tenant", "t1")
        .header("cache-control", "no-cache")
        .json(&q())
        .send()
        .await
        .unwrap();
    assert_eq!(common::header(r.headers(), "x-routewise-cache"), "miss");
    assert_eq!(mock.total_hits(), 5);
}

#[tokio::test]
async fn a_redacted_request_never_gets_another_requests_personal_data() {
    let (mock, gw) = setup("cache: {}\npii: {action: redact, restore: true}").await;
    let (c, _, a) = ask(
        &gw,
        &common::chat_body("Write a greeting to ann@corp.example"),
    )
    .await;
    assert_eq!(c, "miss");
    assert!(content(&a).contains("ann@corp.example"));
    // The same redacted text: a hit, restored with this request's own address.
    let (c, _, b) = ask(
        &gw,
        &common::chat_body("Write a greeting to bob@firm.example"),
    )
    .await;
    assert_eq!(c, "hit-exact");
    assert!(content(&b).contains("bob@firm.example"), "{b}");
    assert!(!content(&b).contains("ann@"), "{b}");
    assert_eq!(mock.total_hits(), 1);
}

#[test]
fn bad_cache_settings_are_config_errors() {
    let e = common::config_error(
        &common::abc_yaml(
            "http://127.0.0.1:9/v1",
            "cache: {exact: false, semantic: {threshold: 1.5}, ttl_s: 0, max_entries: 0, backend: disk}",
        ),
    );
    for want in ["cache.backend: unknown variant `disk`", "gw.yaml: cache"] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:9/v1",
        "cache: {exact: false, semantic: {threshold: 1.5}, ttl_s: 0, max_entries: 0}",
    ));
    for want in [
        "cache.semantic.threshold",
        "cache.ttl_s",
        "cache.max_entries",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
}

#[tokio::test]
async fn regression_images_and_personal_data_in_the_clear_get_exact_hits_only() {
    let (mock, gw) = setup("cache: {semantic: {threshold: 0.5}}\npii: {action: tag}").await;
    let image = |url: &str| {
        json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    assert_eq!(ask(&gw, &image("https://x.example/1.png")).await.0, "miss");
    assert_eq!(
        ask(&gw, &image("https://x.example/2.png")).await.0,
        "miss",
        "another image"
    );
    assert_eq!(
        ask(&gw, &image("https://x.example/1.png")).await.0,
        "hit-exact"
    );
    ask(
        &gw,
        &common::chat_body("Draft a polite reply to john@corp.example declining"),
    )
    .await;
    let (c, _, _) = ask(
        &gw,
        &common::chat_body("Draft a polite reply to mary@corp.example declining"),
    )
    .await;
    assert_eq!(
        c, "miss",
        "an address in the clear is not matched semantically"
    );
    assert_eq!(mock.total_hits(), 4);
}

/// Waits (at most 2 s) until Redis holds `n` cache entries under `prefix` (an instance
/// stores in the background).
async fn wait_for_entries(port: u16, prefix: &str, n: usize) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..40 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:e:*"))
            .query_async(&mut c)
            .await
            .unwrap();
        if keys.len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("redis never held {n} entries");
}

#[tokio::test]
async fn two_instances_share_the_cache_through_redis_and_survive_its_outage() {
    let Some(mut redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let yaml = common::abc_yaml(
        &mock.base_url(),
        &format!(
            "cache: {{backend: redis, redis_url: \"redis://127.0.0.1:{}\", prefix: t1, semantic: {{threshold: 0.9}}}}",
            redis.port
        ),
    );
    let gw1 = common::start(&yaml).await;
    let gw2 = common::start(&yaml).await;
    let q = common::chat_body("What is the capital city of France?");
    assert_eq!(ask(&gw1, &q).await.0, "miss");
    wait_for_entries(redis.port, "t1", 1).await;
    // Stored by gw1, found by gw2: exactly, then semantically.
    assert_eq!(ask(&gw2, &q).await.0, "hit-exact");
    let near = common::chat_body("what is the capital city of france");
    assert_eq!(ask(&gw2, &near).await.0, "hit-semantic");
    // The guards hold across instances too.
    let changed = common::chat_body("What is not the capital city of France?");
    assert_eq!(ask(&gw2, &changed).await.0, "miss");
    assert_eq!(mock.total_hits(), 2);
    wait_for_entries(redis.port, "t1", 2).await;
    // Redis goes away: requests are answered by the models, as misses.
    redis.kill().unwrap();
    let (c, m, _) = ask(&gw1, &common::chat_body("Name a prime number above 100.")).await;
    assert_eq!((c.as_str(), m.as_str()), ("miss", "a"));
    let (c, _, _) = ask(&gw1, &q).await;
    assert_eq!(c, "miss");
    let (_, metrics) = common::get(&gw1.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_cache_lookups_total{result=\"error\"}"),
        "{metrics}"
    );
}

#[test]
fn an_unreachable_cache_redis_is_reported_at_its_field() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = common::config(&common::abc_yaml(
        "http://127.0.0.1:9/v1",
        &format!("cache: {{backend: redis, redis_url: \"redis://127.0.0.1:{port}\"}}"),
    ));
    let issues = routewise_gateway::load::reachability(&cfg);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "cache.redis_url");
    assert!(
        issues[0].message.contains("cannot reach Redis"),
        "{issues:?}"
    );
    let e = common::config_error(&common::abc_yaml(
        "http://127.0.0.1:9/v1",
        "cache: {backend: redis}",
    ));
    assert!(
        e.contains("gw.yaml: cache.redis_url: the redis backend needs a redis_url"),
        "{e}"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_stored_once_complete() {
    let (mock, gw) = setup("cache: {}").await;
    let q = common::chat_body("Tell me a fact about otters.");
    // Without the usage chunk, a stream is not stored (its body would lack usage).
    let r = common::post_stream(&gw.url("/v1/chat/completions"), q.clone()).await;
    common::read_sse(r).await;
    assert_eq!(ask(&gw, &q).await.0, "miss");
    let q = common::chat_body("Tell me a fact about beavers.");
    let mut with_usage = q.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let r = common::post_stream(&gw.url("/v1/chat/completions"), with_usage).await;
    assert_eq!(common::header(r.headers(), "x-routewise-cache"), "miss");
    let sse = common::read_sse(r).await;
    let streamed = common::streamed_text(&sse);
    assert!(!streamed.is_empty(), "{sse}");
    // Stored as the stream ended (before its last bytes reached the client): the same
    // request, not streamed, is a hit with the same text.
    let (c, _, v) = ask(&gw, &q).await;
    assert_eq!(c, "hit-exact");
    assert_eq!(content(&v), streamed);
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(mock.total_hits(), 3);
}

#[tokio::test]
async fn regression_a_redis_that_never_answers_does_not_queue_requests() {
    // A "Redis" that accepts connections and never answers.
    let port = routewise_testkit::silent_listener().await.unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(
        &mock.base_url(),
        &format!("cache: {{backend: redis, redis_url: \"redis://127.0.0.1:{port}\"}}"),
    ))
    .await;
    // 50 requests at once: one waits for the connection (at most 100 ms), the others miss
    // at once. Queued behind one another they took 100 ms each (5 s in all).
    let started = std::time::Instant::now();
    let all = (0..50).map(|i| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let (s, _, _) = common::post(&url, &common::chat_body(&format!("question {i}"))).await;
            s
        }
    });
    let statuses = futures_util::future::join_all(all).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?}"
    );
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_cache_lookups_total{result=\"error\"} 50"),
        "{metrics}"
    );
}
